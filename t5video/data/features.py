"""Cached CLIP features: run a frozen vision tower over a dataset once.

``extract_features`` decodes every record's clip (the eval sampling of a
``SamplingSpec``), runs a jitted CLIP vision tower on the frames and writes the
chosen layers to shards; :class:`FeatureSource` reads them back as a Grain
random-access source keyed like the records, so a recipe trains on features
instead of pixels (``make_loader(FeatureSource(dir), ...)``: its items are
example dicts and go through ``pipeline.PassThrough``).

On-disk format (``out_dir``)::

  index.json                 what was extracted: layers, tokens, spec, model
                             signature, shard size, record ids and paths, and
                             a fingerprint of all of it
  shard-00000/               records [0, shard_size)
    <layer>.npy              one array per layer, [N, T, ...] (see below)
    timestamps.npy           float32 [N, T]
    frame_mask.npy           bool    [N, T]
    valid.npy                bool    [N]   False: the video failed to decode
    meta.json                record ids, paths, failure kinds of this shard
  shard-00001/ ...
  failures.json              every failed video (path, kind), rewritten after
                             each shard

Layer names: ``'pooled'`` (post-LayerNorm class token, ``[N, T, D]``),
``'embeds'`` (projected ``image_embeds``, ``[N, T, P]``; needs a tower with a
projection), or an int ``i`` (``hidden_states[i]``, the output of layer ``i``;
0 is the embeddings), stored as ``layer_<i>`` with ``tokens='cls'`` giving the
class token ``[N, T, D]`` and ``tokens='all'`` every token ``[N, T, L, D]``.
Arrays are ``.npy`` files so that reading is a memory map, not a full load.

Resuming: a shard is written into ``shard-XXXXX.tmp-<pid>/`` and renamed to
``shard-XXXXX/`` when complete (a directory rename is atomic on POSIX), so a
killed run never leaves a half-written shard visible; the next run deletes
stale temporaries, skips the shards that exist and extracts the rest. The
fingerprint in ``index.json`` must match (same records, spec, layers, tokens,
dtype and model signature) or extraction refuses to mix outputs.

Several processes or machines can share the work: process ``k`` of ``K``
extracts shards ``s`` with ``s % K == k`` (``process_index``/``process_count``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from t5video.data import pipeline
from t5video.data.records import VideoRecord

FORMAT_VERSION = 1
Layer = Union[str, int]


def _layer_key(layer: Layer) -> str:
  if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
    return f"layer_{int(layer)}"
  if layer in ("pooled", "embeds"):
    return str(layer)
  raise ValueError(
      f"Unknown feature layer {layer!r}: use 'pooled', 'embeds' or a "
      "hidden-state index (int)")


def _normalise_layers(layers: Sequence[Layer]) -> list[Layer]:
  if isinstance(layers, (str, int)):
    layers = (layers,)
  out = []
  for layer in layers:
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
      layer = int(layer)
    _layer_key(layer)
    out.append(layer)
  if not out:
    raise ValueError("layers must name at least one layer")
  return out


def _shard_name(s: int) -> str:
  return f"shard-{s:05d}"


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _model_signature(module: Any, params: Any) -> dict[str, Any]:
  """What identifies the tower: its config and the shapes/sums of params."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves_with_path(params)
  digest = hashlib.sha256()
  for path, leaf in leaves:
    arr = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str(arr.shape).encode())
    digest.update(np.float64(arr.astype(np.float64).sum()).tobytes())
  config = getattr(module, "config", None)
  return {"module": type(module).__name__,
          "config": repr(config) if config is not None else "",
          "params": digest.hexdigest()[:16]}


def _spec_dict(spec: Any) -> dict[str, Any]:
  return dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else {
      "repr": repr(spec)}


_FN_CACHE: dict[Any, Callable[[Any, Any], dict]] = {}


