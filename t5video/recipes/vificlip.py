"""ViFi-CLIP recipe: video-text contrastive fine-tuning and its evaluation protocols.

The trainer runs :class:`ViFiCLIPTask` (``config.task = 'vificlip'``). What it
trains is chosen by ``config.model.objective``:

* ``'classification'``: every video against the text embeddings of its
  dataset's class prompts (``model.prompt_template``, default
  ``'a photo of a {}.'``), cross-entropy with label smoothing and optional
  mixup (ViFi-CLIP's recipe);
* ``'contrastive'``: symmetric InfoNCE between each video and one of its
  captions (drawn per epoch), for retrieval;
* ``'both'``: the sum.

Evaluation (``config.eval.protocols``), run by the trainer at ``eval_every`` and
at the end, or by :func:`evaluate` on a workdir:

* ``'closed'``: top-1 / top-5 over the training classes (fully supervised /
  K-shot), with multi-view testing (``eval.num_clips`` temporal views ×
  ``eval.num_crops`` spatial crops, softmax per view, summed);
* ``'zero_shot'``: top-1 over held-out classes (``data.novel_classes``) with
  bare class names as prompts, and base / novel / harmonic mean accuracy
  (ViFi-CLIP's base-to-novel protocol, each over its own classes);
* ``'retrieval'``: text-to-video and video-to-text R@1/5/10, MdR, MnR
  (:mod:`t5video.evaluate.retrieval`).

K-shot training takes ``data.k_shot`` clips per class drawn with
``data.k_shot_seed``. Bridge and prompt: set ``model.prompts.*`` and
``optim.trainable = '(^|/)prompts$'`` with ``init_from`` a fine-tuned run.

Tokenizers: a Hugging Face CLIP checkpoint brings its BPE tokenizer
(``model.tokenizer`` = its directory). A from-scratch text tower uses a
SentencePiece model trained on the training text (captions, class names,
prompts) and written to ``model.tokenizer`` (a ``.model`` path). Its ids map
into the CLIP text vocabulary unchanged (pad 0, EOS 1, unk 2, pieces 3..S-1)
and one extra id ``S`` is the start-of-text token; ``text.vocab_size`` becomes
``S + 1`` and ``eos_token_id = 1`` so the tower pools at the first EOS.

Plain functions for the CLI: :func:`evaluate`, :func:`zero_shot`; and
:class:`ConceptScorer` for CaptionT5's CLIP-guided thoughts.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5video.data.frame_cache import FrameCache
from t5video.data.records import VideoRecord, fold_of, fraction_subset
from t5video.models import clip as clip_lib
from t5video.models import vificlip as vifi
from t5video.train import task as task_lib

OBJECTIVES = ("classification", "contrastive", "both")
PROTOCOLS = ("closed", "zero_shot", "retrieval")
TOKENIZER_DIR = "vificlip"  # <workdir>/vificlip/: tokenizer + config.json for ConceptScorer


# -----------------------------------------------------------------------------
# Text tokenisation for the CLIP text tower
# -----------------------------------------------------------------------------

class ClipTextTokenizer:
  """Texts -> ``(ids int32 [N, L], mask int32 [N, L])`` in the CLIP text layout.

  Every row is ``[start] tokens... [end] pad...``; over-long texts are
  truncated before the end token, which is always kept (it is pooled).

  Args:
    path: a SentencePiece ``.model`` file or an HF CLIP tokenizer directory.
  """

  def __init__(self, path: str):
    self.path = path
    if path.endswith(".model"):
      from t5video.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
      self._sp = tok_lib.SentencePieceTokenizer(path)
      self._hf = None
      self.pad_id, self.eos_id = tok_lib.PAD_ID, tok_lib.EOS_ID
      self.bos_id = self._sp.vocab_size
      self.vocab_size = self._sp.vocab_size + 1
    else:
      self._sp = None
      self._hf = clip_lib.load_clip_tokenizer(path)
      self.pad_id = int(self._hf.pad_token_id if self._hf.pad_token_id is not None else 0)
      self.eos_id = int(self._hf.eos_token_id)
      self.bos_id = int(self._hf.bos_token_id)
      self.vocab_size = len(self._hf)

  @property
  def kind(self) -> str:
    return "sentencepiece" if self._sp is not None else "hf"

  def text_overrides(self) -> dict[str, int]:
    """CLIPTextConfig fields that a from-scratch text tower needs for this tokenizer."""
    return dict(vocab_size=self.vocab_size, pad_token_id=self.pad_id, bos_token_id=self.bos_id,
                eos_token_id=self.eos_id)

  def _pieces(self, text: str) -> list[int]:
    if self._sp is not None:
      return self._sp.encode(text)
    return list(self._hf.encode(text, add_special_tokens=False))

  def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    if max_len < 3:
      raise ValueError(f"text max_len must be >= 3 (start, a token, end), got {max_len}")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
      row = [self.bos_id] + self._pieces(text)[: max_len - 2] + [self.eos_id]
      ids[i, :len(row)] = row
      mask[i, :len(row)] = 1
    return ids, mask

  def __getstate__(self):  # picklable for Grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


def ensure_sentencepiece(path: str, texts: Sequence[str], vocab_size: int) -> str:
  """Trains the SentencePiece model at ``path`` from ``texts`` unless it exists."""
  if not os.path.isfile(path):
    from t5video.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
    if not texts:
      raise ValueError(f"cannot train the SentencePiece model {path}: no training text")
    tok_lib.train_sentencepiece(texts, path, vocab_size=vocab_size)
  return path


# -----------------------------------------------------------------------------
# Data: records, classes, K-shot, example transform
# -----------------------------------------------------------------------------

def read_records(data: ml_collections.ConfigDict, split: str, allow_empty: bool = False) -> list[VideoRecord]:
  """``data.layout`` records of ``split`` under ``data.root`` (rendering synthetic data first)."""
  if not data.root:
    raise ValueError(f"config.data.root is empty: pass --config.data.root=DIR (the {data.layout} "
                     "dataset folder)")
  if data.get("synthetic") and data.synthetic.get("num_videos", 0):
    from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
    s = data.synthetic
    synthetic.render_dataset(data.root, int(s.num_videos), int(s.seed),
                             sizes=tuple(tuple(x) for x in s.sizes), class_prior=str(s.class_prior),
                             min_seconds=float(s.min_seconds), max_seconds=float(s.max_seconds),
                             backgrounds=tuple(s.backgrounds) if s.get("backgrounds") else None,
                             max_distractors=int(s.get("max_distractors", 2)),
                             overwrite=bool(s.get("overwrite", False)))
  from t5video.data import layouts  # pylint: disable=g-import-not-at-top
  kwargs = _as_dict(data.get("layout_kwargs"))
  records = layouts.read_dataset(data.layout, data.root, split, **kwargs)
  if not records and not allow_empty:
    raise ValueError(f"data: layout {data.layout!r} under {data.root!r} has no records in split {split!r}")
  return records


def k_shot(records: Sequence[VideoRecord], k: int, seed: int) -> list[VideoRecord]:
  """``k`` records per class, drawn without replacement with ``seed`` (all of a smaller class)."""
  by_class: dict[str, list[VideoRecord]] = {}
  for r in records:
    by_class.setdefault(r.label, []).append(r)
  rng = np.random.default_rng(seed)
  out = []
  for label in sorted(by_class):
    group = sorted(by_class[label], key=lambda r: r.video_id)
    pick = rng.permutation(len(group))[:k]
    out.extend(group[i] for i in sorted(pick))
  return out


def harmonic_mean(a: float, b: float) -> float:
  """``2ab / (a + b)`` (0 when both are 0)."""
  return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


class ExampleTransform:
  """Adds ``label`` (class index, -1 if unknown) and one tokenised caption to an example.

  The caption is drawn from the record's captions with a generator seeded by
  ``(seed, epoch, position)``, so a resumed run draws the same one.
  """

  def __init__(self, class_index: dict[str, int], tokenizer: ClipTextTokenizer, text_len: int,
               seed: int, need_caption: bool):
    self.class_index = dict(class_index)
    self.tokenizer = tokenizer
    self.text_len = text_len
    self.seed = seed
    self.need_caption = need_caption

  def __call__(self, ex: dict) -> dict:
    label = self.class_index.get(ex.get("label") or "", -1)
    ex["label_id"] = np.int32(label)
    valid = bool(ex["valid"]) and (label >= 0 or not self.class_index)
    captions = ex.get("captions") or []
    if self.need_caption:
      if captions:
        rng = np.random.default_rng([self.seed, int(ex["epoch"]), int(ex["position"]), 7])
        caption = captions[int(rng.integers(len(captions)))]
      else:
        caption, valid = "", False
      ids, mask = self.tokenizer([caption], self.text_len)
      ex["caption_ids"], ex["caption_mask"] = ids[0], mask[0]
    ex["valid"] = np.bool_(valid)
    return ex


# -----------------------------------------------------------------------------
# The task
# -----------------------------------------------------------------------------

def _as_dict(x) -> dict:
  """A plain dict from a dict / ConfigDict / None."""
  if x is None:
    return {}
  return dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x)


def vision_config(config: ml_collections.ConfigDict) -> clip_lib.CLIPVisionConfig:
  """The CLIP vision tower of a ViFi-CLIP run config (for a model whose vision tower starts from it)."""
  m = config.model
  vision = {k: tuple(v) if isinstance(v, list) else v for k, v in _as_dict(m.get("vision")).items()}
  return clip_lib.CLIPVisionConfig(**{**clip_lib.VARIANTS[m.variant]["vision"], **vision})


def is_workdir(path: str) -> bool:
  """Whether ``path`` is a finished ViFi-CLIP workdir (what :func:`restore` reads)."""
  return bool(path) and os.path.isfile(os.path.join(path, TOKENIZER_DIR, "config.json"))


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _soft_ce_rows(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-row ``-sum(targets * log_softmax(logits))``."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


class ViFiCLIPTask(task_lib.Task):
  """The ViFi-CLIP recipe (see the module docstring).

  Args:
    config: the run's ConfigDict (``model``, ``data``, ``eval`` sections).
    tokenizer_path: overrides ``model.tokenizer`` (used when restoring a workdir).
    classes: ``(train_classes, novel_classes)`` known already (restoring a
      workdir): the dataset is then not read to find them.
  """

  def __init__(self, config, tokenizer_path: Optional[str] = None,
               classes: Optional[tuple[Sequence[str], Sequence[str]]] = None):
    super().__init__(config)
    m, d = config.model, config.data
    if m.objective not in OBJECTIVES:
      raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {m.objective!r}")
    for p in config.eval.protocols:
      if p not in PROTOCOLS:
        raise ValueError(f"eval.protocols: unknown protocol {p!r}; known: {PROTOCOLS}")
    self._records: dict[str, list[VideoRecord]] = {}
    novel = tuple(d.get("novel_classes", ()) or ())
    if classes is not None:
      self.train_classes, novel = tuple(classes[0]), tuple(classes[1])
    elif novel == ("*",):  # every class of the eval split is novel (cross-dataset zero-shot)
      novel = tuple(sorted({r.label for r in self.records(config.eval.split) if r.label}))
      self.train_classes = ()
    else:
      self.train_classes = self._train_classes(novel)
    self.novel_classes = novel
    self.class_index = {c: i for i, c in enumerate(self.train_classes)}
    self.tokenizer = ClipTextTokenizer(tokenizer_path or self._tokenizer_path())
    self.model_config = self._model_config()
    self.model = vifi.ViFiCLIP(self.model_config)
    self.text_len = min(int(m.text_len), self.model_config.max_text_len)
    self.class_ids, self.class_mask = self.prompt_ids(self.train_classes)
    # Decode each training clip once (data.cache_frames); used by train_loader only.
    self.frame_cache = FrameCache() if d.get("cache_frames", False) else None

  # ---- data and text ---------------------------------------------------------

  def records(self, split: str, allow_empty: bool = False) -> list[VideoRecord]:
    """The records of ``split`` (read once)."""
    if split not in self._records:
      self._records[split] = read_records(self.config.data, split, allow_empty)
    return self._records[split]

  def _train_classes(self, novel: Sequence[str]) -> tuple[str, ...]:
    """Classes trained on: those of the training split minus ``data.novel_classes``."""
    d = self.config.data
    if d.get("classes"):
      names = list(d.classes)
    elif self.config.model.objective == "contrastive" and not any(
        r.label for r in self.records(d.train_split)):
      return ()
    else:
      names = sorted({r.label for r in self.records(d.train_split) if r.label})
    # Novel classes may be absent from the training split: held out is held out.
    return tuple(c for c in names if c not in novel)

  def _tokenizer_path(self) -> str:
    m, d = self.config.model, self.config.data
    path = m.tokenizer
    if not path:
      raise ValueError("model.tokenizer must name an HF CLIP tokenizer directory or a SentencePiece "
                       ".model path (trained there from the training text when missing)")
    if path.endswith(".model"):
      texts = []
      for r in self.records(d.train_split):
        texts.extend(r.captions)
      names = list(self.train_classes) + list(self.novel_classes)
      texts += names + [m.prompt_template.format(c) for c in names]
      ensure_sentencepiece(path, texts, int(m.get("sentencepiece_vocab", 512)))
    return path

  def _model_config(self) -> vifi.ViFiCLIPConfig:
    m = self.config.model
    vision = _as_dict(m.get("vision"))
    text = _as_dict(m.get("text"))
    if self.tokenizer.kind == "sentencepiece":
      text.update(self.tokenizer.text_overrides())
    for k, v in list(vision.items()):
      if isinstance(v, list):
        vision[k] = tuple(v)
    prompts = vifi.PromptSpec(**_as_dict(m.get("prompts")))
    return vifi.ViFiCLIPConfig.from_variant(
        m.variant, vision=vision, text=text, temporal=m.temporal, num_frames=int(self.config.data.num_frames),
        prompts=prompts, **({"projection_dim": int(m.projection_dim)} if m.get("projection_dim") else {}))

  def prompt_ids(self, classes: Sequence[str], template: Optional[str] = None):
    template = self.config.model.prompt_template if template is None else template
    return self.tokenizer([template.format(c) for c in classes], self.text_len)

  def sampling_spec(self, train: bool, num_frames: Optional[int] = None, size: Optional[int] = None):
    from t5video.data import decode  # pylint: disable=g-import-not-at-top
    d = self.config.data
    size = size or int(d.size)
    # A larger eval square (multi-crop) resizes at least to that square.
    resize_short = max(int(d.resize_short), size) if d.get("resize_short") else None
    # The frame cache stores centre crops, so caching trades random crops for speed.
    random_crop = train and not d.get("cache_frames", False)
    return decode.SamplingSpec(
        num_frames=num_frames or int(d.num_frames), mode="segment" if train else "uniform",
        size=size, resize_short=resize_short,
        crop="random" if random_crop else "center", flip=bool(d.flip) and train)

  # ---- Task API --------------------------------------------------------------

  def _needs(self) -> tuple[bool, bool]:
    o = self.config.model.objective
    return o in ("classification", "both"), o in ("contrastive", "both")

  def _dummy_inputs(self):
    d = self.config.data
    pixels = jnp.zeros((1, int(d.num_frames), int(d.size), int(d.size), 3), jnp.float32)
    ids = jnp.zeros((1, self.text_len), jnp.int32)
    return pixels, ids

  def init_params(self, rng: jax.Array):
    pixels, ids = self._dummy_inputs()
    return self.model.init({"params": rng}, pixels, ids, jnp.ones_like(ids))["params"]

  def batch_spec(self) -> dict[str, tuple]:
    spec = {"frames": ("act_batch", "act_frames", None, None, None),
            "frame_mask": ("act_batch", "act_frames"),
            "valid": ("act_batch",)}
    cls, con = self._needs()
    if cls:
      spec["label_id"] = ("act_batch",)
    if con:
      spec["caption_ids"] = ("act_batch", "act_len")
      spec["caption_mask"] = ("act_batch", "act_len")
    return spec

  def train_records(self) -> list[VideoRecord]:
    """The training split without novel classes (and K-shot sampled when ``data.k_shot``)."""
    d = self.config.data
    cls, _ = self._needs()
    if cls and len(self.train_classes) < 2:
      raise ValueError(f"model.objective={self.config.model.objective!r} needs at least 2 training classes, "
                       f"got {self.train_classes} (data.novel_classes={self.novel_classes})")
    records = fraction_subset(self.records(d.train_split), float(d.get("train_fraction", 1.0)),
                              int(self.config.seed))
    if self.novel_classes:
      records = [r for r in records if r.label not in self.novel_classes]
    if cls:
      records = [r for r in records if r.label in self.class_index]
    if d.get("holdout_fold"):  # (k, n): train without fold k of n (cross-fitting, records.fold_of)
      k, n = (int(v) for v in d.holdout_fold)
      records = [r for r in records if fold_of(r.video_id, n) != k]
    if d.get("k_shot", 0):
      records = k_shot(records, int(d.k_shot), int(d.get("k_shot_seed", 0)))
    if not records:
      raise ValueError(f"data: no training records left in split {d.train_split!r} after filtering")
    return records

  def train_loader(self, *, seed: int, process_index: int, process_count: int,
                   batch_size: int) -> Iterator[dict]:
    from t5video.data import pipeline  # pylint: disable=g-import-not-at-top
    d = self.config.data
    cls, con = self._needs()
    transform = ExampleTransform(self.class_index if cls else {}, self.tokenizer, self.text_len, seed, con)
    it = pipeline.make_loader(
        self.train_records(),
        transform=pipeline.VideoDecodeTransform(self.sampling_spec(True), True, seed, decoder=self.frame_cache),
        batch_size=batch_size, seed=seed, shard_index=process_index, shard_count=process_count,
        worker_count=int(d.get("worker_count", 0)), read_threads=int(d.get("read_threads", 2)),
        extra_transforms=(transform,), max_failure_ratio=d.get("max_failure_ratio", 0.1))
    return pipeline.KeyFilterIterator(it, list(self.batch_spec()))

  def loss_fn(self, params, batch, rng, *, train: bool):
    m = self.config.model
    cls, con = self._needs()
    mix_rng, drop_rng = jax.random.split(rng)
    pixels = clip_lib.clip_preprocess(batch["frames"])
    weights = batch["valid"].astype(jnp.float32)
    num_classes = len(self.train_classes)
    targets = None
    if cls:
      targets = vifi.smooth_labels(jnp.maximum(batch["label_id"], 0), num_classes,
                                   float(m.label_smoothing) if train else 0.0)
      if train and float(m.get("mixup_alpha", 0.0)) > 0:
        pixels, targets = vifi.mixup(mix_rng, pixels, targets, float(m.mixup_alpha))
    variables = {"params": params}
    rngs = {"dropout": drop_rng}
    apply = functools.partial(self.model.apply, variables, rngs=rngs)
    video, _ = apply(pixels, batch["frame_mask"], not train, method=vifi.ViFiCLIP.encode_video)
    video = vifi.l2_normalize(video)
    scale = apply(method=vifi.ViFiCLIP.scale)
    loss = jnp.zeros((), jnp.float32)
    metrics = {"logit_scale": scale}
    if cls:
      class_text = vifi.l2_normalize(apply(jnp.asarray(self.class_ids), jnp.asarray(self.class_mask), not train,
                                           method=vifi.ViFiCLIP.encode_text))
      # [B, P] x [C, P] -> [B, C]
      logits = jnp.einsum("bp,cp->bc", video, class_text) * scale
      cls_loss = _masked_mean(_soft_ce_rows(logits, targets), weights)
      loss = loss + cls_loss
      metrics["cls_loss"] = cls_loss
      metrics["accuracy"] = _masked_mean(
          (jnp.argmax(logits, -1) == batch["label_id"]).astype(jnp.float32), weights)
    if con:
      text = vifi.l2_normalize(apply(batch["caption_ids"], batch["caption_mask"], not train,
                                     method=vifi.ViFiCLIP.encode_text))
      # [B, P] x [B, P] -> [B, B]; invalid rows/columns take no part.
      logits = jnp.einsum("vp,tp->vt", video, text) * scale
      pair = weights[:, None] * weights[None, :]
      logits = jnp.where(pair > 0, logits, -1e9)
      eye = jnp.eye(logits.shape[0], dtype=jnp.float32)
      nce = 0.5 * (_masked_mean(_soft_ce_rows(logits, eye), weights)
                   + _masked_mean(_soft_ce_rows(logits.T, eye), weights))
      loss = loss + float(m.get("contrastive_weight", 1.0)) * nce
      metrics["nce_loss"] = nce
    metrics["loss"] = loss
    return loss, metrics

  def load_pretrained(self, params, init_from):
    """An HF CLIP directory (``config.json``): its towers by name; else a t5video workdir."""
    path = init_from.path
    if os.path.isfile(os.path.join(path, "config.json")):
      from t5video.models import hf  # pylint: disable=g-import-not-at-top
      _, clip_params = hf.load_hf(path)
      merged, missing = vifi.merge_clip_params(jax.device_get(params), clip_params)
      if missing:
        print(f"init_from {path}: kept initial values for {missing}", flush=True)
      return jax.tree_util.tree_map(
          lambda new, old: jax.device_put(new, old.sharding) if hasattr(old, "sharding") else new,
          merged, params)
    return super().load_pretrained(params, init_from)

  # ---- encoding helpers (jitted) -----------------------------------------------

  @functools.cached_property
  def _encode_video_fn(self):
    def f(params, frames, frame_mask):
      video, _ = self.model.apply({"params": params}, clip_lib.clip_preprocess(frames), frame_mask,
                                  method=vifi.ViFiCLIP.encode_video)
      return vifi.l2_normalize(video)
    return jax.jit(f)

  @functools.cached_property
  def _encode_text_fn(self):
    def f(params, ids, mask):
      return vifi.l2_normalize(self.model.apply({"params": params}, ids, mask, method=vifi.ViFiCLIP.encode_text))
    return jax.jit(f)

  @functools.cached_property
  def _scale_fn(self):
    return jax.jit(lambda params: self.model.apply({"params": params}, method=vifi.ViFiCLIP.scale))

  def embed_frames(self, params, frames: np.ndarray, frame_mask: Optional[np.ndarray] = None,
                   batch_size: int = 16) -> np.ndarray:
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
    square = int(e.get("crop_square", 0) or size) if crops > 1 else size
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

    with concurrent.futures.ThreadPoolExecutor(max(1, int(d.get("read_threads", 2)))) as pool:
      decoded = list(pool.map(one, records))
    offsets = [(square - size) // 2] if crops == 1 else [
        int(round(i * (square - size) / (crops - 1))) for i in range(crops)]
    out = np.zeros((len(records), clips * crops, t, size, size, 3), np.uint8)
    for n, (frames, _) in enumerate(decoded):
      for k in range(clips):
        view = frames[k::clips][:t]  # [T, square, square, 3]
        for j, o in enumerate(offsets):
          out[n, k * crops + j] = view[:, o:o + size, o:o + size]
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
    chunk = max(1, int(self.config.eval.get("chunk", 64)))
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

  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    """Runs ``eval.protocols`` on ``eval.split``; also stores tokenizer + config in the workdir."""
    if workdir and jax.process_index() == 0:
      save_workdir_assets(self, workdir)
    params = jax.device_get(params)
    e = self.config.eval
    records = self.records(e.split)
    if e.get("max_videos", 0):
      records = records[: int(e.max_videos)]
    emb, ok = self.embed_records(params, records)
    out: dict[str, float] = {}
    template = self.config.model.prompt_template
    if "closed" in e.protocols and self.train_classes:
      idx = [i for i, r in enumerate(records) if ok[i] and r.label in self.class_index]
      if idx:
        scores = self.class_scores(params, emb[idx], self.train_classes, template)
        labels = np.array([self.class_index[records[i].label] for i in idx])
        out.update(_topk(scores, labels, "closed"))
    if "zero_shot" in e.protocols and self.novel_classes:
      zs_template = e.get("zero_shot_template", "") or template
      novel_idx = {c: i for i, c in enumerate(self.novel_classes)}
      # Novel classes were never trained on: their clips in other splits count too.
      extra = [r for sp in e.get("novel_extra_splits", ()) for r in self.records(sp, allow_empty=True)
               if r.label in novel_idx]
      if extra:
        extra_emb, extra_ok = self.embed_records(params, extra)
      else:
        extra_emb, extra_ok = emb[:0], ok[:0]
      nov = [r for r in records if r.label in novel_idx] + extra
      nov_emb = np.concatenate([emb[[i for i, r in enumerate(records) if r.label in novel_idx]], extra_emb])
      nov_ok = np.concatenate([ok[[i for i, r in enumerate(records) if r.label in novel_idx]], extra_ok])
      if nov and nov_ok.any():
        scores = self.class_scores(params, nov_emb[nov_ok], self.novel_classes, zs_template)
        labels = np.array([novel_idx[r.label] for r, good in zip(nov, nov_ok) if good])
        out.update(_topk(scores, labels, "novel"))
        base_idx = [i for i, r in enumerate(records) if ok[i] and r.label in self.class_index]
        if base_idx:
          bscores = self.class_scores(params, emb[base_idx], self.train_classes, zs_template)
          blabels = np.array([self.class_index[records[i].label] for i in base_idx])
          out.update(_topk(bscores, blabels, "base"))
          out["hm"] = harmonic_mean(out["base/top1"], out["novel/top1"])
    if "retrieval" in e.protocols:
      from t5video.evaluate import retrieval  # pylint: disable=g-import-not-at-top
      idx = [i for i, r in enumerate(records) if ok[i] and r.captions]
      if idx:
        texts, owner = [], []
        for j, i in enumerate(idx):
          for c in records[i].captions[: int(e.get("captions_per_video", 0)) or None]:
            texts.append(c)
            owner.append(j)
        # Retrieval uses the first view (one clip, centre crop), as CLIP4Clip does.
        video = emb[idx, 0]
        text = self.embed_texts(params, texts)
        sim = text @ video.T  # [texts, videos]
        res = retrieval.retrieval_metrics(sim, np.asarray(owner, np.int64))
        for direction, name in (("text_to_video", "t2v"), ("video_to_text", "v2t")):
          for k, v in res[direction].items():
            out[f"{name}/{k}"] = float(v)
    return out


def _topk(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
  order = np.argsort(-scores, axis=1)
  top1 = float(np.mean(order[:, 0] == labels) * 100.0)
  k = min(5, scores.shape[1])
  topk = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)) * 100.0)
  return {f"{prefix}/top1": top1, f"{prefix}/top5": topk, f"{prefix}/count": float(len(labels))}


# -----------------------------------------------------------------------------
# Workdir assets, restore, CLI helpers, concept scorer
# -----------------------------------------------------------------------------

def save_workdir_assets(task: ViFiCLIPTask, workdir: str) -> str:
  """Writes ``<workdir>/vificlip/{config.json, tokenizer}`` (what :func:`restore` reads)."""
  out = os.path.join(workdir, TOKENIZER_DIR)
  os.makedirs(out, exist_ok=True)
  src = task.tokenizer.path
  if task.tokenizer.kind == "sentencepiece":
    dst = os.path.join(out, "spiece.model")
    if os.path.abspath(src) != os.path.abspath(dst):
      with open(src, "rb") as f_in, open(dst + ".tmp", "wb") as f_out:
        f_out.write(f_in.read())
      os.replace(dst + ".tmp", dst)
  else:
    dst = os.path.abspath(src)
  cfg = json.loads(task.config.to_json_best_effort())
  with open(os.path.join(out, "config.json.tmp"), "w") as f:
    json.dump({"config": cfg, "tokenizer": dst, "train_classes": list(task.train_classes),
               "novel_classes": list(task.novel_classes)}, f, indent=2)
  os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))
  return out


def _latest_params_dir(workdir: str) -> str:
  ckpt = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt):
    raise FileNotFoundError(f"{workdir}: no checkpoints/ directory; is it a t5video training workdir?")
  steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"{ckpt}: no finished checkpoint")
  return os.path.join(ckpt, str(steps[-1]), "state")


def restore(workdir: str) -> tuple[ViFiCLIPTask, Any]:
  """``(task, params)`` of the latest checkpoint of a ViFi-CLIP workdir."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))  # Orbax wants absolute paths
  meta_path = os.path.join(workdir, TOKENIZER_DIR, "config.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path}: missing; it is written by ViFiCLIPTask.evaluate at the end of "
                            "training (was the run a ViFi-CLIP run that finished?)")
  with open(meta_path) as f:
    meta = json.load(f)
  config = ml_collections.ConfigDict(meta["config"])
  task = ViFiCLIPTask(config, tokenizer_path=meta["tokenizer"],
                      classes=(meta["train_classes"], meta["novel_classes"]))
  abstract = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.PRNGKey(0))))
  state_dir = _latest_params_dir(workdir)
  item = {"params": jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)}
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=item, partial_restore=True))
  params = jax.tree_util.tree_map(lambda x, a: np.asarray(x, a.dtype), restored["params"], abstract)
  return task, params


