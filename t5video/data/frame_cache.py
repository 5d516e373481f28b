"""Decode each video once, then sample frames from memory.

Small datasets (the synthetic default, a few hundred of a user's clips) are
re-read every epoch; decoding them again each time makes the CPU trainer
input-bound. :class:`FrameCache` decodes every frame of a clip once, at the
output size (short-side resize + centre crop), keeps it in memory, and answers
later requests by picking the frames that :func:`decode.sample_times` chooses
(TSN segments, uniform, fps), zoom and flipping if asked. Random crops are not
available from the cache (the frames are stored already cropped); flips and zoom are.

Memory: ``frames x size x size x 3`` bytes per clip (a 4-second 10-fps clip
at 64² is 0.5 MB). Each Grain worker process holds its own cache.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Optional

import numpy as np

from t5video.data import decode as decode_lib


class FrameCache:
  """Drop-in for the ``decode`` module's ``decode_video`` (see the module doc).

  Args:
    max_bytes: evict least-recently-used clips beyond this many bytes.
  """

  def __init__(self, max_bytes: int = 2 << 30):
    self.max_bytes = int(max_bytes)
    self._clips: collections.OrderedDict = collections.OrderedDict()
    self._bytes = 0
    self._lock = threading.Lock()
    self.hits = 0
    self.misses = 0

  def __getstate__(self):  # a fresh, empty cache in every worker process
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state["max_bytes"])

  def _all_frames(self, path: str, spec: decode_lib.SamplingSpec) -> decode_lib.DecodedClip:
    key = (path, spec.size, spec.short_side)
    with self._lock:
      if key in self._clips:
        self._clips.move_to_end(key)
        self.hits += 1
        return self._clips[key]
    info = decode_lib.probe(path, timeout_s=spec.timeout_s)
    # 'uniform' with as many segments as the stream has frames takes every
    # frame exactly once, at the same grid times sample_times() targets.
    full = dataclasses.replace(spec, mode="uniform", num_frames=max(info.num_frames, 1),
                               crop="center", flip=False, zoom=None, short_policy="repeat")
    clip = decode_lib.decode_video(path, full)
    with self._lock:
      self.misses += 1
      self._clips[key] = clip
      self._bytes += clip.frames.nbytes
      while self._bytes > self.max_bytes and len(self._clips) > 1:
        _, old = self._clips.popitem(last=False)
        self._bytes -= old.frames.nbytes
    return clip

  def decode_video(self, path: str, spec: decode_lib.SamplingSpec, *, start: Optional[float] = None,
                   end: Optional[float] = None,
                   rng: Optional[np.random.Generator] = None) -> decode_lib.DecodedClip:
    """Same contract as :func:`t5video.data.decode.decode_video` (centre crop only)."""
    if spec.crop == "random":
      raise ValueError("FrameCache stores centre-cropped frames; use crop='center' with it")
    clip = self._all_frames(path, spec)
    info = clip.info
    ws = 0.0 if start is None else max(float(start), 0.0)
    we = info.duration if end is None else min(float(end), info.duration)
    if ws >= info.duration:
      raise decode_lib.VideoDecodeError(path, "too_short", f"window starts at {ws} s, after the video ends")
    if spec.random and rng is None:
      rng = np.random.default_rng()
    targets, available = decode_lib.sample_times(info, spec, ws, we, rng)
    # nearest cached frame for each target time: [T]
    idx = np.abs(clip.timestamps[None, :] - targets[:, None]).argmin(axis=1)
    frames = decode_lib.zoom_and_flip(clip.frames[idx], spec, rng)  # [T, size, size, 3]
    repeated = len(np.unique(idx)) < len(idx)
    if repeated and spec.mode != "fps" and spec.short_policy == "error":
      raise decode_lib.VideoDecodeError(path, "too_short", f"{available} frames, {len(idx)} asked")
    return decode_lib.DecodedClip(frames=np.ascontiguousarray(frames),
                                  timestamps=clip.timestamps[idx].astype(np.float32),
                                  repeated=repeated, available_frames=available, info=info)