def make_feature_fn(module: Any, layers: Sequence[Layer], tokens: str,
                    preprocess: Optional[Callable[[Any], Any]] = None,
                    dtype: str = "float32") -> Callable[[Any, Any], dict]:
  """The jitted ``(params, frames uint8 [B, T, H, W, 3]) -> {key: array}``.

  Cached per (module, layers, tokens, preprocess, dtype) when the module is
  hashable (Linen modules with frozen configs are), so calling
  :func:`extract_features` again in one process does not compile again.
  """
  key = (module, tuple(layers), tokens, preprocess, dtype)
  try:
    return _FN_CACHE[key]
  except TypeError:
    key = None
  except KeyError:
    pass
  fn = _make_feature_fn(module, layers, tokens, preprocess, dtype)
  if key is not None:
    _FN_CACHE[key] = fn
  return fn


def _make_feature_fn(module, layers, tokens, preprocess, dtype):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  if tokens not in ("cls", "all"):
    raise ValueError(f"tokens must be 'cls' or 'all', got {tokens!r}")
  if preprocess is None:
    from t5video.models.clip import clip_preprocess  # pylint: disable=g-import-not-at-top
    preprocess = clip_preprocess
  need_hidden = any(isinstance(layer, int) for layer in layers)
  out_dtype = jnp.dtype(dtype)

  def fn(params, frames):
    pixels = preprocess(frames)  # [batch, frames, H, W, 3]
    out = module.apply({"params": params}, pixels,
                       output_hidden_states=need_hidden)
    result = {}
    for layer in layers:
      if layer == "pooled":
        x = out.pooler_output  # [batch, frames, embed]
      elif layer == "embeds":
        if getattr(out, "image_embeds", None) is None:
          raise ValueError("layer 'embeds' needs a tower with a projection")
        x = out.image_embeds  # [batch, frames, proj]
      else:
        hidden = out.hidden_states
        if not -len(hidden) <= layer < len(hidden):
          raise ValueError(
              f"layer {layer} out of range: the tower has {len(hidden)} "
              "hidden states (embeddings + layers)")
        x = hidden[layer]  # [batch, frames, len, embed]
        if tokens == "cls":
          x = x[:, :, 0, :]  # [batch, frames, embed]
      result[_layer_key(layer)] = x.astype(out_dtype)
    return result

  return jax.jit(fn)