def evaluate(workdir: str, split: Optional[str] = None, protocols: Optional[Sequence[str]] = None,
             config: Optional[ml_collections.ConfigDict] = None) -> dict[str, float]:
  """Evaluates the latest checkpoint of ``workdir`` (for ``t5video eval``).

  Args:
    workdir: a finished ViFi-CLIP training workdir.
    split: overrides ``eval.split``.
    protocols: overrides ``eval.protocols``.
    config: another recipe config whose ``data`` and ``eval`` sections (and
      prompt template) replace the run's, e.g. ``hmdb51.py:zeroshot`` to test a
      K400 run zero-shot on HMDB51; the model and tokenizer stay the run's.
  """
  task, params = restore(workdir)
  if config is not None:
    merged = ml_collections.ConfigDict(task.config.to_dict())
    merged.data = ml_collections.ConfigDict(config.data.to_dict())
    merged.data.num_frames = config.data.num_frames
    merged.eval = ml_collections.ConfigDict(config.eval.to_dict())
    merged.model.prompt_template = config.model.prompt_template
    if merged.model.temporal == "spacetime" and config.data.num_frames != task.config.data.num_frames:
      raise ValueError(f"a space-time model takes {task.config.data.num_frames} frames; the config asks "
                       f"for {config.data.num_frames}")
    task = ViFiCLIPTask(merged, tokenizer_path=task.tokenizer.path)
  with task.config.unlocked():
    if split:
      task.config.eval.split = split
    if protocols:
      task.config.eval.protocols = list(protocols)
  return task.evaluate(params, step=-1, workdir="")


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
    if not os.path.isfile(v):
      raise FileNotFoundError(f"zero_shot: video {v!r} does not exist")
    records.append(VideoRecord(video_id=os.path.basename(v), path=v))
  if template is None:
    template = task.config.eval.get("zero_shot_template", "") or task.config.model.prompt_template
  emb, ok = task.embed_records(params, records)
  bad = [v for v, good in zip(videos, ok) if not good]
  if bad:
    raise ValueError(f"zero_shot: cannot decode {bad}")
  scores = task.class_scores(params, emb, list(classes), template)  # [N, C], summed over views
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
    b, t, h, w, _ = frames.shape
    idx = np.floor((np.arange(self.num_frames) + 0.5) * t / self.num_frames).astype(int)
    frames = frames[:, np.clip(idx, 0, t - 1)]  # [B, T', H, W, 3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[:, :, top:top + side, left:left + side]  # [B, T', S, S, 3]
    if side != self.image_size:
      size = self.image_size
      resized = jax.image.resize(jnp.asarray(frames, jnp.float32),
                                 (b, self.num_frames, size, size, 3), method="bilinear")
      frames = np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)
    return frames

  def embed_videos(self, frames: np.ndarray) -> np.ndarray:
    """uint8 ``[B, T, H, W, 3]`` (T = the model's frames, H = W = its size) -> ``[B, P]`` normalised."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
      raise ValueError(f"frames must be uint8 [batch, frames, H, W, 3], got shape {frames.shape}")
    if self.task.model_config.temporal == "spacetime" and frames.shape[1] != self.num_frames:
      raise ValueError(f"this model takes {self.num_frames} frames per video, got {frames.shape[1]}")
    return self.task.embed_frames(self.params, frames)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> ``[N, P]`` normalised (cached per concept list)."""
    key = tuple(texts)
    if key not in self._text_cache:
      self._text_cache[key] = self.task.embed_texts(self.params, list(texts))
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
