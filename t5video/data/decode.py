"""Decode a few frames of a video file with PyAV: sparse, seeking, bounded.

The decoder turns a video file (mp4/h264, webm/vp9, avi/mpeg4, mkv, anything
FFmpeg demuxes) into ``uint8 [T, size, size, 3]`` frames plus their timestamps.
It decodes only what the sampling needs:

1. Target times are computed from the stream's metadata (duration, frame rate,
   time base) before any frame is decoded.
2. For each target the decoder either keeps decoding forward or seeks. It seeks
   only when the container's keyframe index shows a keyframe strictly between
   the current decode position and the target (then seeking is never more work
   than decoding forward); without an index it seeks when the gap exceeds
   ``SamplingSpec.seek_gap_s``.
3. Frames that are decoded but not wanted are never converted to RGB; wanted
   ones are scaled by swscale (``VideoFrame.reformat``) straight to the resize
   size, then cropped and flipped in numpy.
4. Non-reference frames (most B-frames) whose packets come before the next
   target are dropped by the decoder (``skip_frame='NONREF'``): no later frame
   depends on them and none of them is wanted.

Measured with ``benchmarks/bench_decode.py`` (8 frames at 224x224 from 10-s
H.264 clips at 320x240 and 1280x720, 2 shared cores, November 2026): 1.3-1.9x
decord's clips/s in one process and 1.0-1.5x through Grain workers, 1.5-4.8x a
decode-everything PyAV loop, with 20-40% less CPU per clip than decord.
Seeking for every target instead is 2-6x slower with long GOPs, never seeking
is 4.7x slower on a 60-s clip with 2-s GOPs; dropping non-reference frames
saves 10-25% of the CPU; AUTO threading (frame threads for H.264) is the
fastest in one process and with 1-2 workers ('NONE' uses the least CPU).

Every failure becomes a :class:`VideoDecodeError` with a ``kind`` from
``VideoDecodeError.KINDS`` and the file's path in its message, so a data
pipeline can skip, count and list bad files. A wall-clock deadline is checked
between packets and is also passed to FFmpeg's I/O interrupt callback, so one
decode never runs much past ``SamplingSpec.timeout_s``. (A decoder stuck
inside a single FFmpeg call, or a crash inside FFmpeg, cannot be stopped from
Python in-process; run decodes in worker processes for that isolation.)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Iterator, Optional, Sequence

import av
from av.video.reformatter import VideoReformatter
import numpy as np

_MODES = ('uniform', 'segment', 'fps')
_CROPS = ('center', 'random')
_SHORT_POLICIES = ('repeat', 'error')
_THREAD_TYPES = ('NONE', 'SLICE', 'FRAME', 'AUTO')


class VideoDecodeError(Exception):
  """A video that cannot be decoded into the requested clip.

  Attributes:
    path: the video file.
    kind: one of :attr:`KINDS`:
      'missing' (no such file, or not a readable regular file),
      'empty' (zero bytes), 'corrupt' (the container or the bitstream cannot be
      parsed, or it ends long before its metadata says), 'no_video_stream'
      (e.g. an audio-only file), 'unsupported_codec' (no decoder for the video
      stream), 'too_short' (fewer frames than asked with
      ``short_policy='error'``, or a window outside the video), 'timeout'
      (the decode ran past ``timeout_s``).
    detail: what went wrong, in words.
  """

  KINDS = ('missing', 'empty', 'corrupt', 'no_video_stream',
           'unsupported_codec', 'too_short', 'timeout')

  def __init__(self, path: str, kind: str, detail: str = ''):
    if kind not in self.KINDS:
      raise ValueError(f'unknown VideoDecodeError kind {kind!r}; '
                       f'expected one of {self.KINDS}')
    self.path = str(path)
    self.kind = kind
    self.detail = detail
    super().__init__(f'{self.path}: {kind}' + (f': {detail}' if detail else ''))

  def __reduce__(self):
    # Crosses process boundaries (Grain workers): rebuild from the fields.
    return (type(self), (self.path, self.kind, self.detail))


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """Which frames to take from a video and how to shape them.

  Attributes:
    num_frames: frames per clip for modes 'uniform' and 'segment'.
    mode: 'uniform' (the centre frame of each of ``num_frames`` equal segments;
      deterministic, for evaluation), 'segment' (a random frame from each
      segment, TSN-style, for training) or 'fps' (one frame per ``1 / fps``
      seconds, at the centre of each interval, for grounding).
    fps: the sampling rate for mode 'fps' (e.g. 0.5, 1 or 2).
    max_frames: for mode 'fps', at most this many frames; longer videos are
      subsampled evenly over the window (the timestamps say which were taken).
    size: output height = width after the crop.
    resize_short: the short side after resizing and before the crop
      (default: ``size``); must be >= ``size``.
    crop: 'center' or 'random' (one crop position for the whole clip).
    flip: flip the whole clip horizontally with probability 1/2.
    zoom: ``(low, high)``: scale jitter for training. After the crop, the whole clip is
      magnified by a factor drawn log-uniformly from ``[low, high]`` (below 1 it shrinks) and
      shifted at random as far as the view stays inside the frame (above 1) or the frame inside
      the view (below 1; pixels from outside the frame repeat the nearest edge pixel); one
      transform for every frame, so motion is kept. ``None``: off.
    short_policy: when the window holds fewer than ``num_frames`` frames:
      'repeat' frames (:attr:`DecodedClip.repeated` says so) or 'error'
      (``VideoDecodeError`` kind 'too_short').
    timeout_s: wall-clock bound of one decode, open included.
    thread_type: FFmpeg decoder threading: 'NONE', 'SLICE', 'FRAME' or 'AUTO'.
    thread_count: decoder threads (0: FFmpeg picks from the core count).
    seek_gap_s: without a keyframe index, seek instead of decoding forward when
      the next target is more than this many seconds ahead.
    seek_policy: 'auto' (seek when the keyframe index shows a keyframe between
      the decode position and the target, or by ``seek_gap_s`` without an
      index), 'never' (one forward pass) or 'always' (seek for every target);
      the last two exist to measure 'auto' against.
    skip_nonref: ask the decoder to drop non-reference frames (e.g. most
      B-frames) whose packets lie before the next target: nothing depends on
      them, and they are not wanted.
  """
  num_frames: int = 8
  mode: str = 'uniform'
  fps: Optional[float] = None
  max_frames: Optional[int] = None
  size: int = 224
  resize_short: Optional[int] = None
  crop: str = 'center'
  flip: bool = False
  zoom: Optional[tuple[float, float]] = None
  short_policy: str = 'repeat'
  timeout_s: float = 30.0
  thread_type: str = 'AUTO'
  thread_count: int = 0
  seek_gap_s: float = 2.0
  seek_policy: str = 'auto'
  skip_nonref: bool = True

  def __post_init__(self):
    if self.mode not in _MODES:
      raise ValueError(f'SamplingSpec.mode={self.mode!r}; expected one of {_MODES}')
    if self.mode == 'fps':
      if self.fps is None or not self.fps > 0:
        raise ValueError(f"SamplingSpec.mode='fps' needs fps > 0, got fps={self.fps!r}")
      if self.max_frames is not None and self.max_frames < 1:
        raise ValueError(f'SamplingSpec.max_frames={self.max_frames!r} must be >= 1')
    elif self.num_frames < 1:
      raise ValueError(f'SamplingSpec.num_frames={self.num_frames!r} must be >= 1')
    if self.size < 1:
      raise ValueError(f'SamplingSpec.size={self.size!r} must be >= 1')
    if self.resize_short is not None and self.resize_short < self.size:
      raise ValueError(f'SamplingSpec.resize_short={self.resize_short} is smaller '
                       f'than size={self.size}')
    if self.zoom is not None and not (len(self.zoom) == 2 and 0 < self.zoom[0] <= self.zoom[1]):
      raise ValueError(f'SamplingSpec.zoom={self.zoom!r} must be (low, high) with 0 < low <= high')
    if self.crop not in _CROPS:
      raise ValueError(f'SamplingSpec.crop={self.crop!r}; expected one of {_CROPS}')
    if self.short_policy not in _SHORT_POLICIES:
      raise ValueError(f'SamplingSpec.short_policy={self.short_policy!r}; '
                       f'expected one of {_SHORT_POLICIES}')
    if not self.timeout_s > 0:
      raise ValueError(f'SamplingSpec.timeout_s={self.timeout_s!r} must be > 0')
    if self.seek_policy not in ('auto', 'never', 'always'):
      raise ValueError(f'SamplingSpec.seek_policy={self.seek_policy!r}; '
                       "expected 'auto', 'never' or 'always'")
    if self.thread_type not in _THREAD_TYPES:
      raise ValueError(f'SamplingSpec.thread_type={self.thread_type!r}; '
                       f'expected one of {_THREAD_TYPES}')

  @property
  def short_side(self) -> int:
    return self.resize_short if self.resize_short is not None else self.size

  @property
  def random(self) -> bool:
    """Whether decoding with this spec draws from an RNG."""
    return self.mode == 'segment' or self.crop == 'random' or self.flip or self.zoom is not None


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the container says about a file's (first) video stream.

  Attributes:
    duration: seconds.
    fps: the average frame rate.
    num_frames: frames in the stream (from the container, or duration * fps).
    width, height: the coded frame size in pixels.
    codec: the decoder's name, e.g. 'h264'.
  """
  duration: float
  fps: float
  num_frames: int
  width: int
  height: int
  codec: str


