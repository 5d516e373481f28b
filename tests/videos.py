"""Helpers that write small real video files for tests (PyAV encoders).

``write_test_video(path, frames, fps, codec)`` encodes ``uint8 [T, H, W, 3]``
frames; ``palette_frames`` makes frames of flat colours that survive lossy
coding well enough for ``frame_indices`` to tell which frame came back.
"""

from __future__ import annotations

import fractions
import os

import av
import numpy as np

# Short codec names to PyAV encoder names.
_ENCODERS = {'h264': 'libx264', 'vp9': 'libvpx-vp9', 'mpeg4': 'mpeg4',
             'hevc': 'libx265', 'av1': 'libsvtav1', 'ffv1': 'ffv1'}


def write_test_video(path: str, frames: np.ndarray, fps: float = 10,
                     codec: str = 'h264', *, gop: int | None = None,
                     audio: bool = False, bframes: bool = True) -> str:
  """Encodes RGB frames into a video file; the container follows the suffix.

  Args:
    path: the output file (.mp4, .webm, .avi, .mkv, ...).
    frames: uint8 ``[T, H, W, 3]``; H and W even.
    fps: frames per second (a float is turned into a fraction).
    codec: 'h264', 'vp9', 'mpeg4', 'hevc', 'av1' or an FFmpeg encoder name.
    gop: keyframe interval in frames (None: the encoder's default).
    audio: also write a short silent AAC/Opus track.
    bframes: allow B-frames (h264 only).

  Returns:
    ``path``.
  """
  frames = np.asarray(frames, dtype=np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'frames must be [T, H, W, 3], got {frames.shape}')
  rate = fractions.Fraction(fps).limit_denominator(1001)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, 'w') as container:
    stream = container.add_stream(_ENCODERS.get(codec, codec), rate=rate)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    if gop is not None:
      stream.codec_context.gop_size = gop
    if stream.codec_context.name == 'libx264' and not bframes:
      stream.codec_context.options = {'bf': '0'}
    astream = None
    if audio:
      acodec = 'libopus' if path.endswith('.webm') else 'aac'
      astream = container.add_stream(acodec, rate=48000)
    for i, f in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(f, format='rgb24')
      vf.pts = i
      vf.time_base = 1 / rate
      for p in stream.encode(vf):
        container.mux(p)
    for p in stream.encode():
      container.mux(p)
    if astream is not None:
      _write_silence(container, astream, len(frames) / float(rate))
  return path


def _write_silence(container, astream, seconds: float) -> None:
  rate = astream.codec_context.sample_rate or 48000
  n = 1024
  total = int(seconds * rate)
  for s in range(0, max(total, n), n):
    af = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format='fltp',
                                    layout='mono')
    af.sample_rate = rate
    af.pts = s
    for p in astream.encode(af):
      container.mux(p)
  for p in astream.encode():
    container.mux(p)


def write_audio_only(path: str, seconds: float = 1.0) -> str:
  """Writes a file with one silent audio stream and no video (.m4a/.mp4/.mkv)."""
  with av.open(path, 'w') as container:
    astream = container.add_stream('aac', rate=48000)
    _write_silence(container, astream, seconds)
  return path


def palette(n: int) -> np.ndarray:
  """``n`` RGB colours at least 40 apart in every channel step: ``[n, 3]``."""
  if n > 216:
    raise ValueError('palette holds at most 216 colours')
  i = np.arange(n)
  return np.stack([20 + 40 * (i % 6), 20 + 40 * ((i // 6) % 6),
                   20 + 40 * ((i // 36) % 6)], axis=-1).astype(np.uint8)


def palette_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
  """``n`` flat frames, frame i in ``palette(n)[i]``: ``uint8 [n, H, W, 3]``."""
  colours = palette(n)
  return np.broadcast_to(colours[:, None, None, :], (n, height, width, 3)).copy()  # [n, H, W, 3]


def frame_indices(frames: np.ndarray, n: int) -> np.ndarray:
  """Which palette frame each decoded frame is (nearest mean colour): ``[T]``."""
  means = frames.reshape(frames.shape[0], -1, 3).mean(axis=1)  # [T, 3]
  dist = np.abs(means[:, None, :] - palette(n)[None].astype(np.float64)).sum(-1)
  return dist.argmin(axis=1)
