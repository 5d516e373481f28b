"""R2-Tuning's data: queries of a split, the frozen CLIP, cached features and the example transform.

Queries come from QVHighlights JSONL lines (``highlight_{split}_release.jsonl`` under
``data.root``; the synthetic default renders that layout first,
:mod:`t5video.data.synthetic_grounding`). Each line is checked by
:func:`t5video.data.layouts.read_qvhighlights` (a malformed one raises ``AnnotationError``
naming the file and the line) and kept as it is: it is also the ground truth the metrics
of :mod:`t5video.evaluate.grounding` read.

Features are cached once per CLIP and split under ``data.feature_dir``::

  video-<key>/     t5video.data.features layout over the split's distinct videos: one file per
                   CLIP layer, layer_<i>.npy [videos, max_clips, tokens, width] (float16), with
                   frame_mask.npy [videos, max_clips] (the video's real clips), timestamps.npy
  query-<key>/     features.npy [queries, K, text_len, width] (the text tower's residual stream
                   at the last K layers, before ln_final), mask.npy [queries, text_len],
                   qids.json
  blank-<key>.npy  [K, tokens, width]: the CLIP features of a mid-grey frame (the blank video
                   of the text-only control)

``<key>`` hashes what the features depend on (the CLIP's weights, the sampling, the layers,
the split's videos or queries), so runs that share a CLIP share a folder and a changed
setting never mixes with an old extraction. Extraction is resumable shard by shard.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5video.data import layouts
from t5video.data.records import VideoRecord
from t5video.models import r2tuning_losses as losses
from t5video.recipes.r2tuning.config import as_dict
from t5video.train import paths

ASSETS = "r2tuning"          # <workdir>/r2tuning/: the random CLIP, the SentencePiece model
CONSTANT_PIXEL = 128         # the blank video's grey (t5video.evaluate.controls.CONSTANT_PIXEL)


# =============================================================================
# Queries
# =============================================================================

@dataclasses.dataclass
class QuerySet:
  """The queries of one split.

  Attributes:
    split: the split's name.
    rows: the JSONL lines (``qid``, ``query``, ``vid``, ``duration``, ``relevant_windows``,
      ``relevant_clip_ids``, ``saliency_scores``), as the grounding metrics read them.
    videos: the split's distinct videos (``video_id`` = ``vid``), in order of first use.
    video_index: ``[queries]`` index of each query's video in ``videos``.
  """
  split: str
  rows: list[dict]
  videos: list[VideoRecord]
  video_index: np.ndarray

  def __len__(self) -> int:
    return len(self.rows)


def jsonl_path(data: ml_collections.ConfigDict, split: str) -> str:
  kwargs = as_dict(data.get("layout_kwargs"))
  return kwargs.get("jsonl_path") or os.path.join(
      data.root, f"highlight_{layouts.normalize_split(split)}_release.jsonl")


def render_synthetic(data: ml_collections.ConfigDict) -> None:
  """Renders the synthetic grounding set into ``data.root`` when ``data.synthetic.num_videos``."""
  s = as_dict(data.get("synthetic"))
  if not s.get("num_videos"):
    return
  from t5video.data import synthetic_grounding  # pylint: disable=g-import-not-at-top
  synthetic_grounding.render_grounding_dataset(data.root, **s)


def read_queries(data: ml_collections.ConfigDict, split: str, max_queries: int = 0) -> QuerySet:
  """The queries of ``split``; every line is checked (errors name the file and the line)."""
  if not data.root:
    raise ValueError("config.data.root is empty: pass --config.data.root=DIR (a folder with "
                     "highlight_{train,val,test}_release.jsonl and videos/)")
  path = jsonl_path(data, split)
  kwargs = as_dict(data.get("layout_kwargs"))
  records = layouts.read_dataset("qvhighlights", data.root, split, **kwargs)
  rows, numbers = [], []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if line.strip():
        rows.append(json.loads(line))
        numbers.append(lineno)
  if not rows:
    raise ValueError(f"{path}: no queries in split {split!r}")
  seen = set()
  for row, lineno in zip(rows, numbers):
    where = f"{path}:{lineno} (qid {row['qid']!r})"
    if row["qid"] in seen:
      raise layouts.AnnotationError(f"{where}: qid appears twice")
    seen.add(row["qid"])
    if "clip_scores" in row:
      check_clip_scores(row, where)
    clips = int(row["duration"] / 2.0)   # the metrics' clip count (2-second clips)
    bad = [c for c in row.get("relevant_clip_ids") or () if c >= clips]
    if bad:
      raise layouts.AnnotationError(f"{where}: relevant_clip_ids {bad} lie beyond the "
                                    f"{clips} 2-second clips of duration {row['duration']}")
  if data.get("domain"):
    keep = [i for i, r in enumerate(rows) if r.get("domain") == data.domain]
    if not keep:
      domains = sorted({str(r.get("domain")) for r in rows if r.get("domain")})
      raise ValueError(f"{path}: no line of data.domain={data.domain!r} (domains: {domains})")
    rows, records = [rows[i] for i in keep], [records[i] for i in keep]
  if max_queries:
    rows, records = rows[:max_queries], records[:max_queries]
  videos: dict[str, int] = {}
  unique: list[VideoRecord] = []
  index = np.zeros(len(rows), np.int64)
  for i, (row, rec) in enumerate(zip(rows, records)):
    vid = str(row["vid"])
    if vid not in videos:
      videos[vid] = len(unique)
      # videos longer than data.max_clips clips are cut there (end is clipped to the video)
      unique.append(VideoRecord(video_id=vid, path=rec.path, split=rec.split,
                                duration=rec.duration, start=0.0,
                                end=int(data.max_clips) / float(data.fps)))
    index[i] = videos[vid]
  return QuerySet(split=split, rows=rows, videos=unique, video_index=index)


def check_clip_scores(row: dict, where: str) -> None:
  """A highlight-detection line's ``clip_seconds`` > 0, ``clip_scores`` (a non-empty list of
  equal-length score lists) and ``score_range`` ``[low, high]``, low < high."""
  scores, period, span = row.get("clip_scores"), row.get("clip_seconds"), row.get("score_range")
  if not isinstance(period, (int, float)) or not period > 0:
    raise layouts.AnnotationError(f"{where}: clip_seconds must be a number > 0, got {period!r}")
  if (not isinstance(scores, list) or not scores or not all(isinstance(x, list) and x for x in scores)
      or len({len(x) for x in scores}) != 1):
    raise layouts.AnnotationError(f"{where}: clip_scores must be a list of equal-length lists "
                                  "of annotator scores, one per clip")
  if not (isinstance(span, list) and len(span) == 2 and span[0] < span[1]):
    raise layouts.AnnotationError(f"{where}: score_range must be [low, high], got {span!r}")


def highlight_targets(row: dict, num_clips: int, fps: float) -> np.ndarray:
  """``[num_clips]`` saliency targets in [0, 1] of a highlight-detection line: each sampled clip
  (centre ``(i + 0.5) / fps`` s) takes the mean annotator score of the annotated clip it falls
  in, scaled by ``score_range`` (TVSum: (mean - 1) / 4, the reference's (sum - 20) / 80;
  YouTube Highlights: (match + 1) / 2)."""
  low, high = (float(x) for x in row["score_range"])
  scores = (np.asarray(row["clip_scores"], np.float64).mean(axis=1) - low) / (high - low)
  centres = (np.arange(num_clips) + 0.5) / fps
  idx = np.minimum((centres / float(row["clip_seconds"])).astype(np.int64), len(scores) - 1)
  return scores[idx].astype(np.float32)


def annotated_clip_scores(row: dict, predicted: Sequence[float], fps: float) -> np.ndarray:
  """The predicted saliency of each annotated clip of a highlight-detection line: the mean over
  the sampled clips whose centre falls in it, or the sampled clip nearest its centre when none
  does (annotated clips shorter than the sampling period). Missing predictions count as 0."""
  period, n = float(row["clip_seconds"]), len(row["clip_scores"])
  pred = np.asarray(predicted, np.float64)
  if len(pred) == 0:
    return np.zeros(n)
  centres = (np.arange(len(pred)) + 0.5) / fps
  owner = (centres / period).astype(np.int64)                               # [sampled]
  total = np.bincount(owner[owner < n], weights=pred[owner < n], minlength=n)
  count = np.bincount(owner[owner < n], minlength=n)
  near = ((np.arange(n) + 0.5) * period * fps).astype(np.int64)             # [annotated]
  nearest = pred[np.minimum(near, len(pred) - 1)]
  beyond = near >= len(pred)                                                # past the predictions
  return np.where(count > 0, total / np.maximum(count, 1), np.where(beyond, 0.0, nearest))


# =============================================================================
# The frozen CLIP
# =============================================================================

def random_clip_configs(config: ml_collections.ConfigDict, tokenizer) -> tuple[Any, Any]:
  """(vision, text) configs of the random CLIP: the 'tiny' variant with ``model.clip`` overrides
  and the tokenizer's vocabulary and special ids."""
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  over = as_dict(config.model.clip)
  tuplify = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in as_dict(d).items()}  # noqa: E731
  vision = clip_lib.CLIPVisionConfig.from_variant("tiny", **tuplify(over.get("vision")))
  text = clip_lib.CLIPTextConfig.from_variant(
      "tiny", **{**tuplify(over.get("text")), **tokenizer.text_overrides(),
                 "max_position_embeddings": max(int(config.model.text_len),
                                                int(as_dict(over.get("text")).get(
                                                    "max_position_embeddings", 0)))})
  return vision, text