@dataclasses.dataclass(frozen=True)
class DecodedClip:
  """The result of :func:`decode_video`.

  Attributes:
    frames: uint8 ``[T, size, size, 3]`` RGB.
    timestamps: float32 ``[T]``, each frame's presentation time in seconds
      from the start of the stream (repeated frames repeat their time).
    repeated: True when the window held fewer distinct frames than asked and
      some frames are repeats.
    available_frames: how many frames the window holds (from the metadata).
    info: the stream's :class:`VideoInfo`.
  """
  frames: np.ndarray
  timestamps: np.ndarray
  repeated: bool
  available_frames: int
  info: VideoInfo


# ---------------------------------------------------------------------------
# Opening and probing
# ---------------------------------------------------------------------------


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise VideoDecodeError(path, 'missing', 'no such file')
  if not os.path.isfile(path):
    raise VideoDecodeError(path, 'missing', 'not a regular file')
  if not os.access(path, os.R_OK):
    raise VideoDecodeError(path, 'missing', 'not readable')
  if os.path.getsize(path) == 0:
    raise VideoDecodeError(path, 'empty', 'the file has zero bytes')


def _av_error(path: str, err: BaseException, where: str) -> VideoDecodeError:
  """Maps a PyAV/FFmpeg exception to a VideoDecodeError kind."""
  if isinstance(err, VideoDecodeError):
    return err
  if isinstance(err, av.error.ExitError):  # FFmpeg's interrupt callback fired.
    return VideoDecodeError(path, 'timeout', f'{where}: {err}')
  if isinstance(err, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
    return VideoDecodeError(path, 'unsupported_codec', f'{where}: {err}')
  if isinstance(err, av.error.FileNotFoundError):
    return VideoDecodeError(path, 'missing', f'{where}: {err}')
  if isinstance(err, (av.error.PermissionError, av.error.IsADirectoryError)):
    return VideoDecodeError(path, 'missing', f'{where}: {err}')
  return VideoDecodeError(path, 'corrupt', f'{where}: {type(err).__name__}: {err}')


def _open(path: str, timeout_s: float) -> av.container.InputContainer:
  _check_file(path)
  try:
    return av.open(path, 'r', timeout=timeout_s)
  except Exception as e:  # noqa: BLE001 - every failure becomes a kind.
    raise _av_error(path, e, 'open') from e


def _video_stream(path: str, container) -> av.video.stream.VideoStream:
  if not container.streams.video:
    kinds = sorted({s.type for s in container.streams}) or ['none']
    raise VideoDecodeError(path, 'no_video_stream',
                           f'streams present: {", ".join(kinds)}')
  stream = container.streams.video[0]
  ctx = stream.codec_context
  if ctx is None or not ctx.name:
    raise VideoDecodeError(path, 'unsupported_codec',
                           'FFmpeg has no decoder for the video stream')
  return stream


def _info(path: str, stream) -> VideoInfo:
  ctx = stream.codec_context
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  if not rate or float(rate) <= 0:
    raise VideoDecodeError(path, 'corrupt', 'the video stream has no frame rate')
  fps = float(rate)
  duration = None
  if stream.duration is not None and stream.time_base is not None:
    duration = float(stream.duration * stream.time_base)
  if not duration or duration <= 0:
    container_duration = stream.container.duration  # in av.time_base units
    if container_duration is not None and container_duration > 0:
      duration = container_duration / av.time_base
  if (not duration or duration <= 0) and stream.frames:
    duration = stream.frames / fps
  if not duration or duration <= 0:
    raise VideoDecodeError(path, 'corrupt', 'the video stream has no duration')
  num_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
  width, height = int(ctx.width), int(ctx.height)
  if width <= 0 or height <= 0:
    raise VideoDecodeError(path, 'corrupt', f'frame size {width}x{height}')
  return VideoInfo(duration=duration, fps=fps, num_frames=max(num_frames, 1),
                   width=width, height=height, codec=ctx.name)


def probe(path: str, timeout_s: float = 30.0) -> VideoInfo:
  """Reads a video file's metadata without decoding frames.

  Args:
    path: the video file.
    timeout_s: bound on opening the file.

  Returns:
    The first video stream's :class:`VideoInfo`.

  Raises:
    VideoDecodeError: kinds 'missing', 'empty', 'corrupt', 'no_video_stream',
      'unsupported_codec', 'timeout'.
  """
  path = os.fspath(path)
  container = _open(path, timeout_s)
  try:
    return _info(path, _video_stream(path, container))
  finally:
    container.close()


# ---------------------------------------------------------------------------
# Sampling: which times to take
# ---------------------------------------------------------------------------


def _window(path: str, info: VideoInfo, start: Optional[float],
            end: Optional[float]) -> tuple[float, float]:
  ws = 0.0 if start is None else float(start)
  we = info.duration if end is None else float(end)
  if not (math.isfinite(ws) and math.isfinite(we)):
    raise ValueError(f'{path}: window [{start}, {end}] is not finite')
  if we < ws:
    raise ValueError(f'{path}: window end {end} is before its start {start}')
  ws, we = max(ws, 0.0), min(we, info.duration)
  if ws >= info.duration:
    raise VideoDecodeError(path, 'too_short', f'window [{start}, {end}] s starts '
                           f'at or after the video ends ({info.duration:.3f} s)')
  return ws, we


def sample_times(info: VideoInfo, spec: SamplingSpec, start: float, end: float,
                 rng: Optional[np.random.Generator] = None
                 ) -> tuple[np.ndarray, int]:
  """Target times (seconds) of the frames to take from ``[start, end]``.

  'uniform' and 'segment' work on the frame grid ``k / fps`` inside the window:
  the window's ``n`` frames are cut into ``num_frames`` equal segments and the
  centre frame (uniform) or a random frame (segment) of each is taken; with
  ``n < num_frames`` segments repeat frames. 'fps' takes the centre of each
  ``1 / fps`` interval of the window, evenly thinned to ``max_frames``.

  Args:
    info: the stream's metadata.
    spec: the sampling spec.
    start, end: the window in seconds, already inside ``[0, duration]``.
    rng: the generator for mode 'segment'.

  Returns:
    ``(times [T] float64, n)``: target times and the number of frames the
    window holds.
  """
  fps = info.fps
  eps = 1e-6
  k0 = int(math.ceil(start * fps - eps))
  k1 = int(math.ceil(end * fps - eps))  # frames with time < end
  k1 = min(k1, max(info.num_frames, k0 + 1))
  n = max(k1 - k0, 1)
  if spec.mode == 'fps':
    count = max(int(math.ceil((end - start) * spec.fps - 0.5 - eps)), 1)
    k = np.arange(count, dtype=np.float64)
    if spec.max_frames is not None and count > spec.max_frames:
      k = np.floor((np.arange(spec.max_frames) + 0.5) * count / spec.max_frames)
    times = start + (k + 0.5) / spec.fps
    times = np.minimum(times, max(end - 0.5 / fps, start))
    return times, n
  t = spec.num_frames
  bounds = np.floor(np.arange(t + 1) * n / t).astype(np.int64)  # segment edges
  if spec.mode == 'uniform':
    idx = np.floor((np.arange(t) + 0.5) * n / t).astype(np.int64)
  else:
    if rng is None:
      rng = np.random.default_rng()
    lengths = np.maximum(bounds[1:] - bounds[:-1], 1)
    idx = bounds[:-1] + rng.integers(0, lengths)
    idx = np.minimum(idx, n - 1)
  return (k0 + idx) / fps, n


# ---------------------------------------------------------------------------
# Decoding: seek or decode forward, convert only the wanted frames
# ---------------------------------------------------------------------------


class _KeyframeIndex:
  """Where the keyframes are, from the container's own index (mp4, mkv, avi).

  MP4 indexes decode timestamps, which run a few frames ahead of presentation
  times with B-frames, so keyframe times come out early by that much; this only
  makes the seek-or-not decision slightly conservative. Matroska loads its
  cues on the first seek, so the index is consulted afresh each time.
  """

  def __init__(self, stream, t0: float):
    self.stream = stream
    self.tb = float(stream.time_base)
    self.t0 = t0

  def before(self, t: float) -> Optional[float]:
    """Time of the last keyframe at or before ``t``; None if the index cannot tell."""
    try:
      entries = self.stream.index_entries
      if entries is None or len(entries) < 2:
        return None
      i = entries.search_timestamp(int(math.floor((t + self.t0) / self.tb)), backward=True)
      if i < 0:
        return None
      return entries[i].timestamp * self.tb - self.t0
    except Exception:  # noqa: BLE001 - the index is an optimisation only.
      return None


def _frame_time(frame, tb: float, t0: float) -> Optional[float]:
  pts = frame.pts if frame.pts is not None else frame.dts
  if pts is None:
    return None
  return pts * tb - t0


class _Decoder:
  """Decodes frames in presentation order from a position, with a deadline."""

  def __init__(self, path: str, container, stream, deadline: float):
    self.path = path
    self.container = container
    self.stream = stream
    self.deadline = deadline
    self.tb = float(stream.time_base)
    self.t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    self._it: Optional[Iterator] = None
    # Packets presented before this time (s) may be dropped if non-reference.
    self.skip_before: Optional[float] = None
    self._skipping = False

  def _check_deadline(self):
    if time.monotonic() > self.deadline:
      raise VideoDecodeError(self.path, 'timeout', 'decode exceeded its time limit')

  def seek(self, t: float) -> None:
    """Positions the decoder at the keyframe at or before time ``t``."""
    ts = int(math.floor((t + self.t0) / self.tb))
    try:
      self.container.seek(ts, stream=self.stream, backward=True, any_frame=False)
      self.stream.codec_context.flush_buffers()
    except Exception as e:  # noqa: BLE001
      raise _av_error(self.path, e, f'seek to {t:.3f} s') from e
    self._it = None

  def _frames(self):
    ctx = self.stream.codec_context
    for packet in self.container.demux(self.stream):
      self._check_deadline()
      if packet.size == 0 and packet.pts is None:  # the demuxer's flush packet
        break
      if self.skip_before is not None:
        skip = packet.pts is not None and packet.pts * self.tb - self.t0 < self.skip_before
        if skip != self._skipping:
          ctx.skip_frame = 'NONREF' if skip else 'DEFAULT'
          self._skipping = skip
      for frame in ctx.decode(packet):
        yield frame
    if self._skipping:
      ctx.skip_frame = 'DEFAULT'
      self._skipping = False
    for frame in ctx.decode(None):  # drain the decoder's delayed frames
      yield frame

  def next(self):
    """The next decoded frame and its time, or None at the end of the stream."""
    if self._it is None:
      self._it = self._frames()
    while True:
      try:
        frame = next(self._it)
      except StopIteration:
        return None
      except VideoDecodeError:
        raise
      except Exception as e:  # noqa: BLE001
        raise _av_error(self.path, e, 'decode') from e
      t = _frame_time(frame, self.tb, self.t0)
      if t is not None:
        return frame, t


def _to_rgb(path: str, frame, width: int, height: int,
            reformatter: Optional[VideoReformatter] = None) -> np.ndarray:
  """Scales and converts with swscale: ``uint8 [height, width, 3]``."""
  try:
    if reformatter is None:
      reformatter = VideoReformatter()
    return reformatter.reformat(frame, width=width, height=height, format='rgb24',
                                interpolation='BILINEAR').to_ndarray()
  except Exception as e:  # noqa: BLE001
    raise _av_error(path, e, 'convert to RGB') from e


def _decode_times(path: str, container, stream, info: VideoInfo,
                  targets: np.ndarray, out_w: int, out_h: int, deadline: float,
                  spec: SamplingSpec) -> tuple[np.ndarray, np.ndarray]:
  """Decodes the frame nearest to each target time (sorted, unique).

  A frame at time ``f`` serves target ``t`` when it is the first frame with
  ``f >= t - 0.5 / fps``, i.e. the frame nearest to ``t`` on a constant grid.
  """
  dec = _Decoder(path, container, stream, deadline)
  reformatter = VideoReformatter()  # one swscale context for the whole clip
  keyframes = _KeyframeIndex(stream, dec.t0)
  half = 0.5 / info.fps
  frames: list[Optional[np.ndarray]] = [None] * len(targets)
  times = np.zeros(len(targets), np.float64)
  pos: Optional[float] = None  # time of the last decoded frame
  last = None  # (frame, time) of the last decoded frame, for the stream's end
  pending = None  # a decoded frame that no target has looked at yet
  i = 0
  while i < len(targets):
    t = float(targets[i])
    if spec.seek_policy == 'never':
      do_seek = False
    elif spec.seek_policy == 'always' or pos is None:
      do_seek = t > 2 * half  # (the first target: seek unless it is at the start)
    else:
      key = keyframes.before(t)
      if key is not None:  # seek iff a keyframe lies between here and t
        do_seek = key > pos + half
      else:
        do_seek = t - pos > spec.seek_gap_s
    if spec.skip_nonref:
      dec.skip_before = t - half
    if do_seek:
      seek_to = t
      for _ in range(4):  # a seek may land past t (B-frames): go back further
        dec.seek(seek_to)
        pending = dec.next()
        if pending is None or pending[1] <= t + half or seek_to <= 0:
          break
        seek_to = max(min(seek_to, pending[1]) - max(1.0, 4 * half), 0.0)
    got = None
    while True:  # decode forward until a frame reaches the target
      got = pending if pending is not None else dec.next()
      pending = None
      if got is None:
        break
      last = got
      pos = got[1]
      if got[1] >= t - half:
        break
    if got is None:
      break  # end of stream
    frame, ft = got
    rgb = _to_rgb(path, frame, out_w, out_h, reformatter)
    while i < len(targets) and ft >= targets[i] - half:
      frames[i], times[i] = rgb, ft
      i += 1
  if i < len(targets):
    # The stream ended before some targets: repeat the last frame, unless the
    # stream ends so much earlier than its metadata says that the file is
    # evidently truncated.
    if last is None:
      raise VideoDecodeError(path, 'corrupt', 'no frame could be decoded')
    frame, ft = last
    if float(targets[-1]) - ft > 1.0 + 4 * half:
      raise VideoDecodeError(
          path, 'corrupt', f'the stream ends at {ft:.3f} s but its metadata '
          f'says {info.duration:.3f} s (truncated?)')
    rgb = _to_rgb(path, frame, out_w, out_h, reformatter)
    for j in range(i, len(targets)):
      frames[j], times[j] = rgb, ft
  return np.stack(frames), times


def _resize_size(width: int, height: int, short: int) -> tuple[int, int]:
  """(width, height) with the short side equal to ``short``, aspect kept."""
  if width <= height:
    return short, max(short, int(round(height * short / width)))
  return max(short, int(round(width * short / height))), short


def random_zoom(frames: np.ndarray, zoom: Sequence[float], rng: np.random.Generator) -> np.ndarray:
  """Magnifies ``[T, H, W, C]`` frames by one random factor about one random centre.

  The factor is log-uniform in ``zoom = (low, high)``. The view (``size / factor`` input pixels a
  side) has its centre uniform over the positions that keep it inside the frame when it is smaller
  (factor > 1) and the frame inside it when it is larger (factor < 1); factor 1 is the identity.
  Output pixel ``(y, x)`` samples the input bilinearly at ``centre + ((y, x) + 0.5 - size / 2) /
  factor - 0.5``, clamped to the frame (edge pixels repeat). Every frame gets the same transform.
  """
  _, h, w, _ = frames.shape
  low, high = float(zoom[0]), float(zoom[1])
  factor = float(np.exp(rng.uniform(np.log(low), np.log(high))))
  half_h, half_w = h / (2 * factor), w / (2 * factor)  # half the view's side, in input pixels
  cy = rng.uniform(min(half_h, h - half_h), max(half_h, h - half_h))
  cx = rng.uniform(min(half_w, w - half_w), max(half_w, w - half_w))
  ys = np.clip(cy + (np.arange(h) + 0.5 - h / 2) / factor - 0.5, 0.0, h - 1.0)  # [H] source rows
  xs = np.clip(cx + (np.arange(w) + 0.5 - w / 2) / factor - 0.5, 0.0, w - 1.0)  # [W] source columns
  y0 = np.minimum(np.floor(ys).astype(np.int64), h - 2) if h > 1 else np.zeros(h, np.int64)
  x0 = np.minimum(np.floor(xs).astype(np.int64), w - 2) if w > 1 else np.zeros(w, np.int64)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  wy = (ys - y0)[None, :, None, None].astype(np.float32)  # [1, H, 1, 1]
  wx = (xs - x0)[None, None, :, None].astype(np.float32)  # [1, 1, W, 1]
  f = frames.astype(np.float32)
  upper, lower = f[:, y0], f[:, y1]  # [T, H, W, C] each: the source rows above and below
  top = upper[:, :, x0] * (1 - wx) + upper[:, :, x1] * wx  # [T, H, W, C]
  bottom = lower[:, :, x0] * (1 - wx) + lower[:, :, x1] * wx  # [T, H, W, C]
  out = top * (1 - wy) + bottom * wy  # [T, H, W, C]
  return np.clip(np.rint(out), 0, 255).astype(frames.dtype)


def zoom_and_flip(frames: np.ndarray, spec: SamplingSpec,
                  rng: Optional[np.random.Generator]) -> np.ndarray:
  """The spec's random zoom, then its random flip, of ``[T, S, S, 3]`` cropped frames (in this order, so
  the decoder and :class:`t5video.data.frame_cache.FrameCache` draw the same numbers)."""
  if spec.zoom is not None:
    frames = random_zoom(frames, spec.zoom, rng)  # [T, S, S, 3]
  if spec.flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]  # [T, S, S, 3], mirrored left-right
  return frames


