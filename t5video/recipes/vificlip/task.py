"""ViFi-CLIP's task: what the trainer needs (init, batch spec, loader, loss, pretrained weights).

What it trains is chosen by ``config.model.objective``:

* ``'classification'``: every video against the text embeddings of its
  dataset's class prompts (``model.prompt_template``), cross-entropy with label
  smoothing and optional mixup (ViFi-CLIP's recipe), :func:`t5video.models.vificlip.class_prompt_loss`;
* ``'contrastive'``: symmetric InfoNCE between each video and one of its
  captions (drawn per epoch), :func:`t5video.models.vificlip.info_nce`;
* ``'both'``: the sum.

Tokenizers: a Hugging Face CLIP checkpoint brings its BPE tokenizer
(``model.tokenizer`` = its directory). A from-scratch text tower uses a
SentencePiece model trained on the training text (captions, class names,
prompts) and written to ``model.tokenizer`` (a ``.model`` path) when the run is
prepared. Its ids map into the CLIP text vocabulary unchanged (pad 0, EOS 1,
unk 2, pieces 3..S-1) and one extra id ``S`` is the start-of-text token.

Evaluation protocols are in :mod:`.evaluate`, encoders and user files in :mod:`.predict`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5video import config as config_lib
from t5video.data.frame_cache import FrameCache
from t5video.data.records import VideoRecord, fold_of, fraction_subset
from t5video.data.tokenizer import ClipTextTokenizer, train_sentencepiece
from t5video.evaluate import controls
from t5video.models import clip as clip_lib
from t5video.models import vificlip as vifi
from t5video.recipes.vificlip import config as cfg
from t5video.recipes.vificlip import data as data_lib
from t5video.train import paths
from t5video.train import task as task_lib

TOKENIZER_DIR = "vificlip"  # <workdir>/vificlip/: tokenizer + config.json (what restore reads)


def is_workdir(path: str) -> bool:
  """Whether ``path`` is a prepared ViFi-CLIP workdir (what :func:`.predict.restore` reads)."""
  return bool(path) and paths.exists(paths.join(path, TOKENIZER_DIR, "config.json"))


class ViFiCLIPTask(task_lib.Task):
  """The ViFi-CLIP recipe (see the module docstring).

  Args:
    config: the run's ConfigDict (``model``, ``data``, ``eval`` sections).
    tokenizer_path: overrides ``model.tokenizer`` (used when restoring a workdir).
    classes: ``(train_classes, novel_classes)`` known already (restoring a
      workdir): the dataset is then not read to find them.
  """

  CONFIG_MODULE = cfg  # the schema: base_config(), validate(), OPEN_SECTIONS

  def __init__(self, config, tokenizer_path: Optional[str] = None,
               classes: Optional[tuple[Sequence[str], Sequence[str]]] = None, *, shapes_only: bool = False):
    super().__init__(config, shapes_only=shapes_only)
    config_lib.fill_defaults(config, cfg.base_config())
    cfg.validate(config)
    m = config.model
    self._records: dict[str, list[VideoRecord]] = {}
    if classes is None:
      classes = self._shape_classes() if shapes_only else data_lib.train_classes(config, self.records)
    self.train_classes, self.novel_classes = tuple(classes[0]), tuple(classes[1])
    self.class_index = {c: i for i, c in enumerate(self.train_classes)}
    # For its shapes alone a tokenizer still to be found or trained is not read: the model's text
    # tower is the checkpoint's (or model.text's) and the class prompts are zeros of their shape.
    self.tokenizer = (None if shapes_only and not tokenizer_path and not paths.exists(m.tokenizer or "")
                      else ClipTextTokenizer(tokenizer_path or self._tokenizer_path()))
    self.model_config = self._model_config()
    self.model = vifi.ViFiCLIP(self.model_config)
    self.text_len = min(int(m.text_len), self.model_config.max_text_len)
    self.class_ids, self.class_mask = self.prompt_ids(self.train_classes)
    # Decode each training clip once (data.cache_frames); used by train_loader only.
    self.frame_cache = FrameCache() if config.data.cache_frames else None

  def _shape_classes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The classes a Task built for its shapes alone trains: ``data.classes``, else
    ``data.num_classes`` placeholders (every clip's label is one of them)."""
    d = self.config.data
    if d.classes or tuple(d.novel_classes or ()) == ("*",):
      return data_lib.train_classes(self.config, lambda split: [])
    if self._needs()[0] and not d.num_classes:
      raise ValueError("a ViFi-CLIP config compiled for its shapes alone needs its class count: set "
                       "data.classes or data.num_classes")
    return tuple(f"class {i}" for i in range(int(d.num_classes))), tuple(d.novel_classes or ())

  # ---- run assets ---------------------------------------------------------------

  @classmethod
  def prepare(cls, config, workdir: str) -> ml_collections.ConfigDict:
    """Writes the run's assets once (``<workdir>/vificlip/``: tokenizer, class lists, config);
    ``eval.controls`` with ``'text_only'`` adds its stage (:mod:`t5video.evaluate.controls`)."""
    # 'standins:CONFIG' in init_from.path / model.tokenizer: the stand-in CLIP `t5video standins`
    # builds and caches, resolved to its directory (what config.json then records).
    from t5video.recipes import standins  # pylint: disable=g-import-not-at-top
    if any(str(v).startswith(standins.cache.PREFIX) for v in (config.init_from.path, config.model.tokenizer)):
      config = ml_collections.ConfigDict(config.to_dict())
      config.init_from.path = standins.resolve(config.init_from.path, "clip")
      config.model.tokenizer = standins.resolve(config.model.tokenizer, "clip")
    hf_config = cfg.hf_clip_config(config.init_from.path)
    if hf_config is not None:
      # The towers' sizes written into the run's config: the workdir restores without the checkpoint.
      config = ml_collections.ConfigDict(config.to_dict())
      vision, text, projection_dim = cfg.checkpoint_towers(
          hf_config, cfg.as_dict(config.model.vision), cfg.as_dict(config.model.text), config.init_from.path)
      with config.unlocked():
        config.model.vision = {k: list(v) if isinstance(v, tuple) else v for k, v in vision.items()}
        config.model.text = text
        config.model.projection_dim = projection_dim
    if not is_workdir(workdir):
      save_workdir_assets(cls(config), workdir)
    if "text_only" in config.eval.controls and not any(
        dict(s).get("name") == controls.TEXT_ONLY_STAGE for s in config.stages):
      config = ml_collections.ConfigDict(config.to_dict())
      config.stages = tuple(config.stages) + (controls.text_only_stage(),)
    return config

  @functools.cached_property
  def predictor(self):
    """Jitted encoders, multi-view decoding and class scores (:mod:`.predict`)."""
    from t5video.recipes.vificlip import predict  # pylint: disable=g-import-not-at-top
    return predict.Predictor(self)

  # ---- data and text ---------------------------------------------------------

  def records(self, split: str, allow_empty: bool = False) -> list[VideoRecord]:
    """The records of ``split`` (read once)."""
    if split not in self._records:
      self._records[split] = data_lib.read_records(self.config.data, split, allow_empty)
    return self._records[split]

  def _tokenizer_path(self) -> str:
    m, d = self.config.model, self.config.data
    path = m.tokenizer
    if not path:
      raise ValueError("model.tokenizer must name an HF CLIP tokenizer directory or a SentencePiece "
                       ".model path (trained there from the training text when missing)")
    if path.endswith(".model") and not paths.exists(path):
      names = list(self.train_classes) + list(self.novel_classes)
      texts = data_lib.tokenizer_texts(self.config, self.records(d.train_split), names)
      if not texts:
        raise ValueError(f"cannot train the SentencePiece model {path}: no training text")
      train_sentencepiece(texts, path, vocab_size=int(m.sentencepiece_vocab))
    return path

  def _model_config(self) -> vifi.ViFiCLIPConfig:
    m = self.config.model
    vision = cfg.as_dict(m.vision)
    text = cfg.as_dict(m.text)
    hf_config = cfg.hf_clip_config(self.config.init_from.path)
    if hf_config is not None:  # the towers are the checkpoint's (model.vision / model.text may not differ)
      vision, text, projection_dim = cfg.checkpoint_towers(hf_config, vision, text, self.config.init_from.path)
      if m.projection_dim and int(m.projection_dim) != projection_dim:
        raise ValueError(f"model.projection_dim={m.projection_dim} differs from the checkpoint "
                         f"{self.config.init_from.path}'s {projection_dim} (leave it 0)")
      m = ml_collections.ConfigDict({**m.to_dict(), "projection_dim": projection_dim})
    if self.tokenizer is not None and self.tokenizer.kind == "sentencepiece":
      text.update(self.tokenizer.text_overrides())
    elif self.tokenizer is None and str(m.tokenizer).endswith(".model"):  # shapes alone, to be trained
      text["vocab_size"] = int(m.sentencepiece_vocab)
    for k, v in list(vision.items()):
      if isinstance(v, list):
        vision[k] = tuple(v)
    prompts = vifi.PromptSpec(**cfg.as_dict(m.prompts))
    return vifi.ViFiCLIPConfig.from_variant(
        m.variant, vision=vision, text=text, temporal=m.temporal, num_frames=int(self.config.data.num_frames),
        prompts=prompts, order_grid=int(m.get("order_grid", 4)),   # older run configs lack them
        order_layers=int(m.get("order_layers", 1)),
        **({"projection_dim": int(m.projection_dim)} if m.projection_dim else {}))

  def prompt_ids(self, classes: Sequence[str], template: Optional[str] = None):
    if self.tokenizer is None:  # built for its shapes alone
      shape = (len(classes), self.text_len)
      return np.zeros(shape, np.int32), np.ones(shape, np.int32)
    template = self.config.model.prompt_template if template is None else template
    return self.tokenizer([template.format(c) for c in classes], self.text_len)

  def sampling_spec(self, train: bool, num_frames: Optional[int] = None, size: Optional[int] = None):
    from t5video.data import decode  # pylint: disable=g-import-not-at-top
    d = self.config.data
    size = size or int(d.size)
    # A larger eval square (multi-crop) resizes at least to that square.
    resize_short = max(int(d.resize_short), size) if d.resize_short else None
    # The frame cache stores centre crops, so caching trades random crops for speed.
    random_crop = train and not d.cache_frames
    return decode.SamplingSpec(
        num_frames=num_frames or int(d.num_frames), mode="segment" if train else "uniform",
        size=size, resize_short=resize_short,
        crop="random" if random_crop else "center", flip=bool(d.flip) and train,
        zoom=tuple(float(z) for z in d.zoom) if train and d.get("zoom") else None)  # older runs lack it

  # ---- Task API --------------------------------------------------------------

  def frame_transforms(self) -> list:
    """After decoding: every pixel mid-grey when ``data.constant_pixels`` (the text-only control)."""
    if not self.config.data.constant_pixels:
      return []
    from t5video.data import pipeline  # pylint: disable=g-import-not-at-top
    return [pipeline.ConstantPixels({"frames": controls.CONSTANT_PIXEL})]

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

  def example_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    d = self.config.data
    frames, shape = int(d.num_frames), jax.ShapeDtypeStruct
    out = {"frames": shape((frames, int(d.size), int(d.size), 3), jnp.uint8),
           "frame_mask": shape((frames,), jnp.bool_),
           "valid": shape((), jnp.bool_)}
    cls, con = self._needs()
    if cls:
      out["label_id"] = shape((), jnp.int32)
    if con:
      out["caption_ids"] = out["caption_mask"] = shape((self.text_len,), jnp.int32)
    return out

  def eval_steps(self) -> dict[str, task_lib.EvalStep]:
    """Evaluation's program: video embeddings of a chunk of views (the class and caption
    embeddings are computed once per evaluation)."""
    from t5video.recipes.vificlip import predict  # pylint: disable=g-import-not-at-top
    shapes = {k: v for k, v in self.example_shapes().items() if k in ("frames", "frame_mask")}

    def embed(params, batch):
      return predict.video_embeddings(self.model, params, batch["frames"], batch["frame_mask"])

    return {"eval": task_lib.EvalStep(embed, shapes, predict.EMBED_BATCH, "video embeddings")}

  def train_records(self) -> list[VideoRecord]:
    """The training split without novel classes (and K-shot sampled when ``data.k_shot``)."""
    d = self.config.data
    cls, _ = self._needs()
    if cls and len(self.train_classes) < 2:
      raise ValueError(f"model.objective={self.config.model.objective!r} needs at least 2 training classes, "
                       f"got {self.train_classes} (data.novel_classes={self.novel_classes})")
    records = fraction_subset(self.records(d.train_split), float(d.train_fraction),
                              int(self.config.seed))
    if self.novel_classes:
      records = [r for r in records if r.label not in self.novel_classes]
    if cls:
      records = [r for r in records if r.label in self.class_index]
    if d.holdout_fold:  # (k, n): train without fold k of n (cross-fitting, records.fold_of)
      k, n = (int(v) for v in d.holdout_fold)
      records = [r for r in records if fold_of(r.video_id, n) != k]
    if d.k_shot:
      records = data_lib.k_shot(records, int(d.k_shot), int(d.k_shot_seed))
    if not records:
      raise ValueError(f"data: no training records left in split {d.train_split!r} after filtering")
    return records

  def train_loader(self, *, seed: int, process_index: int, process_count: int,
                   batch_size: int) -> Iterator[dict]:
    from t5video.data import pipeline  # pylint: disable=g-import-not-at-top
    d = self.config.data
    cls, con = self._needs()
    transform = data_lib.ExampleTransform(self.class_index if cls else {}, self.tokenizer, self.text_len, seed, con)
    records = self.train_records()
    balance = d.get("balance", "") or None
    pipeline.check_labels_for_balance(records, balance, f"training clips in {d.root}")
    it = pipeline.make_loader(
        records,
        transform=pipeline.VideoDecodeTransform(self.sampling_spec(True), True, seed, decoder=self.frame_cache),
        batch_size=batch_size, seed=seed, shard_index=process_index, shard_count=process_count,
        worker_count=int(d.worker_count), read_threads=int(d.read_threads), balance=balance,
        extra_transforms=(*self.frame_transforms(), transform), max_failure_ratio=d.max_failure_ratio)
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
      if train and float(m.mixup_alpha) > 0:
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
      cls_loss, logits = vifi.class_prompt_loss(video, class_text, scale, batch["label_id"],
                                                targets=targets, weights=weights)  # logits [B, C]
      loss = loss + cls_loss
      metrics["cls_loss"] = cls_loss
      metrics["accuracy"] = jnp.sum((jnp.argmax(logits, -1) == batch["label_id"]) * weights) / jnp.maximum(
          jnp.sum(weights), 1.0)
    if con:
      text = vifi.l2_normalize(apply(batch["caption_ids"], batch["caption_mask"], not train,
                                     method=vifi.ViFiCLIP.encode_text))
      nce, _ = vifi.info_nce(video, text, scale, weights)  # invalid rows/columns take no part
      loss = loss + float(m.contrastive_weight) * nce
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


  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    """Runs ``eval.protocols`` on ``eval.split`` (:func:`.evaluate.run_protocols`); with a workdir, also
    writes them to ``<workdir>/eval_metrics.json``."""
    if workdir and jax.process_index() == 0 and not is_workdir(workdir):
      save_workdir_assets(self, workdir)  # a run trained without the stage driver's prepare step
    import t5video.recipes.vificlip.evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
    from t5video.evaluate import hosts  # pylint: disable=g-import-not-at-top
    metrics = evaluate_lib.run_protocols(self, jax.device_get(hosts.local_params(params)), workdir=workdir)
    if jax.process_index() == 0:
      if workdir:  # the latest evaluation, as CaptionT5 keeps it (`t5video eval` on a copied workdir)
        paths.write_text(paths.join(workdir, "eval_metrics.json"), json.dumps(
            {"step": step, "split": self.config.eval.split, **metrics}, indent=2, default=float))
      print(evaluate_lib.format_table(metrics, self.config.eval.split), flush=True)
    return metrics


def save_workdir_assets(task: ViFiCLIPTask, workdir: str) -> str:
  """Writes ``<workdir>/vificlip/{config.json, spiece.model}`` (what :func:`.predict.restore` reads)."""
  out = paths.join(workdir, TOKENIZER_DIR)
  paths.makedirs(out)
  src = task.tokenizer.path
  if task.tokenizer.kind == "sentencepiece":
    dst = paths.join(out, "spiece.model")
    if paths.normalize(src) != paths.normalize(dst):
      paths.copy(src, dst)
  else:
    dst = paths.normalize(src)
  meta = {"config": json.loads(task.config.to_json_best_effort()), "tokenizer": dst,
          "train_classes": list(task.train_classes), "novel_classes": list(task.novel_classes)}
  paths.write_text(paths.join(out, "config.json"), json.dumps(meta, indent=2))
  return out
