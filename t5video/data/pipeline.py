"""Grain input pipelines for video: sources, decoding, sampling plans, batching.

The pipeline is built from Grain's dataset API:

  MapDataset.range(epoch_len).repeat(num_epochs)   # global positions
    .map_with_index(_EpochPlan)                      # position -> record index
    .map(_Lookup(source))                            # index -> record / item
    .map(transform)                                  # e.g. VideoDecodeTransform
    .map(extra transforms...)                        # tokenisation etc.
    .to_iter_dataset(ReadOptions)                    # threads inside a process
    .batch(batch_size, batch_fn=collate)             # stack + pad with masks
    .mp_prefetch(worker_count)                       # optional worker processes
    -> _Accounting                                   # main process: failures

Design choices (documented because the trainer and evaluators depend on them):

* **Sampling plan.** Every element position ``i`` maps to ``(epoch, pos)`` with
  ``epoch = i // epoch_len``. The record index at ``(epoch, pos)`` is a pure
  function of ``(seed, shard_index, epoch, pos)``, so the plan is random-access
  and Grain's iterator state (the next position, per worker) is all that is
  needed to resume exactly, with or without worker processes.
* **Global batches** (endless streams, i.e. training): every process computes
  the same global order (the stream ``(seed, 0, epoch)``) and process ``k`` of
  ``K`` reads rows ``[k*b, (k+1)*b)`` of every global batch of ``K*b`` rows,
  the rows its devices own. A run sees the same global batches, and the same
  frames, on any number of hosts; with one process nothing changes.
* **Multi-host sharding** (finite epochs, i.e. evaluation). Process ``k`` of ``K`` owns the strided slice
  ``indices[k::K]`` of the (possibly oversampled) index list. Shards are padded
  to the same length ``ceil(n / K)`` with *padding slots* (index ``-1``), so all
  hosts produce the same number of batches (a mismatch hangs collectives).
  Padding slots come out as examples with ``valid=False`` and ``index=-1``; the
  union of all shards' real indices is the dataset, disjointly.
* **Balancing.** ``balance='oversample'`` tiles the indices of every class with
  fewer than ``oversample_floor`` clips up to that floor before sharding (global
  and deterministic; no randomness). ``balance='class_balanced'`` draws, for
  every element, a class uniformly at random and then the next clip of that
  class from a per-(epoch, class) permutation of all its clips; draws use the
  stream ``(seed, shard_index, epoch)``, so hosts draw different clips and the
  epoch length stays ``ceil(n / K)``.
* **Failed decodes** do not crash a worker: the example comes out with
  ``valid=False``, zero frames of the regular shape, ``failure=<kind>`` and its
  ``path``. The failure information travels inside the batch, so the main
  process sees it whatever the number of worker processes; ``_Accounting``
  counts it in :class:`DecodeFailures`, logs per-epoch summaries (an epoch is
  complete when all its ``epoch_len`` slots have been seen) and raises when the
  failure ratio exceeds ``max_failure_ratio``. Failures are part of the
  iterator state, so a resumed run keeps its counts.
* **Randomness** of decoding (segment sampling, random crops, flips) is drawn
  from ``np.random.default_rng([seed, epoch, pos, index + 1])``: a resumed run
  sees the same frames.
* **Batching** stacks numpy arrays; arrays whose shapes differ within a batch
  (variable frame counts in ``fps`` mode, token ids of different lengths) are
  padded with zeros and get a ``<key>_mask`` (bool ``[B, max_len]``) unless
  the example already carries that mask key (``frames`` uses ``frame_mask``).
  Strings, lists and dicts stay Python lists. With ``pad_to_batch`` a final
  short batch is filled with padding examples (``valid=False``) so shapes stay
  static for ``jit``.

Changing ``worker_count`` between a save and a restore changes which worker
batched which element: the state restores only into a loader with the same
``worker_count``, ``batch_size``, ``seed`` and sharding.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import tempfile
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import grain
import numpy as np

from t5video.data.records import VideoRecord

# Keys every example produced by the pipeline carries.
PIPELINE_KEYS = ("index", "epoch", "position", "valid", "failure", "path")

BALANCE_MODES = (None, "oversample", "class_balanced")


def check_labels_for_balance(records: Sequence[VideoRecord], balance: Optional[str], clips: str) -> None:
  """``balance`` samples by class, so every record needs a label: one line naming the config key
  otherwise (``clips`` says which, e.g. "'train' clips in /data/x"). Nothing to check without it."""
  if not balance:
    return
  unlabelled = sum(1 for r in records if not r.label)
  if unlabelled:
    raise ValueError(f"config.data.balance={balance!r} samples by class, but {unlabelled} of the {len(records)} "
                     f"{clips} have no label; pass --config.data.balance= (every clip equally often)")


# ---------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------


class RecordSource:
  """A Grain random-access data source over :class:`VideoRecord`s.

  Implements ``__len__`` and ``__getitem__`` (Grain's
  ``RandomAccessDataSource`` protocol); picklable, so worker processes get a
  copy of the records.
  """

  def __init__(self, records: Sequence[VideoRecord]):
    records = list(records)
    for i, r in enumerate(records):
      if not isinstance(r, VideoRecord):
        raise TypeError(
            f"RecordSource: element {i} is a {type(r).__name__}, expected a "
            "VideoRecord")
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> VideoRecord:
    return self._records[index]

  def __repr__(self) -> str:
    return f"RecordSource(num_records={len(self._records)})"


# ---------------------------------------------------------------------------
# Failure accounting
# ---------------------------------------------------------------------------


class DecodeFailures:
  """Counts failed decodes per kind with their paths, per epoch and in total.

  Attributes:
    counts: total failures per kind.
    paths: ``[(path, kind), ...]`` of failures in the order seen (the first
      ``max_paths`` of them).
    seen: real (non-padding) examples seen in total.
    repeated, repeated_paths: too-short videos whose frames were repeated.
    max_failure_ratio: if set, ``check`` raises ``RuntimeError`` when failures
      exceed this fraction of the examples of an epoch (or of the run).
  """

  def __init__(self, *, epoch_len: Optional[int] = None,
               max_failure_ratio: Optional[float] = None,
               max_paths: int = 10_000,
               epoch_slots: Optional[Callable[[int], int]] = None):
    if max_failure_ratio is not None and not 0.0 <= max_failure_ratio <= 1.0:
      raise ValueError(
          f"max_failure_ratio must be in [0, 1], got {max_failure_ratio}")
    self.epoch_len = epoch_len
    # epoch -> how many of its slots this process sees (default: epoch_len each)
    self.epoch_slots = epoch_slots
    self.max_failure_ratio = max_failure_ratio
    self.max_paths = max_paths
    self.counts: collections.Counter[str] = collections.Counter()
    self.paths: list[tuple[str, str]] = []
    self.seen = 0
    self.repeated = 0
    self.repeated_paths: list[str] = []
    # epoch -> {'slots': int, 'seen': int, 'counts': {kind: n}}
    self._epochs: dict[int, dict[str, Any]] = {}
    self.completed_epochs: list[dict[str, Any]] = []

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def _epoch(self, epoch: int) -> dict[str, Any]:
    return self._epochs.setdefault(
        int(epoch), {"slots": 0, "seen": 0, "counts": {}, "paths": []})

  def add_slot(self, epoch: int, *, is_padding: bool, failure: str,
               path: str, repeated: bool = False) -> None:
    """Accounts one element (one slot of ``epoch``) of a batch."""
    e = self._epoch(epoch)
    e["slots"] += 1
    if not is_padding:
      e["seen"] += 1
      self.seen += 1
      if repeated:
        self.repeated += 1
        if len(self.repeated_paths) < self.max_paths:
          self.repeated_paths.append(path)
      if failure:
        e["counts"][failure] = e["counts"].get(failure, 0) + 1
        if len(e["paths"]) < 20:
          e["paths"].append(path)
        self.counts[failure] += 1
        if len(self.paths) < self.max_paths:
          self.paths.append((path, failure))

  def add_batch(self, batch: Mapping[str, Any]) -> None:
    """Accounts every element of a collated batch (batch-padding excluded)."""
    indices = np.asarray(batch["index"])
    epochs = np.asarray(batch["epoch"])
    batch_padding = np.asarray(batch.get("batch_padding",
                                         np.zeros(len(indices), bool)))
    repeated = np.asarray(batch.get("repeated", np.zeros(len(indices), bool)))
    for j in range(len(indices)):
      if batch_padding[j]:
        continue  # Not a slot of any epoch: filler of a short final batch.
      self.add_slot(int(epochs[j]), is_padding=int(indices[j]) < 0,
                    failure=str(batch["failure"][j]),
                    path=str(batch["path"][j]), repeated=bool(repeated[j]))
    self._close_complete_epochs()
    self._check_open_epochs()

  def _close_complete_epochs(self) -> None:
    if not self.epoch_len and self.epoch_slots is None:
      return
    for epoch in sorted(self._epochs):
      slots = self.epoch_slots(epoch) if self.epoch_slots is not None else self.epoch_len
      if self._epochs[epoch]["slots"] >= slots:
        self.close_epoch(epoch)

  def close_epoch(self, epoch: int) -> None:
    """Logs the summary of ``epoch`` and checks its failure ratio."""
    e = self._epochs.pop(int(epoch), None)
    if e is None:
      return
    summary = {"epoch": int(epoch), "seen": e["seen"],
               "failed": sum(e["counts"].values()),
               "counts": dict(e["counts"]), "paths": list(e["paths"])}
    self.completed_epochs.append(summary)
    # Keep the iterator state small on long runs: the last 100 epochs.
    del self.completed_epochs[:-100]
    if summary["failed"]:
      logging.warning(
          "Data epoch %d: %d of %d videos failed to decode %s; first paths: %s",
          epoch, summary["failed"], e["seen"], summary["counts"],
          summary["paths"][:5])
    else:
      logging.info("Data epoch %d: %d videos, no decode failures.", epoch,
                   e["seen"])
    self._check(summary["failed"], e["seen"], f"epoch {epoch}",
                [p for p in e["paths"]])

  def close_all(self) -> None:
    """Closes the open (partial) epochs and checks the whole run."""
    for epoch in sorted(self._epochs):
      self.close_epoch(epoch)
    logging.info("Data run: %s", self.summary())
    self._check(self.total, self.seen, "the run",
                [p for p, _ in self.paths])

  def _check_open_epochs(self) -> None:
    # An epoch whose failures already exceed the ratio of its full length can
    # never recover: fail early instead of waiting for the epoch's end.
    if self.max_failure_ratio is None or not self.epoch_len:
      return
    for epoch, e in self._epochs.items():
      failed = sum(e["counts"].values())
      if failed > self.max_failure_ratio * self.epoch_len:
        self._check(failed, max(e["seen"], 1), f"epoch {epoch} (so far)",
                    e["paths"], force=True)

  def _check(self, failed: int, seen: int, where: str, paths: list[str],
             force: bool = False) -> None:
    if self.max_failure_ratio is None or seen == 0:
      return
    ratio = failed / seen
    if force or ratio > self.max_failure_ratio:
      raise RuntimeError(
          f"{failed} of {seen} videos ({ratio:.1%}) failed to decode in "
          f"{where}, more than max_failure_ratio={self.max_failure_ratio}. "
          f"Counts per kind: {dict(self.counts)}. First failing paths: "
          f"{paths[:10]}")

  def summary(self) -> str:
    kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.counts.items()))
    first = [p for p, _ in self.paths[:5]]
    text = (f"{self.total} of {self.seen} videos failed to decode"
            + (f" ({kinds}); first paths: {first}" if self.total else ""))
    if self.repeated:
      text += (f"; {self.repeated} too-short videos repeated frames (first: "
               f"{self.repeated_paths[:5]})")
    return text

  def state_dict(self) -> dict[str, Any]:
    """A JSON-serialisable state (part of the loader's iterator state)."""
    return {
        "counts": dict(self.counts),
        "paths": [list(p) for p in self.paths],
        "seen": self.seen,
        "repeated": self.repeated,
        "repeated_paths": list(self.repeated_paths),
        "epochs": {str(k): v for k, v in self._epochs.items()},
        "completed_epochs": list(self.completed_epochs),
    }

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    self.counts = collections.Counter(state["counts"])
    self.paths = [(p, k) for p, k in state["paths"]]
    self.seen = int(state["seen"])
    self.repeated = int(state["repeated"])
    self.repeated_paths = list(state["repeated_paths"])
    self._epochs = {int(k): dict(v) for k, v in state["epochs"].items()}
    self.completed_epochs = list(state["completed_epochs"])


# ---------------------------------------------------------------------------
# Decoding transform
# ---------------------------------------------------------------------------


def _text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _item_to_record(item: Any) -> tuple[VideoRecord, Optional[bytes], str]:
  """A source item -> (record, encoded video bytes or None, stored error).

  Items are :class:`VideoRecord`s (``RecordSource``) or mappings read from a
  TFDS ArrayRecord source (see ``tfds_builders``): ``{'video': bytes,
  'record': json text, 'video_error': '' | kind, ...}``.
  """
  if isinstance(item, VideoRecord):
    return item, None, ""
  if isinstance(item, Mapping) and "record" in item:
    text = item["record"]
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    record = VideoRecord.from_json(json.loads(text))
    video = item.get("video")
    if isinstance(video, np.ndarray):
      video = video.item()
    error = _text(item.get("video_error", ""))
    return record, (bytes(video) if video is not None else None), error
  raise TypeError(
      f"Cannot decode a source item of type {type(item).__name__}: expected a "
      "VideoRecord or a mapping with 'record' (JSON) and 'video' (bytes) keys")


def _spec_for_eval(spec: Any) -> Any:
  """The deterministic version of a sampling spec (uniform, centre, no flip, no zoom)."""
  changes = {}
  if getattr(spec, "mode", None) == "segment":
    changes["mode"] = "uniform"
  if getattr(spec, "crop", None) == "random":
    changes["crop"] = "center"
  if getattr(spec, "flip", False):
    changes["flip"] = False
  if getattr(spec, "zoom", None) is not None:
    changes["zoom"] = None
  return dataclasses.replace(spec, **changes) if changes else spec


def _decode(decoder: Any, path: str, spec: Any, record: VideoRecord,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
  """(frames, timestamps, repeated): whether a short video repeated frames.

  ``decoder`` is the ``decode`` module or an object with the same
  ``decode_video`` (e.g. ``frame_cache.FrameCache``); one with only
  ``decode_clip`` reports no repeats.
  """
  if hasattr(decoder, "decode_video"):
    clip = decoder.decode_video(path, spec, start=record.start, end=record.end,
                                rng=rng)
    return clip.frames, clip.timestamps, bool(clip.repeated)
  frames, timestamps = decoder.decode_clip(path, spec, start=record.start,
                                           end=record.end, rng=rng)
  return frames, timestamps, False


class VideoDecodeTransform:
  """Decodes a record's clip into a training/eval example.

  Output example (a dict):
    frames: uint8 ``[T, size, size, 3]``.
    timestamps: float32 ``[T]`` seconds.
    frame_mask: bool ``[T]`` (False on frames padded up to ``T``).
    index, epoch, position: where the example comes from (see module doc).
    valid: bool; False for failed decodes and padding slots.
    failure: '' or the :class:`VideoDecodeError` kind.
    repeated: the video was too short for ``T`` distinct frames and frames
      were repeated (``short_policy='repeat'``); counted, not a failure.
    path, video_id, label ('' if none), captions, tags, subtitle, metadata,
    moments (list of ``{start, end, query}``), saliency (float32 ``[S]``),
    start / end (float seconds, NaN when not given).

  ``T`` is ``spec.num_frames``; in ``fps`` mode it is ``spec.max_frames`` when
  set (frames are padded and masked up to it, so shapes are static) and the
  decoded count otherwise (the batch pads them).

  Args:
    spec: a ``t5video.data.decode.SamplingSpec``.
    train: with False the spec is made deterministic (``segment`` -> ``uniform``
      sampling, centre crop, no flip).
    seed: seed of the per-example random generator.
    decoder: what decodes files: None for ``t5video.data.decode``, or an
      object with the same ``decode_video(path, spec, *, start, end, rng)``
      such as ``frame_cache.FrameCache`` (pickled into each worker). Encoded
      bytes from TFDS sources always go through ``t5video.data.decode``.
  """

  def __init__(self, spec: Any, train: bool, seed: int = 0, *,
               decoder: Any = None):
    self.spec = spec if train else _spec_for_eval(spec)
    self.train = train
    self.seed = int(seed)
    self.decoder = decoder

  @property
  def _pad_frames(self) -> Optional[int]:
    if getattr(self.spec, "mode", "uniform") == "fps":
      return getattr(self.spec, "max_frames", None)
    return self.spec.num_frames

  def __call__(self, element: Mapping[str, Any]) -> dict[str, Any]:
    from t5video.data import decode  # Imported lazily: heavy (PyAV).

    record, video_bytes, stored_error = _item_to_record(element["item"])
    index = int(element["index"])
    epoch = int(element["epoch"])
    position = int(element["position"])
    rng = np.random.default_rng([self.seed, epoch, position, index + 1])
    size = self.spec.size
    failure = ""
    repeated = False
    try:
      if stored_error:
        raise decode.VideoDecodeError(
            record.path, stored_error,
            "recorded when the dataset was built")
      if video_bytes is not None:
        frames, timestamps, repeated = self._decode_bytes(
            decode, record, video_bytes, rng)
      else:
        frames, timestamps, repeated = _decode(
            self.decoder or decode, record.path, self.spec, record, rng)
    except decode.VideoDecodeError as e:
      failure = e.kind
      frames = np.zeros((self._pad_frames or 0, size, size, 3), np.uint8)
      timestamps = np.zeros((frames.shape[0],), np.float32)
    frames = np.asarray(frames, np.uint8)
    timestamps = np.asarray(timestamps, np.float32)
    mask = np.full((frames.shape[0],), not failure, bool)
    pad_to = self._pad_frames
    if pad_to is not None and frames.shape[0] < pad_to:
      extra = pad_to - frames.shape[0]
      frames = np.concatenate(
          [frames, np.zeros((extra,) + frames.shape[1:], np.uint8)])
      timestamps = np.concatenate([timestamps, np.zeros(extra, np.float32)])
      mask = np.concatenate([mask, np.zeros(extra, bool)])
    elif pad_to is not None and frames.shape[0] > pad_to:
      frames, timestamps, mask = (frames[:pad_to], timestamps[:pad_to],
                                  mask[:pad_to])
    return {
        "frames": frames,
        "timestamps": timestamps,
        "frame_mask": mask,
        "index": np.int64(index),
        "epoch": np.int64(epoch),
        "position": np.int64(position),
        "valid": np.bool_(not failure),
        "failure": failure,
        "repeated": np.bool_(repeated),
        "path": record.path,
        "video_id": record.video_id,
        "label": record.label or "",
        "captions": list(record.captions),
        "tags": list(record.tags),
        "subtitle": record.subtitle,
        "metadata": dict(record.metadata),
        "moments": [dataclasses.asdict(m) if not isinstance(m, dict) else m
                    for m in record.moments],
        "saliency": np.asarray(record.saliency, np.float32),
        "start": np.float32(np.nan if record.start is None else record.start),
        "end": np.float32(np.nan if record.end is None else record.end),
    }

  def _decode_bytes(self, decode, record: VideoRecord, data: bytes,
                    rng: np.random.Generator):
    """Decodes an encoded video held in memory (TFDS sources)."""
    if not data:
      raise decode.VideoDecodeError(record.path, "empty",
                                    "the stored video is empty")
    suffix = os.path.splitext(record.path)[1] or ".mp4"
    tmp_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=tmp_root) as f:
      f.write(data)
      f.flush()
      try:
        return _decode(decode, f.name, self.spec, record, rng)
      except decode.VideoDecodeError as e:
        # Report the dataset's path, not the temporary file's.
        raise decode.VideoDecodeError(record.path, e.kind,
                                      getattr(e, "detail", "")) from e


class PassThrough:
  """The transform for sources whose items are already example dicts.

  Used for :class:`t5video.data.features.FeatureSource`: adds the pipeline
  keys (``index``, ``epoch``, ``position``, ``valid``, ``failure``, ``path``)
  and keeps every key of the item.
  """

  def __call__(self, element: Mapping[str, Any]) -> dict[str, Any]:
    item = element["item"]
    if not isinstance(item, Mapping):
      raise TypeError(
          f"PassThrough needs mapping items, got {type(item).__name__}; use "
          "VideoDecodeTransform for VideoRecord sources")
    out = dict(item)
    out["index"] = np.int64(element["index"])
    out["epoch"] = np.int64(element["epoch"])
    out["position"] = np.int64(element["position"])
    out.setdefault("valid", np.bool_(True))
    out.setdefault("failure", "")
    out.setdefault("path", str(out.get("video_id", "")))
    return out


class ConstantPixels:
  """Replaces every pixel (or feature) by a constant: the input of a text-only control.

  Applied after decoding (so validity and sampling are those of the real
  clip), in training and evaluation alike. ``values`` maps an example key to
  its constant (mid-grey for uint8 ``frames``, 0 for cached ``features``);
  keys an example lacks are skipped, shapes and dtypes are kept.
  """

  def __init__(self, values: Mapping[str, float]):
    self.values = dict(values)

  def __call__(self, example: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(example)
    for key, value in self.values.items():
      if key in out:
        array = np.asarray(out[key])
        out[key] = np.full(array.shape, value, array.dtype)
    return out


# ---------------------------------------------------------------------------
# Sampling plan
# ---------------------------------------------------------------------------


def _class_ids(labels: Sequence[Any], source_len: int
               ) -> tuple[np.ndarray, list[Any]]:
  """Maps labels to dense ids (sorted by name for determinism)."""
  for i, lab in enumerate(labels):
    if lab is None or lab == "":
      raise ValueError(
          f"Balanced sampling needs a label for every record; record {i} of "
          f"{source_len} has none (pass label_fn, or balance=None)")
  names = sorted(set(labels), key=str)
  lookup = {n: j for j, n in enumerate(names)}
  return np.asarray([lookup[x] for x in labels], np.int64), names


def oversample_indices(class_ids: np.ndarray, floor: int) -> np.ndarray:
  """All indices, plus repeats of each class with fewer than ``floor`` clips.

  A class with ``c < floor`` clips has its indices tiled to exactly ``floor``
  entries; larger classes are kept as they are. Deterministic.
  """
  extra = []
  for c in np.unique(class_ids):
    idx = np.flatnonzero(class_ids == c)
    if len(idx) < floor:
      extra.append(np.resize(idx, floor)[len(idx):])
  return np.concatenate([np.arange(len(class_ids))] + extra).astype(np.int64)


class _EpochPlan:
  """Maps a global element position to ``{index, epoch, position}``.

  Picklable; caches the permutation of the most recent epochs.
  """

  def __init__(self, *, slots: np.ndarray, epoch_len: int, seed: int,
               shard_index: int, shuffle: bool,
               class_ids: Optional[np.ndarray],
               global_batches: Optional[tuple[int, int, int]] = None):
    self.slots = slots              # [epoch_len] indices (-1: padding slot)
    self.epoch_len = epoch_len
    # (process, processes, rows per process): local positions read this process's block of
    # every global batch of one global order (then ``slots``/``epoch_len`` are global).
    self.global_batches = global_batches
    self.seed = seed
    self.shard_index = shard_index
    self.shuffle = shuffle
    self.class_ids = class_ids      # set only for class_balanced sampling
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()  # Grain's read threads ask for orders concurrently

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_cache"] = {}
    del d["_lock"]
    return d

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The record index of every slot of ``epoch`` (``[epoch_len]``)."""
    with self._lock:
      order = self._cache.get(epoch)
      if order is None:
        order = self._cache[epoch] = self._order(epoch)
        while len(self._cache) > 2:  # the two newest epochs (the current and the next)
          self._cache.pop(min(self._cache))
      return order

  def _order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, self.shard_index, epoch])
    if self.class_ids is not None:
      order = self._class_balanced(rng, epoch)
    elif self.shuffle:
      order = self.slots[rng.permutation(self.epoch_len)]
    else:
      order = self.slots
    return order

  def _class_balanced(self, rng: np.random.Generator, epoch: int
                      ) -> np.ndarray:
    num_classes = int(self.class_ids.max()) + 1
    drawn = rng.integers(0, num_classes, size=self.epoch_len)
    order = np.empty(self.epoch_len, np.int64)
    for c in range(num_classes):
      where = np.flatnonzero(drawn == c)
      if not len(where):
        continue
      members = np.flatnonzero(self.class_ids == c)
      members = members[rng.permutation(len(members))]
      # The k-th draw of class c in this epoch takes its k-th clip (cycled).
      order[where] = members[np.arange(len(where)) % len(members)]
    return order

  def global_position(self, i: int) -> int:
    """The position in the global stream of this process's ``i``-th element."""
    if self.global_batches is None:
      return int(i)
    process, processes, rows = self.global_batches
    k, offset = divmod(int(i), rows)  # the k-th batch, its offset-th row on this process
    return (k * processes + process) * rows + offset

  def local_slots(self, epoch: int) -> int:
    """How many slots of ``epoch`` this process reads."""
    if self.global_batches is None:
      return self.epoch_len
    process, processes, rows = self.global_batches
    period, lo = processes * rows, process * rows

    def before(g):  # positions < g in this process's blocks
      return (g // period) * rows + min(max(g % period - lo, 0), rows)

    return before((epoch + 1) * self.epoch_len) - before(epoch * self.epoch_len)

  def __call__(self, i: int, _: Any) -> dict[str, Any]:
    epoch, pos = divmod(self.global_position(i), self.epoch_len)
    index = int(self.epoch_order(epoch)[pos])
    return {"index": index, "epoch": epoch, "position": pos}


class _Lookup:
  """Attaches the source item; padding slots get item 0 (made invalid later)."""

  def __init__(self, source: Any):
    self.source = source

  def __call__(self, element: dict[str, Any]) -> dict[str, Any]:
    index = element["index"]
    return dict(element, item=self.source[max(index, 0)])


def _padding_like(example: Mapping[str, Any]) -> dict[str, Any]:
  """An invalid example with the structure and shapes of ``example``."""
  out = {}
  for k, v in example.items():
    if isinstance(v, np.ndarray):
      out[k] = np.zeros_like(v)
    elif isinstance(v, np.generic):
      out[k] = np.zeros((), v.dtype)[()]
    elif isinstance(v, bool):
      out[k] = False
    elif isinstance(v, (int, float)):
      out[k] = type(v)(0)
    elif isinstance(v, str):
      out[k] = ""
    elif isinstance(v, (list, tuple)):
      out[k] = type(v)()
    elif isinstance(v, dict):
      out[k] = {}
    else:
      out[k] = None
  out["valid"] = np.bool_(False)
  out["failure"] = ""
  if "index" in example:
    out["index"] = np.int64(-1)
  for k in ("epoch", "position"):
    if k in example:
      out[k] = example[k]
  return out


class _Transform:
  """Runs the decode transform and the extra transforms on one element."""

  def __init__(self, transform: Callable[[Mapping[str, Any]], dict],
               extra: Sequence[Callable[[dict], dict]]):
    self.transform = transform
    self.extra = tuple(extra)

  def __call__(self, element: dict[str, Any]) -> dict[str, Any]:
    example = self.transform(element)
    if element["index"] < 0:
      example = _padding_like(example)
      example["path"] = ""
    for fn in self.extra:
      example = fn(example)
    return example


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def _is_array_like(v: Any) -> bool:
  return isinstance(v, (np.ndarray, np.generic, bool, int, float))


def collate(examples: Sequence[Mapping[str, Any]], batch_size: Optional[int]
            = None) -> dict[str, Any]:
  """Collates examples into a batch.

  Arrays (and Python/numpy scalars) are stacked along a new batch axis; arrays
  of different shapes are zero-padded to the largest and get a
  ``<key>_mask`` ``[B, max_len]`` over their first axis unless the examples
  carry that key already. Everything else (strings, lists, dicts) becomes a
  Python list. With ``batch_size`` a short batch is filled with padding
  examples (``valid=False``, ``batch_padding=True``).

  Args:
    examples: example dicts with identical keys.
    batch_size: pad the batch to this size (None: no padding).

  Returns:
    The batch dict. It always has ``batch_padding`` (bool ``[B]``).
  """
  if not examples:
    raise ValueError("collate needs at least one example")
  examples = [dict(e, batch_padding=np.bool_(False)) for e in examples]
  if batch_size is not None and len(examples) < batch_size:
    filler = _padding_like(examples[0])
    filler["batch_padding"] = np.bool_(True)
    examples += [filler] * (batch_size - len(examples))
  keys = list(examples[0].keys())
  for j, e in enumerate(examples):
    if set(e.keys()) != set(keys):
      raise ValueError(
          f"collate: example {j} has keys {sorted(e)} but example 0 has "
          f"{sorted(keys)}")
  batch: dict[str, Any] = {}
  masks: dict[str, np.ndarray] = {}
  for k in keys:
    values = [e[k] for e in examples]
    if not all(_is_array_like(v) for v in values):
      batch[k] = values
      continue
    arrays = [np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
      batch[k] = np.stack(arrays)  # [batch, ...]
      continue
    ndims = {a.ndim for a in arrays}
    if len(ndims) != 1 or arrays[0].ndim == 0:
      raise ValueError(
          f"collate: key {k!r} has arrays of different ranks {sorted(shapes)}")
    max_shape = tuple(max(s) for s in zip(*(a.shape for a in arrays)))
    out = np.zeros((len(arrays),) + max_shape, arrays[0].dtype)  # [batch, ...]
    mask = np.zeros((len(arrays), max_shape[0]), bool)  # [batch, len]
    for j, a in enumerate(arrays):
      out[(j,) + tuple(slice(0, d) for d in a.shape)] = a
      mask[j, :a.shape[0]] = True
    batch[k] = out
    if f"{k}_mask" not in keys:
      masks[f"{k}_mask"] = mask
  batch.update(masks)
  return batch


class _Collate:
  """Picklable ``batch_fn`` for Grain."""

  def __init__(self, batch_size: Optional[int]):
    self.batch_size = batch_size

  def __call__(self, examples):
    return collate(examples, self.batch_size)


# ---------------------------------------------------------------------------
# Main-process accounting stage
# ---------------------------------------------------------------------------


class _AccountingIterator(grain.DatasetIterator):
  """Counts failures in each batch; state = parent state + failure counts."""

  def __init__(self, parent: grain.DatasetIterator, failures: DecodeFailures):
    super().__init__(parent)
    self.failures = failures
    self._finished = False

  def __next__(self):
    try:
      batch = next(self._parent)
    except StopIteration:
      if not self._finished:
        self._finished = True
        self.failures.close_all()
      raise
    if "failure" in batch and "index" in batch and "epoch" in batch:
      self.failures.add_batch(batch)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(),
            "failures": self.failures.state_dict()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    self.failures.load_state_dict(state["failures"])
    self._finished = False

  def __str__(self) -> str:
    return "DecodeFailureAccounting"


class _AccountingDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, epoch_len: int,
               max_failure_ratio: Optional[float],
               epoch_slots: Optional[Callable[[int], int]] = None):
    super().__init__(parent)
    self._epoch_len = epoch_len
    self._max_failure_ratio = max_failure_ratio
    self._epoch_slots = epoch_slots

  def __iter__(self) -> _AccountingIterator:
    return _AccountingIterator(
        self._parent.__iter__(),
        DecodeFailures(epoch_len=self._epoch_len,
                       max_failure_ratio=self._max_failure_ratio,
                       epoch_slots=self._epoch_slots))

  def __str__(self) -> str:
    return "DecodeFailureAccounting"


# ---------------------------------------------------------------------------
# make_loader
# ---------------------------------------------------------------------------


def _default_label(item: Any) -> Any:
  if isinstance(item, VideoRecord):
    return item.label
  if isinstance(item, Mapping):
    if "label" in item:
      lab = item["label"]
      return lab.decode() if isinstance(lab, bytes) else lab
    if "record" in item:
      return _item_to_record(item)[0].label
  raise TypeError(f"No default label for items of type {type(item).__name__}")


@dataclasses.dataclass(frozen=True)
class LoaderPlan:
  """What ``make_loader`` computed: useful for logging and tests.

  Attributes:
    epoch_len: slots per epoch on this process (padding slots included).
    steps_per_epoch: batches per epoch on this process (with
      ``drop_remainder``, rounded down; else up).
    shard_indices: the record indices this process owns in epoch order
      before shuffling (-1: padding slot; empty for class_balanced; with
      global batches every index, which all processes share).
    class_names: label names (balanced modes), else empty.
  """
  epoch_len: int
  steps_per_epoch: int
  shard_indices: np.ndarray
  class_names: tuple[Any, ...]


def plan_epochs(num_records: int, *, shard_index: int, shard_count: int,
                balance: Optional[str] = None,
                class_ids: Optional[np.ndarray] = None,
                oversample_floor: Optional[float] = None
                ) -> tuple[np.ndarray, int]:
  """This process's slots (record indices, -1 = padding) and epoch length."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(
        f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if balance == "class_balanced":
    epoch_len = math.ceil(num_records / shard_count)
    return np.zeros((0,), np.int64), epoch_len
  if balance == "oversample":
    counts = np.bincount(class_ids)
    counts = counts[counts > 0]
    if oversample_floor is None:
      floor = int(math.ceil(np.median(counts)))
    elif isinstance(oversample_floor, float) and oversample_floor <= 1.0:
      floor = int(math.ceil(oversample_floor * counts.max()))
    else:
      floor = int(oversample_floor)
    indices = oversample_indices(class_ids, floor)
  else:
    indices = np.arange(num_records, dtype=np.int64)
  per_shard = math.ceil(len(indices) / shard_count)
  mine = indices[shard_index::shard_count]
  slots = np.full((per_shard,), -1, np.int64)
  slots[:len(mine)] = mine
  return slots, per_shard


def read_ahead_examples(batch_size: int) -> int:
  """Examples each reading process decodes ahead of the batch being built."""
  return max(2 * batch_size, 8)


def loader_buffer_bytes(example_bytes: int, batch_size: int, *, worker_count: int = 0,
                        worker_buffer_size: int = 2) -> int:
  """Host memory :func:`make_loader`'s buffers hold at most, for examples of ``example_bytes``:
  every reading process's read-ahead, the batches the workers buffer, the batch in hand."""
  examples = read_ahead_examples(batch_size) * max(1, worker_count)
  batches = worker_count * worker_buffer_size + 1
  return int(example_bytes) * (examples + batches * batch_size)


def make_loader(
    records: Any,
    *,
    transform: Optional[Callable[[Mapping[str, Any]], dict]] = None,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: Optional[int] = None,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    worker_count: int = 0,
    drop_remainder: bool = True,
    balance: Optional[str] = None,
    label_fn: Optional[Callable[[Any], Any]] = None,
    pad_to_batch: bool = True,
    extra_transforms: Sequence[Callable[[dict], dict]] = (),
    max_failure_ratio: Optional[float] = None,
    oversample_floor: Optional[float] = None,
    read_threads: int = 4,
    worker_buffer_size: int = 2,
    return_plan: bool = False,
    global_batches: Optional[bool] = None,
):
  """Builds a checkpointable iterator of batches.

  Args:
    records: a list of :class:`VideoRecord`s or any random-access source
      (``__len__``/``__getitem__``), e.g. a TFDS ArrayRecord data source or a
      :class:`~t5video.data.features.FeatureSource`.
    transform: element -> example; element is ``{'item', 'index', 'epoch',
      'position'}``. Usually :class:`VideoDecodeTransform`; default
      :class:`PassThrough` (for sources of example dicts).
    batch_size: examples per batch (per process).
    seed: seeds shuffling, balanced sampling and the decode transform's rng.
    shuffle: shuffle each epoch (a new permutation per epoch).
    num_epochs: None repeats forever.
    shard_index, shard_count: this process's shard; default
      ``jax.process_index()`` / ``jax.process_count()``.
    worker_count: Grain worker processes (0: decode in threads of this
      process).
    drop_remainder: drop a last short batch (finite ``num_epochs`` only).
    balance: None, 'oversample' or 'class_balanced' (see module doc).
    label_fn: item -> label for balancing (default: the record's ``label``).
    pad_to_batch: fill a short last batch with invalid padding examples.
    extra_transforms: per-example callables applied after ``transform`` (in
      the workers), e.g. tokenisation supplied by a recipe.
    max_failure_ratio: raise when more than this fraction of an epoch's (or
      the run's) videos fail to decode.
    oversample_floor: for 'oversample': minimum clips per class; an int, a
      float in (0, 1] (fraction of the largest class) or None (the median
      class size).
    read_threads: threads decoding inside each process.
    worker_buffer_size: batches buffered per worker process.
    return_plan: also return a :class:`LoaderPlan`.
    global_batches: every process reads its block of each global batch of
      one global order (see the module doc); default: for endless streams
      (``num_epochs=None``). Otherwise each process owns a strided shard.

  Returns:
    A Grain ``DatasetIterator`` of batches (``get_state()``/``set_state()``
    resume exactly; ``.failures`` is the :class:`DecodeFailures`), and the plan
    if ``return_plan``.
  """
  if balance not in BALANCE_MODES:
    raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  source = (RecordSource(records) if isinstance(records, (list, tuple))
            else records)
  n = len(source)
  if n == 0:
    raise ValueError("make_loader: the dataset is empty")

  class_ids, class_names = None, []
  if balance is not None:
    label_fn = label_fn or _default_label
    class_ids, class_names = _class_ids([label_fn(source[i]) for i in range(n)],
                                        n)
  if global_batches is None:
    global_batches = num_epochs is None
  if global_batches and num_epochs is not None:
    raise ValueError("global_batches needs an endless stream (num_epochs=None)")
  if global_batches:  # one global plan; this process reads its rows of every global batch
    slots, epoch_len = plan_epochs(n, shard_index=0, shard_count=1, balance=balance,
                                   class_ids=class_ids, oversample_floor=oversample_floor)
    plan = _EpochPlan(
        slots=slots, epoch_len=epoch_len, seed=seed, shard_index=0, shuffle=shuffle,
        class_ids=class_ids if balance == "class_balanced" else None,
        global_batches=(shard_index, shard_count, batch_size))
    epoch_len = math.ceil(epoch_len / shard_count)  # about this process's share of an epoch
  else:
    slots, epoch_len = plan_epochs(
        n, shard_index=shard_index, shard_count=shard_count, balance=balance,
        class_ids=class_ids, oversample_floor=oversample_floor)
    plan = _EpochPlan(
        slots=slots, epoch_len=epoch_len, seed=seed, shard_index=shard_index,
        shuffle=shuffle,
        class_ids=class_ids if balance == "class_balanced" else None)

  ds = grain.MapDataset.range(epoch_len)
  ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(plan)
  ds = ds.map(_Lookup(source))
  ds = ds.map(_Transform(transform or PassThrough(), extra_transforms))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=read_ahead_examples(batch_size)))
  it_ds = it_ds.batch(
      batch_size, drop_remainder=drop_remainder,
      batch_fn=_Collate(batch_size if pad_to_batch else None))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  it_ds = _AccountingDataset(it_ds, epoch_len, max_failure_ratio,
                             epoch_slots=plan.local_slots if global_batches else None)
  iterator = iter(it_ds)
  if not return_plan:
    return iterator
  steps = (epoch_len // batch_size if drop_remainder
           else math.ceil(epoch_len / batch_size))
  return iterator, LoaderPlan(epoch_len=epoch_len, steps_per_epoch=steps,
                              shard_indices=slots,
                              class_names=tuple(class_names))


class KeyFilterIterator(grain.DatasetIterator):
  """Keeps only ``keys`` of each batch; state is the parent's (Grain-checkpointable)."""

  def __init__(self, parent: grain.DatasetIterator, keys: Sequence[str]):
    super().__init__(parent)
    self._keys = tuple(keys)

  def __next__(self):
    batch = next(self._parent)
    return {k: np.asarray(batch[k]) for k in self._keys}

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state) -> None:
    self._parent.set_state(state)

  @property
  def failures(self):
    return getattr(self._parent, "failures", None)

  def __str__(self) -> str:
    return f"KeyFilter({', '.join(self._keys)})"