def _crop_flip(frames: np.ndarray, spec: SamplingSpec,
               rng: Optional[np.random.Generator]) -> np.ndarray:
  """Crops ``[T, H, W, 3]`` to ``[T, size, size, 3]`` and maybe flips it."""
  _, h, w, _ = frames.shape
  s = spec.size
  if spec.crop == 'random':
    y = int(rng.integers(0, h - s + 1))
    x = int(rng.integers(0, w - s + 1))
  else:
    y, x = (h - s) // 2, (w - s) // 2
  out = frames[:, y:y + s, x:x + s]  # [T, size, size, 3]
  return np.ascontiguousarray(zoom_and_flip(out, spec, rng))


def decode_video(path: str, spec: SamplingSpec, *, start: Optional[float] = None,
                 end: Optional[float] = None,
                 rng: Optional[np.random.Generator] = None) -> DecodedClip:
  """Decodes a clip from a video file; like :func:`decode_clip`, with details.

  Args:
    path: the video file.
    spec: which frames and what shape.
    start, end: the window in seconds (None: the video's start / end); it is
      clipped to the video.
    rng: the generator for random sampling, crops and flips (a fresh,
      unseeded one if None and the spec is random).

  Returns:
    A :class:`DecodedClip`.

  Raises:
    VideoDecodeError: see ``VideoDecodeError.KINDS``.
    ValueError: a window whose end precedes its start.
  """
  path = os.fspath(path)
  if spec.random and rng is None:
    rng = np.random.default_rng()
  deadline = time.monotonic() + spec.timeout_s
  container = _open(path, spec.timeout_s)
  try:
    stream = _video_stream(path, container)
    info = _info(path, stream)
    ws, we = _window(path, info, start, end)
    targets, available = sample_times(info, spec, ws, we, rng)
    wanted = targets.shape[0]
    repeated = spec.mode != 'fps' and available < wanted
    if repeated and spec.short_policy == 'error':
      raise VideoDecodeError(
          path, 'too_short', f'window [{ws:.3f}, {we:.3f}] s holds {available} '
          f'frames at {info.fps:.3f} fps, {wanted} asked')
    ctx = stream.codec_context
    try:
      ctx.thread_type = spec.thread_type
      ctx.thread_count = spec.thread_count
    except Exception as e:  # noqa: BLE001
      raise _av_error(path, e, 'configure decoder') from e
    out_w, out_h = _resize_size(info.width, info.height, spec.short_side)
    unique, inverse = np.unique(targets, return_inverse=True)
    frames, times = _decode_times(path, container, stream, info, unique, out_w,
                                  out_h, deadline, spec)
    frames = frames[inverse]  # [T, out_h, out_w, 3]
    times = times[inverse]
    if spec.mode == 'fps':
      repeated = bool(len(np.unique(times)) < len(times))
    else:
      repeated = repeated or bool(len(np.unique(times)) < len(times))
  except VideoDecodeError:
    raise
  except av.error.FFmpegError as e:
    raise _av_error(path, e, 'decode') from e
  except (ValueError, TypeError):
    raise
  except Exception as e:  # noqa: BLE001 - never let a bad file escape as another type
    raise _av_error(path, e, 'decode') from e
  finally:
    container.close()
  frames = _crop_flip(frames, spec, rng)
  return DecodedClip(frames=frames, timestamps=times.astype(np.float32),
                     repeated=repeated, available_frames=available, info=info)


def decode_clip(path: str, spec: SamplingSpec, *, start: Optional[float] = None,
                end: Optional[float] = None,
                rng: Optional[np.random.Generator] = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Decodes ``T`` frames of a video file, sampled as ``spec`` says.

  Args:
    path: the video file.
    spec: which frames and what shape.
    start, end: the window in seconds (None: the video's start / end).
    rng: the generator for random sampling, crops and flips.

  Returns:
    ``(frames uint8 [T, size, size, 3], timestamps float32 [T])``, timestamps
    in seconds from the start of the stream; ``T = spec.num_frames`` (mode
    'fps': one per ``1 / fps`` seconds of the window, at most ``max_frames``).

  Raises:
    VideoDecodeError: see ``VideoDecodeError.KINDS``.
  """
  clip = decode_video(path, spec, start=start, end=end, rng=rng)
  return clip.frames, clip.timestamps
