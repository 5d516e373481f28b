"""ViFi-CLIP at inference: jitted encoders, multi-view decoding, class scores,
restoring a workdir, zero-shot classes for a user's files (``t5video zero-shot``)
and :class:`ConceptScorer` for CaptionT5's CLIP-guided thoughts and re-ranking.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5video.data.records import VideoRecord
from t5video.evaluate import controls
from t5video.models import clip as clip_lib
from t5video.models import vificlip as vifi
from t5video.recipes.vificlip.task import TOKENIZER_DIR, ViFiCLIPTask
from t5video.train import checkpoint as checkpoint_lib
from t5video.train import memory
from t5video.train import paths


EMBED_BATCH = 16  # views embedded per call of the video encoder


def video_embeddings(model, params, frames, frame_mask):
  """uint8 frames ``[B, T, H, W, 3]`` -> L2-normalised video embeddings ``[B, P]`` (pure)."""
  video, _ = model.apply({"params": params}, clip_lib.clip_preprocess(frames), frame_mask,
                         method=vifi.ViFiCLIP.encode_video)
  return vifi.l2_normalize(video)


class Predictor:
  """Embeddings and class scores of a :class:`ViFiCLIPTask`'s model (``task.predictor``)."""

  def __init__(self, task: ViFiCLIPTask):
    self.task = task
    self.model, self.model_config = task.model, task.model_config
    self.tokenizer, self.text_len = task.tokenizer, task.text_len
    self.sampling_spec = task.sampling_spec

  @property
  def config(self):
    return self.task.config

  @functools.cached_property
  def _encode_video_fn(self):
    return memory.FitChecked(jax.jit(functools.partial(video_embeddings, self.model)), self.config,
                             what="evaluation's video encoder")

  @functools.cached_property
  def _encode_text_fn(self):
    def f(params, ids, mask):
      return vifi.l2_normalize(self.model.apply({"params": params}, ids, mask, method=vifi.ViFiCLIP.encode_text))
    return memory.FitChecked(jax.jit(f), self.config, what="evaluation's text encoder")

  @functools.cached_property
  def _scale_fn(self):
    return jax.jit(lambda params: self.model.apply({"params": params}, method=vifi.ViFiCLIP.scale))

  def embed_frames(self, params, frames: np.ndarray, frame_mask: Optional[np.ndarray] = None,
                   batch_size: int = EMBED_BATCH) -> np.ndarray:
    """uint8 ``[N, T, H, W, 3]`` -> normalised video embeddings ``[N, P]`` (in batches)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 5:
      raise ValueError(f"frames must be uint8 [videos, frames, H, W, 3], got {frames.dtype} {frames.shape}")
    if frame_mask is None:
      frame_mask = np.ones(frames.shape[:2], bool)
    out = []
    for i in range(0, len(frames), batch_size):
      chunk, mask = frames[i:i + batch_size], frame_mask[i:i + batch_size]
      n = len(chunk)
      if n < batch_size and len(frames) > batch_size:  # keep one compiled shape
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], np.uint8)])
        mask = np.concatenate([mask, np.ones((batch_size - n,) + mask.shape[1:], bool)])
      out.append(np.asarray(self._encode_video_fn(params, chunk, mask))[:n])
    return np.concatenate(out) if out else np.zeros((0, self.model_config.projection_dim), np.float32)

  def embed_texts(self, params, texts: Sequence[str]) -> np.ndarray:
    """Texts -> normalised text embeddings ``[N, P]``."""
    ids, mask = self.tokenizer(list(texts), self.text_len)
    return np.asarray(self._encode_text_fn(params, ids, mask))

  # ---- evaluation ------------------------------------------------------------

  def decode_views(self, records: Sequence[VideoRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-view frames uint8 ``[N, views, T, S, S, 3]`` and validity ``[N]``.

    Temporal views: ``T * num_clips`` frames are decoded uniformly and view
    ``k`` takes every ``num_clips``-th frame from ``k`` (a shifted uniform
    sampling). Spatial views: ``num_crops`` crops of ``data.size`` along the
    diagonal of the centre square of side ``eval.crop_square`` (1 crop: the centre).
    """
    from t5video.data import decode  # pylint: disable=g-import-not-at-top
    d, e = self.config.data, self.config.eval
    clips, crops = int(e.num_clips), int(e.num_crops)
    size = int(d.size)
    square = int(e.crop_square or size) if crops > 1 else size
    if square < size:
      raise ValueError(f"eval.crop_square={square} must be >= data.size={size}")
    spec = self.sampling_spec(False, num_frames=int(d.num_frames) * clips, size=square)
    t = int(d.num_frames)

    def one(r: VideoRecord):
      try:
        clip = decode.decode_video(r.path, spec, start=r.start, end=r.end)
        return clip.frames, True
      except decode.VideoDecodeError as err:
        print(f"eval: cannot decode {r.path}: {err}", flush=True)
        return np.zeros((t * clips, square, square, 3), np.uint8), False

    with concurrent.futures.ThreadPoolExecutor(max(1, int(d.read_threads))) as pool:
      decoded = list(pool.map(one, records))
    offsets = [(square - size) // 2] if crops == 1 else [
        int(round(i * (square - size) / (crops - 1))) for i in range(crops)]
    out = np.zeros((len(records), clips * crops, t, size, size, 3), np.uint8)
    for n, (frames, _) in enumerate(decoded):
      for k in range(clips):
        view = frames[k::clips][:t]  # [T, square, square, 3]
        for j, o in enumerate(offsets):
          out[n, k * crops + j] = view[:, o:o + size, o:o + size]
    if d.get("constant_pixels"):  # the text-only control: every pixel alike, after decoding
      out[:] = controls.CONSTANT_PIXEL
    return out, np.array([ok for _, ok in decoded], bool)

  def view_embeddings(self, params, views: np.ndarray) -> np.ndarray:
    """Normalised embeddings ``[N, V, P]`` of multi-view frames ``[N, V, T, H, W, 3]``."""
    n, v = views.shape[:2]
    # [N, V, T, H, W, 3] -> [N * V, T, H, W, 3]
    flat = views.reshape((n * v,) + views.shape[2:])
    # [N * V, P] -> [N, V, P]
    return self.embed_frames(params, flat).reshape(n, v, -1)

  def embed_records(self, params, records: Sequence[VideoRecord]) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [N, V, P], decoded ok [N])``, decoding ``eval.chunk`` videos at a time."""
    chunk = max(1, int(self.config.eval.chunk))
    embs, oks = [], []
    for i in range(0, len(records), chunk):
      views, ok = self.decode_views(records[i:i + chunk])
      embs.append(self.view_embeddings(params, views))
      oks.append(ok)
    if not embs:
      return np.zeros((0, 1, self.model_config.projection_dim), np.float32), np.zeros((0,), bool)
    return np.concatenate(embs), np.concatenate(oks)

  def class_scores(self, params, embeddings: np.ndarray, classes: Sequence[str], template: str) -> np.ndarray:
    """Summed per-view softmax scores ``[N, C]`` from view embeddings ``[N, V, P]``."""
    text = self.embed_texts(params, [template.format(c) for c in classes])
    scale = float(self._scale_fn(params))
    # [N, V, P] x [C, P] -> [N, V, C]
    logits = scale * np.einsum("nvp,cp->nvc", embeddings, text)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    return probs.sum(axis=1)

  def classify(self, params, views: np.ndarray, classes: Sequence[str], template: str) -> np.ndarray:
    """Summed per-view softmax scores ``[N, C]`` of videos ``[N, V, T, H, W, 3]``."""
    return self.class_scores(params, self.view_embeddings(params, views), classes, template)


def restore(workdir: str) -> tuple[ViFiCLIPTask, Any]:
  """``(task, params)`` of the latest checkpoint of a ViFi-CLIP workdir (params as numpy)."""
  workdir = paths.normalize(workdir)  # Orbax wants absolute paths
  meta_path = paths.join(workdir, TOKENIZER_DIR, "config.json")
  if not paths.exists(meta_path):
    raise FileNotFoundError(f"{meta_path}: missing; it is written when a ViFi-CLIP run is prepared "
                            "(was the run a ViFi-CLIP run?)")
  meta = json.loads(paths.read_text(meta_path))
  config = ml_collections.ConfigDict(meta["config"])
  task = ViFiCLIPTask(config, tokenizer_path=meta["tokenizer"],
                      classes=(meta["train_classes"], meta["novel_classes"]))
  abstract = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.PRNGKey(0))))
  return task, checkpoint_lib.restore_params(workdir, abstract)


def zero_shot(workdir: str, classes: Sequence[str], videos: Sequence[str],
              template: Optional[str] = None) -> list[dict[str, float]]:
  """Class probabilities of each video file among ``classes``.

  The bare class names go into ``template`` (default: the run's
  ``eval.zero_shot_template``, else its ``model.prompt_template``); each video
  is scored with the run's multi-view setting.
  """
  if not classes:
    raise ValueError("zero_shot: give at least one class name")
  task, params = restore(workdir)
  records = []
  for v in videos:
    if not paths.exists(v):
      raise FileNotFoundError(f"zero_shot: video {v!r} does not exist")
    records.append(VideoRecord(video_id=os.path.basename(v), path=v))
  if template is None:
    template = task.config.eval.zero_shot_template or task.config.model.prompt_template
  emb, ok = task.predictor.embed_records(params, records)
  bad = [v for v, good in zip(videos, ok) if not good]
  if bad:
    raise ValueError(f"zero_shot: cannot decode {bad}")
  scores = task.predictor.class_scores(params, emb, list(classes), template)  # [N, C], summed over views
  probs = scores / scores.sum(axis=1, keepdims=True)
  return [{c: float(p) for c, p in zip(classes, row)} for row in probs]


class ConceptScorer:
  """Ranks text concepts for videos with a trained ViFi-CLIP (CaptionT5's thoughts).

  Args:
    task: the restored task (model, tokenizer, config).
    params: its params.
  """

  def __init__(self, task: ViFiCLIPTask, params):
    self.task = task
    self.params = params
    self._text_cache: dict[tuple[str, ...], np.ndarray] = {}

  @classmethod
  def from_workdir(cls, workdir: str) -> "ConceptScorer":
    """Restores the latest params, tokenizer and config of a ViFi-CLIP workdir."""
    return cls(*restore(workdir))

  @property
  def num_frames(self) -> int:
    return int(self.task.config.data.num_frames)

  @property
  def image_size(self) -> int:
    return int(self.task.config.data.size)

  def fit_frames(self, frames: np.ndarray) -> np.ndarray:
    """Frames of another model's sampling -> this model's frame count and square size.

    ``[B, T, H, W, 3]`` uint8 -> ``[B, num_frames, image_size, image_size, 3]``:
    ``num_frames`` indices spread uniformly over T (repeating when T is
    smaller), then a bilinear resize when H or W differ (non-square frames
    are centre-cropped to a square first).
    """
    frames = np.asarray(frames)
    if frames.ndim != 5:
      raise ValueError(f"frames must be uint8 [batch, frames, H, W, 3], got shape {frames.shape}")
    t = frames.shape[1]
    idx = np.floor((np.arange(self.num_frames) + 0.5) * t / self.num_frames).astype(int)
    frames = frames[:, np.clip(idx, 0, t - 1)]  # [B, T', H, W, 3]
    return clip_lib.fit_square(frames, self.image_size)  # [B, T', S, S, 3]

  def embed_videos(self, frames: np.ndarray) -> np.ndarray:
    """uint8 ``[B, T, H, W, 3]`` (T = the model's frames, H = W = its size) -> ``[B, P]`` normalised."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
      raise ValueError(f"frames must be uint8 [batch, frames, H, W, 3], got shape {frames.shape}")
    if self.task.model_config.temporal in vifi.FIXED_FRAME_MODES and frames.shape[1] != self.num_frames:
      raise ValueError(f"this model takes {self.num_frames} frames per video, got {frames.shape[1]}")
    return self.task.predictor.embed_frames(self.params, frames)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> ``[N, P]`` normalised (cached per concept list)."""
    key = tuple(texts)
    if key not in self._text_cache:
      self._text_cache[key] = self.task.predictor.embed_texts(self.params, list(texts))
    return self._text_cache[key]

  def scores(self, videos: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """Cosine similarities ``[B, len(concepts)]``; ``videos`` are frames or embeddings ``[B, P]``."""
    videos = np.asarray(videos)
    emb = videos if videos.ndim == 2 else self.embed_videos(videos)
    if emb.shape[-1] != self.task.model_config.projection_dim:
      raise ValueError(f"video embeddings must be [batch, {self.task.model_config.projection_dim}], "
                       f"got {emb.shape}")
    return emb @ self.embed_texts(concepts).T

  def top_concepts(self, videos: np.ndarray, concepts: Sequence[str], k: int) -> list[list[str]]:
    """The ``k`` best concepts per video, best first."""
    if not concepts:
      raise ValueError("top_concepts: the concept list is empty")
    k = min(int(k), len(concepts))
    sims = self.scores(videos, concepts)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[concepts[j] for j in row] for row in order]