def _fingerprint(meta: Mapping[str, Any]) -> str:
  text = json.dumps(meta, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def extract_features(
    records: Sequence[VideoRecord],
    module: Any,
    params: Any,
    *,
    spec: Any,
    out_dir: str,
    layers: Sequence[Layer] = ("pooled",),
    tokens: str = "cls",
    batch_size: int = 8,
    shard_size: int = 256,
    dtype: str = "float32",
    preprocess: Optional[Callable[[Any], Any]] = None,
    worker_count: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    max_failure_ratio: Optional[float] = None,
    max_shards: Optional[int] = None,
) -> dict[str, Any]:
  """Extracts features of every record into shards under ``out_dir``.

  Args:
    records: the dataset (its order defines the feature indices).
    module: a Flax CLIP vision tower, called as ``module.apply({'params':
      params}, pixel_values [B, T, H, W, 3], output_hidden_states=...)`` and
      returning ``pooler_output``, ``hidden_states``, ``image_embeds`` (e.g.
      ``t5video.models.clip.CLIPVisionModel``).
    params: its parameters (frozen: never updated here).
    spec: the ``SamplingSpec``; decoding uses its deterministic eval version.
      Mode 'fps' needs ``max_frames`` (features have a fixed ``T``).
    out_dir: output folder (see the module docstring for the layout).
    layers: 'pooled', 'embeds' and/or hidden-state indices.
    tokens: 'cls' (class token) or 'all' (every token) for hidden states.
    batch_size: clips per forward pass.
    shard_size: clips per shard.
    dtype: stored dtype ('float32', 'float16', 'bfloat16' is stored as
      float32 since numpy has no bfloat16 ``.npy``).
    preprocess: uint8 frames -> model pixels (default ``clip_preprocess``).
    worker_count: Grain worker processes for decoding.
    process_index, process_count: split the shards between processes.
    max_failure_ratio: raise when more than this fraction of the videos of the
      run fail to decode.
    max_shards: stop after writing this many new shards (time-boxed jobs; the
      next call resumes).

  Returns:
    A summary: ``{'num_records', 'num_shards', 'written', 'skipped',
    'failures': [(path, kind), ...], 'complete', 'seconds'}``.
  """
  records = list(records)
  if not records:
    raise ValueError("extract_features: no records")
  layers = _normalise_layers(layers)
  if getattr(spec, "mode", "uniform") == "fps" and not getattr(
      spec, "max_frames", None):
    raise ValueError("extract_features: spec mode 'fps' needs max_frames so "
                     "that every clip has the same number of frames")
  if dtype == "bfloat16":
    dtype = "float32"
  if shard_size <= 0 or batch_size <= 0:
    raise ValueError("shard_size and batch_size must be positive")
  os.makedirs(out_dir, exist_ok=True)
  num_shards = -(-len(records) // shard_size)
  index = {
      "format_version": FORMAT_VERSION,
      "num_records": len(records),
      "shard_size": shard_size,
      "num_shards": num_shards,
      "shards": [_shard_name(s) for s in range(num_shards)],
      "layers": [_layer_key(layer) for layer in layers],
      "tokens": tokens,
      "dtype": dtype,
      "spec": _spec_dict(pipeline._spec_for_eval(spec)),  # pylint: disable=protected-access
      "model": _model_signature(module, params),
      "video_ids": [r.video_id for r in records],
      "paths": [r.path for r in records],
  }
  index["fingerprint"] = _fingerprint(index)
  index_path = os.path.join(out_dir, "index.json")
  if os.path.exists(index_path):
    with open(index_path) as f:
      old = json.load(f)
    if old.get("fingerprint") != index["fingerprint"]:
      differing = sorted(k for k in index if k != "fingerprint"
                         and old.get(k) != index[k])
      raise ValueError(
          f"{index_path} was written for a different extraction (differs in "
          f"{differing}); use another out_dir or delete it")
  else:
    _write_json(index_path, index)

  # Stale temporaries of a killed run.
  for name in os.listdir(out_dir):
    if name.startswith("shard-") and ".tmp-" in name:
      shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)

  fn = make_feature_fn(module, layers, tokens, preprocess, dtype)
  transform = pipeline.VideoDecodeTransform(spec, train=False, seed=0)
  t0 = time.time()
  written, skipped = 0, 0
  written_shards = []
  for s in range(num_shards):
    if s % process_count != process_index:
      continue
    final = os.path.join(out_dir, _shard_name(s))
    if os.path.isdir(final):
      skipped += 1
      continue
    if max_shards is not None and written >= max_shards:
      break
    lo, hi = s * shard_size, min((s + 1) * shard_size, len(records))
    _extract_shard(records[lo:hi], lo, fn, params, transform, batch_size,
                   worker_count, final, max_failure_ratio)
    written += 1
    written_shards.append(final)
    logging.info("Features: wrote %s (%d clips) in %.1fs", final, hi - lo,
                 time.time() - t0)
    _write_failures(out_dir)
  failures = _write_failures(out_dir)
  complete = all(os.path.isdir(os.path.join(out_dir, _shard_name(s)))
                 for s in range(num_shards))
  seconds = time.time() - t0
  summary = {"num_records": len(records), "num_shards": num_shards,
             "written": written, "skipped": skipped,
             "failures": failures, "complete": complete,
             "seconds": seconds, **_throughput(written_shards, seconds)}
  if failures:
    logging.warning("Features: %d videos failed to decode; first: %s",
                    len(failures), failures[:5])
  done = sum(1 for s in range(num_shards) if os.path.isdir(
      os.path.join(out_dir, _shard_name(s))))
  if max_failure_ratio is not None and complete:
    ratio = len(failures) / len(records)
    if ratio > max_failure_ratio:
      raise RuntimeError(
          f"{len(failures)} of {len(records)} videos ({ratio:.1%}) failed to "
          f"decode, more than max_failure_ratio={max_failure_ratio}; first "
          f"paths: {[p for p, _ in failures[:10]]}")
  logging.info("Features: %d of %d shards done in %s", done, num_shards,
               out_dir)
  return summary


def _throughput(shards: Sequence[str], seconds: float) -> dict:
  """Videos and frames per second of the shards written by this call (decode + forward + write)."""
  videos = frames = 0
  for d in shards:
    mask = np.load(os.path.join(d, "frame_mask.npy"))                     # [count, T]
    videos += int(mask.shape[0])
    frames += int(mask.sum())
  rate = 1.0 / max(seconds, 1e-9)
  return {"videos_per_s": round(videos * rate, 3), "frames_per_s": round(frames * rate, 3)}


def _extract_shard(records: Sequence[VideoRecord], offset: int, fn, params,
                   transform, batch_size: int, worker_count: int, final: str,
                   max_failure_ratio: Optional[float]) -> None:
  """Decodes, encodes and atomically writes one shard."""
  loader = pipeline.make_loader(
      records, transform=transform, batch_size=batch_size, seed=0,
      shuffle=False, num_epochs=1, drop_remainder=False, pad_to_batch=True,
      shard_index=0, shard_count=1, worker_count=worker_count,
      max_failure_ratio=max_failure_ratio)
  n = len(records)
  arrays: dict[str, np.ndarray] = {}
  timestamps = frame_mask = None
  valid = np.zeros((n,), bool)
  failure = [""] * n
  filled = np.zeros((n,), bool)
  try:
    for batch in loader:
      out = fn(params, batch["frames"])
      out = {k: np.asarray(v) for k, v in out.items()}
      for j, i in enumerate(batch["index"]):
        if batch["batch_padding"][j] or i < 0:
          continue
        for k, v in out.items():
          if k not in arrays:
            arrays[k] = np.zeros((n,) + v.shape[1:], v.dtype)
          arrays[k][i] = v[j] if batch["valid"][j] else 0
        if timestamps is None:
          timestamps = np.zeros((n,) + batch["timestamps"].shape[1:],
                                np.float32)
          frame_mask = np.zeros((n,) + batch["frame_mask"].shape[1:], bool)
        timestamps[i] = batch["timestamps"][j]
        frame_mask[i] = batch["frame_mask"][j]
        valid[i] = batch["valid"][j]
        failure[i] = batch["failure"][j]
        filled[i] = True
  finally:
    loader.close()
  if not filled.all():
    raise RuntimeError(f"internal: shard {final} missed clips "
                       f"{np.flatnonzero(~filled)[:10].tolist()}")
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for k, v in arrays.items():
    np.save(os.path.join(tmp, f"{k}.npy"), v)
  np.save(os.path.join(tmp, "timestamps.npy"), timestamps)
  np.save(os.path.join(tmp, "frame_mask.npy"), frame_mask)
  np.save(os.path.join(tmp, "valid.npy"), valid)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"offset": offset, "count": n,
               "video_ids": [r.video_id for r in records],
               "paths": [r.path for r in records], "failure": failure}, f)
  os.rename(tmp, final)