def write_random_clip(config: ml_collections.ConfigDict, tokenizer, out_dir: str) -> str:
  """A CLIP of random weights (numpy, seed ``model.clip_seed``) as an HF directory.

  Kernels are drawn N(0, 1 / fan_in), embeddings N(0, 0.02²), norms 1 and biases 0: nothing is
  compiled (a jitted ``init`` of even a tiny CLIP takes tens of seconds of CPU here).
  """
  import flax  # pylint: disable=g-import-not-at-top
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from t5video.models import convert_clip  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  vision, text = random_clip_configs(config, tokenizer)
  module = clip_lib.CLIPModel(vision, text, projection_dim=vision.projection_dim)
  rng = np.random.default_rng(int(config.model.clip_seed))
  flat = {}
  for path, leaf in sorted(convert_clip.abstract_params(module).items()):
    name = path.rsplit("/", 1)[-1]
    if name == "logit_scale":
      value = np.full(leaf.shape, module.logit_scale_init_value)
    elif name == "bias":
      value = np.zeros(leaf.shape)
    elif name == "scale":
      value = np.ones(leaf.shape)
    elif name == "kernel":
      value = rng.normal(0.0, 1.0 / math.sqrt(max(int(np.prod(leaf.shape[:-1])), 1)), leaf.shape)
    else:   # token / position / class embeddings
      value = rng.normal(0.0, 0.02, leaf.shape)
    flat[tuple(path.split("/"))] = value.astype(leaf.dtype)
  return hf.export_hf(module, flax.traverse_util.unflatten_dict(flat), out_dir)