def _write_failures(out_dir: str) -> list[tuple[str, str]]:
  failures = []
  for name in sorted(os.listdir(out_dir)):
    if not name.startswith("shard-") or ".tmp-" in name:
      continue
    with open(os.path.join(out_dir, name, "meta.json")) as f:
      meta = json.load(f)
    failures += [(p, k) for p, k in zip(meta["paths"], meta["failure"]) if k]
  _write_json(os.path.join(out_dir, "failures.json"),
              [{"path": p, "kind": k} for p, k in failures])
  return failures


_OPEN_LOCK = threading.Lock()


class FeatureSource:
  """Reads extracted features as a Grain random-access source.

  Item ``i`` corresponds to record ``i`` of the extraction::

    {'<layer>': array, ..., 'timestamps': float32 [T], 'frame_mask': bool [T],
     'valid': bool, 'failure': str, 'path': str, 'video_id': str,
     + with ``records``: 'label', 'captions', 'tags', 'subtitle', 'metadata'}

  Args:
    out_dir: a folder written by :func:`extract_features` (complete).
    records: optionally the same records, to attach their annotations (their
      video ids and order must equal the extraction's).
    layers: the layer keys to return (default: all extracted).
  """

  def __init__(self, out_dir: str,
               records: Optional[Sequence[VideoRecord]] = None,
               layers: Optional[Sequence[Layer]] = None):
    self.out_dir = out_dir
    index_path = os.path.join(out_dir, "index.json")
    if not os.path.exists(index_path):
      raise FileNotFoundError(
          f"{index_path} not found: run extract_features into {out_dir}")
    with open(index_path) as f:
      self.index = json.load(f)
    missing = [s for s in self.index["shards"]
               if not os.path.isdir(os.path.join(out_dir, s))]
    if missing:
      raise ValueError(
          f"{out_dir}: extraction incomplete, {len(missing)} of "
          f"{len(self.index['shards'])} shards missing (first: {missing[:3]});"
          " run extract_features again to resume")
    self.layers = ([_layer_key(layer) for layer in _normalise_layers(layers)]
                   if layers is not None else list(self.index["layers"]))
    for k in self.layers:
      if k not in self.index["layers"]:
        raise ValueError(f"{out_dir}: layer {k!r} was not extracted "
                         f"(have {self.index['layers']})")
    self.video_ids: list[str] = list(self.index["video_ids"])
    self._by_id = {v: i for i, v in enumerate(self.video_ids)}
    self.records = None
    if records is not None:
      records = list(records)
      ids = [r.video_id for r in records]
      if ids != self.video_ids:
        bad = next((i for i, (a, b) in enumerate(zip(ids, self.video_ids))
                    if a != b), min(len(ids), len(self.video_ids)))
        raise ValueError(
            f"{out_dir}: records do not match the extraction at position "
            f"{bad} ({len(ids)} records vs {len(self.video_ids)} extracted)")
      self.records = records
    self._shards: dict[int, dict[str, Any]] = {}

  def __len__(self) -> int:
    return int(self.index["num_records"])

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_shards"] = {}  # Memory maps are reopened in each worker process.
    return d

  def _shard(self, s: int) -> dict[str, Any]:
    # One thread opens a shard at a time: np.load parses .npy headers with
    # ast.literal_eval, and concurrent compile() in Grain's read threads raises
    # "SystemError: AST constructor recursion depth mismatch" on CPython 3.11.7.
    with _OPEN_LOCK:
      if s not in self._shards:
        d = os.path.join(self.out_dir, self.index["shards"][s])
        shard = {k: np.load(os.path.join(d, f"{k}.npy"), mmap_mode="r")
                 for k in self.layers + ["timestamps", "frame_mask", "valid"]}
        with open(os.path.join(d, "meta.json")) as f:
          shard["meta"] = json.load(f)
        self._shards[s] = shard
      return self._shards[s]

  def lookup(self, video_id: str) -> int:
    """The index of ``video_id``."""
    if video_id not in self._by_id:
      raise KeyError(f"{video_id!r} is not in the features at {self.out_dir}")
    return self._by_id[video_id]

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"feature index {i} out of range [0, {len(self)})")
    s, j = divmod(i, int(self.index["shard_size"]))
    shard = self._shard(s)
    meta = shard["meta"]
    item = {k: np.array(shard[k][j]) for k in self.layers}
    item["timestamps"] = np.array(shard["timestamps"][j])
    item["frame_mask"] = np.array(shard["frame_mask"][j])
    item["valid"] = np.bool_(shard["valid"][j])
    item["failure"] = meta["failure"][j]
    item["path"] = meta["paths"][j]
    item["video_id"] = meta["video_ids"][j]
    if self.records is not None:
      r = self.records[i]
      item["label"] = r.label or ""
      item["captions"] = list(r.captions)
      item["tags"] = list(r.tags)
      item["subtitle"] = r.subtitle
      item["metadata"] = dict(r.metadata)
    return item

  def __repr__(self) -> str:
    return (f"FeatureSource({self.out_dir!r}, num_records={len(self)}, "
            f"layers={self.layers})")