def resolve_clip(spec: str, log=print) -> str:
  """``model.clip_init`` as a directory (``'standins:CONFIG.py[:ARG]'``: the stand-in CLIP,
  :func:`t5video.recipes.standins.resolve`)."""
  from t5video.recipes import standins  # pylint: disable=g-import-not-at-top
  return standins.resolve(spec, "clip", log=log)


@dataclasses.dataclass
class ClipTowers:
  """The frozen CLIP's two towers and the layers the recipe reads."""
  vision: Any
  vision_params: Any
  text: Any
  text_params: Any
  vision_layers: tuple[int, ...]   # hidden-state indices (0 = embeddings)
  text_layers: tuple[int, ...]
  signature: str                   # a hash of both towers' weights and configs

  @property
  def video_dim(self) -> int:
    return int(self.vision.config.hidden_size)

  @property
  def query_dim(self) -> int:
    return int(self.text.config.hidden_size)

  def num_tokens(self, size: int) -> int:
    """Tokens per frame (CLS + patches) at input ``size``."""
    from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
    ph, pw = clip_lib._pair(self.vision.config.patch_size, "patch_size")  # pylint: disable=protected-access
    return (size // ph) * (size // pw) + 1


def read_clip_config(clip_dir: str) -> dict:
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  return hf.read_hf_config(paths.local_copy(clip_dir))


def clip_dims(clip_dir: str, num_layers: int, size: int, text_len: int) -> tuple[int, int, int]:
  """``(video width, tokens per frame, query width)`` from a CLIP directory's config.json."""
  cfg = read_clip_config(clip_dir)
  vision, text = cfg.get("vision_config", cfg), cfg.get("text_config", cfg)
  for name, tower in (("vision", vision), ("text", text)):
    if int(tower["num_hidden_layers"]) < num_layers:
      raise ValueError(f"{clip_dir}: the {name} tower has {tower['num_hidden_layers']} layers; "
                       f"model.num_layers={num_layers} asks for more")
  if int(text.get("max_position_embeddings", 77)) < text_len:
    raise ValueError(f"model.text_len={text_len} exceeds the text tower's "
                     f"{text.get('max_position_embeddings', 77)} positions ({clip_dir})")
  patch = vision.get("patch_size", 32)
  ph, pw = (patch, patch) if isinstance(patch, int) else patch
  return int(vision["hidden_size"]), (size // ph) * (size // pw) + 1, int(text["hidden_size"])


def load_clip(clip_dir: str, num_layers: int) -> ClipTowers:
  """Both towers of an HF CLIP directory, frozen, with the last ``num_layers`` layers named."""
  from t5video.data import features  # pylint: disable=g-import-not-at-top
  from t5video.models import convert_clip  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  local = paths.local_copy(clip_dir)
  config = hf.read_hf_config(local)
  if config.get("model_type") != "clip":
    raise ValueError(f"{clip_dir}: model.clip_init needs a full CLIP checkpoint (both towers, "
                     f"model_type 'clip'), got model_type {config.get('model_type')!r}")
  state = hf.read_state_dict(local)
  vision, vision_params = convert_clip.clip_from_hf(state, config, component="vision")
  text, text_params = convert_clip.clip_from_hf(state, config, component="text")
  nv, nt = vision.config.num_hidden_layers, text.config.num_hidden_layers
  if min(nv, nt) < num_layers:
    raise ValueError(f"{clip_dir}: towers of {nv} / {nt} layers; model.num_layers={num_layers}")
  signature = json.dumps([features._model_signature(vision, vision_params),  # pylint: disable=protected-access
                          features._model_signature(text, text_params)], sort_keys=True)  # pylint: disable=protected-access
  return ClipTowers(vision, vision_params, text, text_params,
                    tuple(range(nv - num_layers + 1, nv + 1)),
                    tuple(range(nt - num_layers + 1, nt + 1)),
                    hashlib.sha256(signature.encode()).hexdigest()[:16])


def sampling_spec(data: ml_collections.ConfigDict, max_frames: Optional[int] = None):
  """One centre frame per ``1 / data.fps`` seconds, centre-cropped to ``data.size``."""
  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  return decode.SamplingSpec(mode="fps", fps=float(data.fps),
                             max_frames=int(max_frames or data.max_clips), size=int(data.size),
                             resize_short=max(int(data.resize_short), int(data.size)))


def _key(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _text_fn(module, layers: tuple[int, ...]):
  def fn(params, ids, mask):
    out = module.apply({"params": params}, ids, mask, output_hidden_states=True)
    # K x [b, L, D] -> [b, K, L, D]
    return jnp.stack([out.hidden_states[i] for i in layers], axis=1)
  return jax.jit(fn)


def text_features(towers: ClipTowers, tokenizer, texts: Sequence[str], text_len: int,
                  dtype: str = "float32", batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """``(features [N, K, text_len, width], mask [N, text_len])`` of ``texts``, in chunks of
  ``batch`` (the last one padded: one compiled shape for every split and query)."""
  ids, mask = tokenizer(list(texts), text_len)
  fn = _text_fn(towers.text, towers.text_layers)
  chunks = []
  for s in range(0, len(ids), batch):
    b_ids, b_mask = ids[s:s + batch], mask[s:s + batch]
    pad = ((0, batch - len(b_ids)), (0, 0))
    out = fn(towers.text_params, np.pad(b_ids, pad), np.pad(b_mask, pad, constant_values=1))
    chunks.append(np.asarray(out[:len(b_ids)], dtype=dtype))
  return np.concatenate(chunks), mask


def video_feature_fn(towers: ClipTowers, dtype: str = "float32"):
  """The jitted ``(params, frames uint8 [B, T, H, W, 3]) -> {'layer_<i>': [B, T, tokens, D]}``."""
  from t5video.data import features  # pylint: disable=g-import-not-at-top
  return features.make_feature_fn(towers.vision, list(towers.vision_layers), "all", dtype=dtype)


def stack_layers(item: dict, layers: Sequence[int]) -> np.ndarray:
  """``{'layer_<i>': [..., T, p, D]}`` -> ``[..., K, T, p, D]`` in layer order."""
  return np.stack([np.asarray(item[f"layer_{i}"]) for i in layers], axis=-4)


def frame_features(towers: ClipTowers, frames: np.ndarray, shape: tuple[int, int],
                   dtype: str = "float32") -> np.ndarray:
  """``[K, T, tokens, D]`` of one video's frames ``uint8 [T, H, W, 3]``, run as a batch of
  ``shape = (videos, clips)`` (the extraction's: one compiled shape) when it fits."""
  t = len(frames)
  b, n = shape if t <= shape[1] else (1, t)
  batch = np.zeros((b, n) + frames.shape[1:], np.uint8)
  batch[0, :t] = frames
  out = {k: np.asarray(v) for k, v in video_feature_fn(towers, dtype)(towers.vision_params, batch).items()}
  return stack_layers(out, towers.vision_layers)[0, :, :t]


def blank_features(towers: ClipTowers, data: ml_collections.ConfigDict) -> np.ndarray:
  """The features ``[K, tokens, D]`` of one mid-grey frame (a blank video's every clip)."""
  size = int(data.size)
  frames = np.full((1, size, size, 3), CONSTANT_PIXEL, np.uint8)
  shape = (int(data.extract_batch), int(data.max_clips))
  return frame_features(towers, frames, shape, data.feature_dtype)[:, 0]


@dataclasses.dataclass
class SplitFeatures:
  """Where one split's cached features are."""
  video_dir: str
  query_dir: str
  blank_path: str


def ensure_features(config: ml_collections.ConfigDict, queries: QuerySet, towers: ClipTowers,
                    tokenizer, *, log=print) -> SplitFeatures:
  """Extracts what is missing of the split's features (see the module docstring)."""
  from t5video.data import features  # pylint: disable=g-import-not-at-top
  d, m = config.data, config.model
  root = d.feature_dir
  if not root:
    raise ValueError("data.feature_dir is empty (the run's prepare step sets it)")
  spec = sampling_spec(d)
  video_key = _key(towers.signature, dataclasses.asdict(spec), towers.vision_layers,
                   [(v.video_id, v.path) for v in queries.videos])
  query_key = _key(towers.signature, towers.text_layers, int(m.text_len), d.feature_dtype,
                   _file_digest(tokenizer.path), [r["query"] for r in queries.rows])
  out = SplitFeatures(os.path.join(root, f"video-{video_key}"), os.path.join(root, f"query-{query_key}"),
                      os.path.join(root, f"blank-{_key(towers.signature, int(d.size))}.npy"))
  os.makedirs(root, exist_ok=True)
  if not os.path.isfile(os.path.join(out.video_dir, "DONE")):
    log(f"features: {len(queries.videos)} {queries.split} videos -> {out.video_dir}")
    summary = features.extract_features(
        queries.videos, towers.vision, towers.vision_params, spec=spec, out_dir=out.video_dir,
        layers=list(towers.vision_layers), tokens="all", batch_size=int(d.extract_batch),
        shard_size=256, dtype=d.feature_dtype, worker_count=int(d.extract_workers),
        max_failure_ratio=float(d.max_failure_ratio))
    clips = summary["num_records"] and sum(
        int(np.load(os.path.join(out.video_dir, s, "frame_mask.npy")).sum())
        for s in sorted(os.listdir(out.video_dir)) if s.startswith("shard-") and ".tmp-" not in s)
    log(f"features: {summary['num_records']} videos, {clips} clips in {summary['seconds']:.1f} s "
        f"({clips / max(summary['seconds'], 1e-6):.1f} clips/s), {len(summary['failures'])} failed")
    if summary["complete"]:
      with open(os.path.join(out.video_dir, "DONE"), "w") as f:
        f.write(json.dumps({"clips": int(clips)}))
  if not os.path.isfile(os.path.join(out.query_dir, "qids.json")):
    feats, mask = text_features(towers, tokenizer, [r["query"] for r in queries.rows],
                                int(m.text_len), d.feature_dtype)
    tmp = f"{out.query_dir}.tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    np.save(os.path.join(tmp, "features.npy"), feats)
    np.save(os.path.join(tmp, "mask.npy"), mask)
    with open(os.path.join(tmp, "qids.json"), "w") as f:
      json.dump([r["qid"] for r in queries.rows], f)
    if os.path.exists(out.query_dir):  # an unfinished earlier attempt
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(out.query_dir)
    os.replace(tmp, out.query_dir)
  if not os.path.isfile(out.blank_path):
    tmp = f"{out.blank_path}.tmp-{os.getpid()}.npy"
    np.save(tmp, blank_features(towers, d))
    os.replace(tmp, out.blank_path)
  return out


def _file_digest(path: str) -> str:
  """A hash of a tokenizer file (or of a tokenizer directory's files)."""
  h = hashlib.sha256()
  files = ([path] if os.path.isfile(path) else
           [os.path.join(path, n) for n in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, n)) and n.endswith((".json", ".txt", ".model"))])
  for p in files:
    with open(p, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


# =============================================================================
# Examples
# =============================================================================

class QuerySource:
  """A random-access source of one split's queries with their cached features.

  Item ``i``: ``video [K, T, tokens, D]`` (T = ``data.max_clips``), ``video_mask [T]``,
  ``query [K, L, D]``, ``query_mask [L]``, ``boundaries [G, 2]`` (clips),
  ``boundary_mask [G]``, ``saliency [T]`` (targets in [0, 1]), ``num_clips``, ``qid``
  (index ``i``), ``valid``.

  Args:
    queries: the split's queries.
    feats: where its features are.
    layers: the vision hidden-state indices, in order.
    config: the run config (``data.max_clips``, ``data.max_windows``, ``data.fps``).
    donor: ``[queries]`` video index each query is scored against (default its own; the
      other-video control passes a derangement).
    blank: every clip of every video is the blank frame's features (the text-only control;
      the video's own length is kept).
  """

  def __init__(self, queries: QuerySet, feats: SplitFeatures, layers: Sequence[int],
               config: ml_collections.ConfigDict, *, donor: Optional[np.ndarray] = None,
               blank: bool = False):
    from t5video.data import features  # pylint: disable=g-import-not-at-top
    self.queries = queries
    self.videos = features.FeatureSource(feats.video_dir, layers=list(layers))
    self.layers = tuple(layers)
    self.query_dir = feats.query_dir
    self.blank_path = feats.blank_path
    self.max_clips = int(config.data.max_clips)
    self.max_windows = int(config.data.max_windows)
    self.fps = float(config.data.fps)
    self.video_of = np.asarray(queries.video_index if donor is None else donor)
    self.blank = bool(blank)
    self._q = None
    self._blank = None

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_q"] = None   # memory maps are reopened in each worker
    return d

  def _query_arrays(self):
    if self._q is None:
      self._q = (np.load(os.path.join(self.query_dir, "features.npy"), mmap_mode="r"),
                 np.load(os.path.join(self.query_dir, "mask.npy"), mmap_mode="r"))
    return self._q

  def __len__(self) -> int:
    return len(self.queries)

  def num_clips(self, i: int) -> int:
    """Real clips of query ``i``'s video (its own, not a donor's)."""
    item = self.videos[int(self.queries.video_index[i])]
    return int(np.asarray(item["frame_mask"]).sum())

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    row = self.queries.rows[i]
    item = self.videos[int(self.video_of[i])]
    frame_mask = np.asarray(item["frame_mask"], bool)
    if self.blank:
      own = self.videos[int(self.queries.video_index[i])]
      frame_mask = np.asarray(own["frame_mask"], bool)
      if self._blank is None:
        self._blank = np.load(self.blank_path)                              # [K, p, D]
      blank = self._blank
      video = np.broadcast_to(blank[:, None], (blank.shape[0], len(frame_mask)) + blank.shape[1:])
      video = video * frame_mask[None, :, None, None].astype(blank.dtype)
    else:
      video = stack_layers(item, self.layers)                               # [K, T, p, D]
    n = int(frame_mask.sum())
    feats, mask = self._query_arrays()
    windows = np.asarray(row.get("relevant_windows") or np.zeros((0, 2)), np.float64).reshape(-1, 2)
    g = min(len(windows), self.max_windows)
    boundaries = np.zeros((self.max_windows, 2), np.float32)
    boundary_mask = np.zeros((self.max_windows,), np.float32)
    sal = np.zeros((self.max_clips,), np.float32)
    if n:
      if g:
        boundaries[:g] = losses.prepare_boundaries(windows[:g], n, self.fps)
        boundary_mask[:g] = 1
      if "clip_scores" in row:   # highlight detection: every clip has a score
        sal[:n] = highlight_targets(row, n, self.fps)
      else:
        # QVHighlights' saliency is per 2-second clip; other clip lengths use the windows.
        ids = row.get("relevant_clip_ids") if abs(1 / self.fps - 2.0) < 1e-6 else None
        sal[:n] = losses.clip_saliency(n, boundaries[:g], ids, row.get("saliency_scores") if ids else None)
        if not (sal[:n] > 0).any():
          sal[:n] = losses.clip_saliency(n, boundaries[:g])
    return {"video": np.ascontiguousarray(video), "video_mask": frame_mask.astype(np.int32),
            "query": np.asarray(feats[i]), "query_mask": np.asarray(mask[i], np.int32),
            "boundaries": boundaries, "boundary_mask": boundary_mask, "saliency": sal,
            "num_clips": np.int32(n), "qid": np.int64(i),
            "valid": np.bool_(bool(item["valid"]) and n > 0)}


class TrainExample:
  """Samples the saliency loss's positive clip (seeded by seed, epoch and position) and makes
  invalid or padding examples harmless (one real clip, no window). ``above_median``: the
  positive is a clip above the video's median saliency (highlight detection)."""

  def __init__(self, seed: int, min_clips: int, above_median: bool = False):
    self.seed = seed
    self.min_clips = min_clips
    self.above_median = above_median

  def __call__(self, ex: dict) -> dict:
    ex = dict(ex)
    sal = np.array(ex["saliency"], np.float32)
    if self.above_median and bool(ex["valid"]) and int(ex["num_clips"]) > 0:
      rng = np.random.default_rng([self.seed, int(ex["epoch"]), int(ex["position"]), 11])
      ex["pos_clip"] = np.int32(losses.sample_positive_clip(sal[:int(ex["num_clips"])], rng,
                                                            above_median=True))
      return ex
    if not bool(ex["valid"]) or not (sal > 0).any():
      mask = np.zeros_like(ex["video_mask"])
      mask[:self.min_clips] = 1
      ex["video_mask"] = mask
      ex["boundary_mask"] = np.zeros_like(ex["boundary_mask"])
      sal = np.zeros_like(sal)
      sal[0] = 1.0
      ex["saliency"] = sal
      ex["pos_clip"] = np.int32(0)
      return ex
    rng = np.random.default_rng([self.seed, int(ex["epoch"]), int(ex["position"]), 11])
    ex["pos_clip"] = np.int32(losses.sample_positive_clip(sal, rng))
    return ex


def clip_seconds(config: ml_collections.ConfigDict) -> float:
  return 1.0 / float(config.data.fps)


def num_metric_clips(duration: float) -> int:
  """Clips the highlight metrics score: ``int(duration / 2)`` (QVHighlights' convention)."""
  return int(math.floor(duration / 2.0))