def main(argv: Optional[Sequence[str]] = None, *,
         resolve_clip: Callable[[str], str] = lambda spec: spec) -> int:
  """``t5video extract-features``: features of a dataset layout on disk.

  Arguments: ``--layout`` (msrvtt | vatex | kinetics | qvhighlights | generic),
  ``--root``, ``--split``, ``--out``, ``--clip`` (a Hugging Face CLIP
  directory with config.json and weights; ``t5video extract-features`` also
  takes ``standins:CONFIG`` for the project's stand-in CLIP), ``--layers``
  (comma separated: pooled, embeds or hidden-state indices), ``--tokens``,
  ``--num-frames`` (evenly spaced frames per video) or ``--fps`` (one frame
  per ``1 / fps`` seconds, e.g. 0.5 for R2-Tuning's 2-second clips, at most
  ``--max-frames``), ``--size``, ``--batch-size``, ``--shard-size``,
  ``--dtype``, ``--workers``, ``--max-failure-ratio``. In a multi-host job
  each process extracts its share of the shards. The last line printed is a
  JSON summary with the throughput (``videos_per_s``, ``frames_per_s``).
  ``resolve_clip`` maps ``--clip`` to a directory (the command line passes the
  stand-ins' resolver).
  """
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
      prog="t5video extract-features",
      description="Run a frozen CLIP vision tower over a dataset once.")
  parser.add_argument("--layout", required=True)
  parser.add_argument("--root", required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--out", required=True)
  parser.add_argument("--clip", required=True,
                      help="Hugging Face CLIP checkpoint directory")
  parser.add_argument("--layers", default="pooled")
  parser.add_argument("--tokens", default="cls", choices=("cls", "all"))
  parser.add_argument("--num-frames", type=int, default=8,
                      help="evenly spaced frames per video (ignored with --fps)")
  parser.add_argument("--fps", type=float, default=0.0,
                      help="one frame per 1/FPS seconds instead (0.5: 2-second clips)")
  parser.add_argument("--max-frames", type=int, default=75,
                      help="with --fps: at most this many frames per video (longer ones are "
                           "subsampled evenly; the timestamps say which frames were taken)")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--shard-size", type=int, default=256)
  parser.add_argument("--dtype", default="float16")
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--max-failure-ratio", type=float, default=None)
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top

  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  from t5video.data import layouts  # pylint: disable=g-import-not-at-top

  if args.fps < 0 or (args.fps and args.max_frames < 1):
    raise ValueError(f"--fps must be > 0 with --max-frames >= 1, got {args.fps} and {args.max_frames}")
  records = layouts.read_dataset(args.layout, args.root, args.split)
  module, params = _load_vision_tower(resolve_clip(args.clip))
  if args.fps:
    spec = decode.SamplingSpec(mode="fps", fps=args.fps, max_frames=args.max_frames, size=args.size)
  else:
    spec = decode.SamplingSpec(num_frames=args.num_frames, size=args.size)
  summary = extract_features(
      records, module, params, spec=spec, out_dir=args.out,
      layers=[int(x) if x.lstrip("-").isdigit() else x
              for x in args.layers.split(",")],
      tokens=args.tokens, batch_size=args.batch_size,
      shard_size=args.shard_size, dtype=args.dtype,
      worker_count=args.workers, max_failure_ratio=args.max_failure_ratio,
      process_index=jax.process_index(), process_count=jax.process_count())
  print(json.dumps({k: v for k, v in summary.items() if k != "failures"}
                   | {"failed": len(summary["failures"])}))
  return 0


def _load_vision_tower(directory: str):
  """(module, params) of the vision tower of an HF CLIP checkpoint folder.

  Accepts ``CLIPVisionModel(WithProjection)`` and full ``CLIPModel``
  checkpoints (the vision tower and its projection are taken out).
  """
  from t5video.models import convert_clip  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  config = hf.read_hf_config(directory)
  state = hf.read_state_dict(directory)
  component = "vision" if config.get("model_type") == "clip" else None
  return convert_clip.clip_from_hf(state, config, component=component)
