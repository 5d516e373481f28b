"""CaptionT5's task: what the trainer needs (init, batch spec, loader, loss,
pretrained weights), and the run's preparation (assets and earlier stages).

Thought-augmented video-to-text with one T5 for captions, classes and tags. The
data side is :mod:`.data`, prediction :mod:`.predict`, evaluation :mod:`.evaluate`.
"""

from __future__ import annotations

import collections
import functools
import os
import re
from typing import Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from t5video import config as config_lib
from t5video.data import decode as decode_lib
from t5video.data import pipeline
from t5video.data import thoughts as thoughts_lib
from t5video.data.frame_cache import FrameCache
from t5video.data.records import fraction_subset
from t5video.evaluate import controls as controls_lib
from t5video.models import hf
from t5video.models import peft
from t5video.models.captiont5 import CaptionT5, caption_loss
from t5video.recipes.captiont5 import config as cfg
from t5video.recipes.captiont5 import data as data_lib
from t5video.recipes.captiont5 import drafts as drafts_lib
from t5video.recipes.captiont5.config import build_model_config
from t5video.recipes.captiont5.evaluate import EvalMixin
from t5video.recipes.captiont5.predict import PredictMixin
from t5video.train import checkpoint as checkpoint_lib
from t5video.train import paths
from t5video.train import task as task_lib

ASSETS_DIR = "assets"  # <workdir>/assets/: tokenizer and concept list written when the run is prepared


def class_names(records, data: ml_collections.ConfigDict) -> list[str]:
  """Every label of the training and evaluation splits, sorted."""
  splits = dict.fromkeys((data.train_split, data.eval_split))
  return sorted({r.label for s in splits for r in records[s] if r.label})


def merge_subtree(params: dict, key: str, loaded: dict, path: str) -> dict:
  """``params[key] <- loaded`` leaf by leaf, checking shapes; new leaves (LoRA, adapters) kept."""
  flat_new = dict(peft.path_strings(loaded))
  missing = []

  def walk(node, prefix):
    if isinstance(node, dict):
      return {k: walk(v, f"{prefix}/{k}" if prefix else k) for k, v in node.items()}
    if prefix in flat_new:
      value = flat_new.pop(prefix)
      if tuple(value.shape) != tuple(node.shape):
        raise ValueError(f"{path}: {key}/{prefix} has shape {value.shape}, the model wants {node.shape}")
      return jnp.asarray(value, node.dtype)
    missing.append(prefix)
    return node

  params = dict(params)
  params[key] = walk(params[key], "")
  extra = [k for k in flat_new if not k.startswith("visual_projection") and not k.startswith("text_")]
  if extra:
    logging.info("%s: %d checkpoint tensors unused by CaptionT5 (e.g. %s)", path, len(extra), extra[:3])
  new_only = [m for m in missing if re.search(r"lora_|adapter", m) is None]
  if new_only:
    raise ValueError(f"{path}: the checkpoint lacks {len(new_only)} tensors the model needs, "
                     f"e.g. {new_only[:5]}")
  return params



# =============================================================================
# The task
# =============================================================================

class CaptionT5Task(EvalMixin, PredictMixin, data_lib.DataMixin, task_lib.Task):
  """The CaptionT5 recipe for the trainer (see the module docstring)."""

  CONFIG_MODULE = cfg  # the schema: base_config(), validate(), OPEN_SECTIONS

  def __init__(self, config: ml_collections.ConfigDict, *, shapes_only: bool = False):
    # Runs saved before a key existed restore with its default (``config.json`` of old workdirs).
    config_lib.fill_defaults(config, cfg.base_config())
    super().__init__(config, shapes_only=shapes_only)
    cfg.check_init_dirs(config)
    self.root = data_lib.data_root(config.data) if config.data.root or not shapes_only else ""
    # Read on first use: a prepared run's Task (eval, caption) needs no dataset to be built.
    self.records = data_lib._Splits(lambda split: data_lib.read_split(config.data, self.root, split))
    self.features_shape = self._features_shape()  # (frames, [tokens,] width) or None
    self.model_config = build_model_config(
        config, self._vocab_size(), feature_dim=self.features_shape[-1] if self.features_shape else None)
    self.model = CaptionT5(self.model_config)
    cfg.validate(config)
    self.thought_cfg = thoughts_lib.ThoughtConfig(
        sources=tuple(config.thoughts.sources), dropout=config.thoughts.dropout,
        drop_all=config.thoughts.drop_all, top_k=config.thoughts.top_k,
        metadata_fields=tuple(config.thoughts.metadata_fields))
    d = config.data
    self.spec = decode_lib.SamplingSpec(num_frames=d.num_frames, mode="segment", size=d.size,
                                        resize_short=d.get("resize_short") or None,
                                        crop="center", flip=False)
    self.frame_cache = FrameCache() if d.cache_frames else None
    self._concepts: Optional[dict[str, list[str]]] = None
    self._concept_paths: dict[str, str] = {}  # training clip -> the video its concepts come from
    self._clip_scorers: Optional[list] = None
    self._concept_scorers: Optional[list] = None  # thoughts.concepts_clip's, when set
    self.concept_sims: dict = {}  # training clip -> its [vocab] similarities (concepts())

  @functools.cached_property
  def class_names(self) -> list[str]:
    """``data.class_names``, else every label of the training and evaluation splits."""
    return list(self.config.data.class_names) or class_names(self.records, self.config.data)

  @functools.cached_property
  def tokenizer(self):
    """``text.tokenizer``, the T5 checkpoint's, or one trained on the training text (first use)."""
    return self._tokenizer()

  def _vocab_size(self) -> int:
    """The tokenizer's size, which sizes a T5 from scratch (an HF T5's config.json has its own).
    For its shapes alone, a tokenizer still to be trained has ``text.vocab_size`` pieces."""
    c = self.config
    if c.model.t5_init:
      return 0  # unused: the checkpoint's config.json sizes the T5
    if self.shapes_only and not c.text.tokenizer:
      return int(c.text.vocab_size)
    return self.tokenizer.vocab_size

  @functools.cached_property
  def train_class_counts(self) -> collections.Counter:
    """Training clips per class (evaluation: tail classes, the class-prior baseline)."""
    return collections.Counter(r.label for r in self.records[self.config.data.train_split] if r.label)

  @functools.cached_property
  def caption_prior(self) -> collections.Counter:
    """Training captions by frequency (the most-frequent-caption baseline)."""
    return collections.Counter(c for r in self.records[self.config.data.train_split] for c in r.captions)

  def trainable(self) -> str:
    """The regex of the params that train: ``optim.trainable``, or when it is empty
    and ``peft.method`` is not ``'full'``, the PEFT method's own set (the
    optimizer then keeps state for those alone)."""
    if self.config.peft.method == "full" or self.config.optim.trainable:
      return self.config.optim.trainable
    t5c, p = self.model_config.t5, self.config.peft
    return peft.trainable_regex(p.method, last_n=p.last_n, num_layers=t5c.num_layers,
                                num_decoder_layers=t5c.num_decoder_layers, bridge=p.bridge)

  def qa_pairs(self, split: str) -> dict[str, list[dict]]:
    """``{video_id: QA pairs}`` of a split's records that have them (:mod:`t5video.data.qa`)."""
    from t5video.data import qa as qa_lib  # pylint: disable=g-import-not-at-top
    return {r.video_id: qa_lib.check_pairs(r.extra["qa"], f"{split} clip {r.video_id}")
            for r in self.records[split] if r.extra.get("qa")}

  def rerank_candidates(self) -> int:
    """``eval.rerank.candidates``, or 0 on cached features (re-ranking needs decoded frames)."""
    return 0 if self.config.data.features_dir else int(self.config.eval.rerank.candidates)

  # ---- run assets and stages ------------------------------------------------------
  @classmethod
  def prepare_eval_data(cls, config: ml_collections.ConfigDict) -> None:
    """A synthetic dataset the config asks for is rendered if absent (a held-out rendering); a
    folder rendered with other settings is an error, not replaced."""
    data_lib.prepare_data(config.data, rerender=False)

  @classmethod
  def prepare(cls, config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Renders the data if needed and resolves the config into the one that trains.

    Writes the run's assets into ``<workdir>/assets/`` once (the tokenizer, the
    concept list) and points the config at them, fixes the class list and the
    PEFT trainable set, and turns ``thoughts.clip_stage`` into ``config.stages``.
    ``eval`` and ``caption`` then need only the workdir.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config_lib.fill_defaults(config, cfg.base_config())
    workdir = paths.normalize(workdir)
    data_lib.prepare_data(config.data)
    # 'standins:CONFIG' is the project's stand-in CLIP / T5 (built once, cached): the directory
    # is what config.json records, as a user's checkpoint directory would be.
    from t5video.recipes import standins  # pylint: disable=g-import-not-at-top
    config.model.clip_init = standins.resolve(config.model.clip_init, "clip")
    config.model.t5_init = standins.resolve(config.model.t5_init, "t5")
    config.thoughts.concepts_clip = standins.resolve(config.thoughts.concepts_clip, "clip")
    task = cls(config)
    task.check_balance()  # before any stage runs
    assets = paths.join(workdir, ASSETS_DIR)
    paths.makedirs(assets)
    with config.unlocked():
      config.data.class_names = tuple(task.class_names)
      config.optim.trainable = task.trainable()
      if task.rerank_candidates() != config.eval.rerank.candidates:
        logging.warning("eval.rerank needs decoded frames for the video-text CLIP; training on cached "
                        "features (data.features_dir), so re-ranking is off")
        config.eval.rerank.candidates = 0
      src = getattr(task.tokenizer, "model_file", "")  # a SentencePiece model (an HF one stays put)
      if src:
        dst = paths.join(assets, "spiece.model")
        if not paths.exists(dst):
          paths.copy(src, dst)
        config.text.tokenizer = dst
      if "concepts" in config.thoughts.sources and not config.thoughts.concepts_file:
        dst = paths.join(assets, "concepts.txt")
        if not paths.exists(dst):
          paths.write_text(dst, "".join(c + "\n" for c in task.concept_vocabulary()))
        config.thoughts.concepts_file = dst
      task.workdir = workdir
      if not config.stages:
        config.stages = tuple(task.clip_stages())
        if drafts_lib.uses_model_drafts(config):
          # the draft model shares this run's video-text CLIP (no second CLIP stage)
          clip = task.clip_dirs()
          config.stages += tuple(drafts_lib.stages(
              config, {"thoughts": {"clip_workdir": clip[0]}} if task.needs_clip() and clip else {}))
          config.thoughts.drafts.file = drafts_lib.drafts_file(workdir)
      if "text_only" in config.eval.controls and not any(
          dict(s).get("name") == controls_lib.TEXT_ONLY_STAGE for s in config.stages):
        config.stages = tuple(config.stages) + (task.text_only_stage(),)
    return config

  def text_only_stage(self) -> dict:
    """The text-only control as a stage (:func:`t5video.evaluate.controls.text_only_stage`):
    this config on constant pixels, sharing this run's video-text CLIP (trained on real
    frames; on constant frames its concepts and re-ranking scores carry nothing of the clip)."""
    clip = self.clip_dirs()
    return controls_lib.text_only_stage(
        {"thoughts": {"clip_workdir": clip[0]}} if self.needs_clip() and clip else {})

  def clip_stages(self) -> list[dict]:
    """The ViFi-CLIP stage(s) this run needs first, as stage entries (``t5video.train.stages``).

    ``thoughts.clip_stage.config`` pointed at this run's data (every class, no
    rendering), one per fold when cross-fitted, each in ``<workdir>/vificlip*``.
    """
    tc = self.config.thoughts
    if not (self.needs_clip() and not tc.clip_workdir and tc.clip_stage.config and self.workdir):
      return []
    dirs = self.clip_dirs()
    return [{"name": os.path.basename(d), "config": tc.clip_stage.config, "workdir": os.path.basename(d),
             "overrides": self.clip_stage_overrides(k if len(dirs) > 1 else None)}
            for k, d in enumerate(dirs)]

  def clip_stage_overrides(self, fold: Optional[int] = None) -> dict:
    """What the CLIP stage's config file changes to train on this run's data."""
    st, d = self.config.thoughts.clip_stage, self.config.data
    base = config_lib.load_config_file(st.config)
    data = {"root": self.root, "layout": "generic" if d.layout == "synthetic" else d.layout,
            "layout_kwargs": ({"annotation_path": os.path.join(self.root, d.annotations), "video_root": self.root}
                              if d.layout in ("synthetic", "generic") and d.annotations else {}),
            "train_split": d.train_split, "novel_classes": (), "classes": (),
            "train_fraction": float(d.train_fraction),  # the same seeded subset of training clips
            "balance": st.get("balance", "")}
    if base.data.get("synthetic"):
      data["synthetic"] = {"num_videos": 0}  # the data is here already
    if st.get("num_frames"):
      data["num_frames"] = int(st.num_frames)
    if fold is not None:
      data["holdout_fold"] = (fold, int(st.folds))
    stage_dir = self.clip_dirs()[fold or 0]
    overrides = {"seed": self.config.seed, "data": data,
                 "eval": {"split": d.eval_split, "novel_extra_splits": (),
                          "protocols": tuple(p for p in base.eval.protocols if p != "zero_shot"),
                          "controls": tuple(c for c in base.eval.get("controls", ()) if c != "text_only")},
                 "train": {"num_steps": int(st.num_steps)}}
    # A SentencePiece model trained on this run's text goes into the stage's own folder; an HF
    # tokenizer (a checkpoint's, e.g. the stand-in CLIP's) stays where it is. (No empty 'model'
    # entry: an empty dict replaces a whole section, t5video.train.stages.merge.)
    if str(base.model.tokenizer).endswith(".model"):
      overrides["model"] = {"tokenizer": os.path.join(stage_dir, "vificlip_spiece.model")}
    return overrides

  def clip_stage_config(self, fold: Optional[int] = None) -> ml_collections.ConfigDict:
    """``thoughts.clip_stage.config`` with :meth:`clip_stage_overrides` applied."""
    from t5video.train import stages  # pylint: disable=g-import-not-at-top
    return stages.stage_config({"config": self.config.thoughts.clip_stage.config,
                                "overrides": self.clip_stage_overrides(fold)})

  # ---- Task API -------------------------------------------------------------------
  def _dummy(self, batch: int = 1):
    t = self.config.text
    return dict(
        input_ids=jnp.zeros((batch, t.max_input_len), jnp.int32),
        attention_mask=jnp.ones((batch, t.max_input_len), jnp.int32),
        decoder_input_ids=jnp.zeros((batch, t.max_target_len), jnp.int32),
        **self._visual_dummy(batch))

  def _visual_dummy(self, batch: int) -> dict:
    d = self.config.data
    if self.features_shape:
      return dict(features=jnp.zeros((batch,) + self.features_shape, jnp.float32),
                  frame_mask=jnp.ones((batch, self.features_shape[0]), jnp.int32))
    return dict(pixel_values=jnp.zeros((batch, d.num_frames, d.size, d.size, 3), jnp.float32),
                frame_mask=jnp.ones((batch, d.num_frames), jnp.int32))

  def init_params(self, rng):
    return self.model.init({"params": rng, "dropout": rng}, **self._dummy())["params"]

  def batch_spec(self) -> dict[str, tuple]:
    visual = ({"features": ("act_batch", "act_frames") + (None,) * (len(self.features_shape) - 1)}
              if self.features_shape else {"frames": ("act_batch", "act_frames", None, None, None)})
    return {
        **visual,
        "frame_mask": ("act_batch", "act_frames"),
        "input_ids": ("act_batch", "act_len"),
        "attention_mask": ("act_batch", "act_len"),
        "decoder_input_ids": ("act_batch", "act_len"),
        "decoder_target": ("act_batch", "act_len"),
        "decoder_mask": ("act_batch", "act_len"),
        "task_id": ("act_batch",),
        "weight": ("act_batch",),
    }

  def example_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    d, t = self.config.data, self.config.text
    frames, lin, lout = int(d.num_frames), int(t.max_input_len), int(t.max_target_len)
    shape = jax.ShapeDtypeStruct
    visual = ({"features": shape(tuple(self.features_shape), jnp.float32)} if self.features_shape
              else {"frames": shape((frames, int(d.size), int(d.size), 3), jnp.uint8)})
    return {
        **visual,
        "frame_mask": shape((frames,), jnp.int32),
        **{k: shape((lin,), jnp.int32) for k in ("input_ids", "attention_mask")},
        **{k: shape((lout,), jnp.int32) for k in ("decoder_input_ids", "decoder_target", "decoder_mask")},
        "task_id": shape((), jnp.int32),
        "weight": shape((), jnp.float32),
    }

  def training_drafts(self) -> Optional[dict[str, str]]:
    """The training clips' drafts (``thoughts.drafts.source='model'``), or None (no draft
    thought, or corrupted references)."""
    if not drafts_lib.uses_model_drafts(self.config):
      return None
    path = self.config.thoughts.drafts.file
    if not path:
      raise ValueError("thoughts.drafts.source='model' needs thoughts.drafts.file (written by the "
                       "run's 'drafts' stage; train through `t5video train`, which runs the stages)")
    return drafts_lib.read(path)

  def _text_transform(self, seed: int) -> data_lib.TextTransform:
    vocab = []
    if paths.exists(os.path.join(self.root, "concepts.txt")):
      vocab = self.concept_vocabulary()
    return data_lib.TextTransform(
        self.tokenizer, tasks=dict(self.config.tasks), thought_cfg=self.thought_cfg,
        max_input_len=self.config.text.max_input_len,
        max_target_len=self.config.text.max_target_len, seed=seed,
        concepts=self.concepts(), draft_vocab=[w for c in vocab for w in c.split()],
        concept_sampling=self._concept_sampling(),
        drafts=self.training_drafts(),
        features_key=self.config.data.features_layer if self.features_shape else "",
        qa=self.qa_pairs(self.config.data.train_split) if self.config.tasks.get("qa", 0.0) else None)

  def _concept_sampling(self) -> Optional[data_lib.ConceptSampling]:
    """How training draws its concepts: by similarity (``thoughts.concept_train='sample'``), or
    None (each clip's top ``k``, as evaluation takes them)."""
    tc = self.config.thoughts
    if tc.concept_train != "sample" or not self.concept_sims:
      return None
    return data_lib.ConceptSampling(vocab=tuple(self.concept_vocabulary()), sims=self.concept_sims,
                                    temperature=float(tc.concept_temperature))

  def check_balance(self, records=None) -> None:
    """``data.balance`` samples by class: every training clip needs a label (one line otherwise)."""
    d = self.config.data
    if d.balance:
      records = self.records[d.train_split] if records is None else records
      pipeline.check_labels_for_balance(records, d.balance, f"{d.train_split!r} clips in {self.root}")

  def train_loader(self, *, seed, process_index, process_count, batch_size):
    d = self.config.data
    records = fraction_subset(self.records[d.train_split], d.train_fraction, seed)
    self.check_balance(records)
    if self.features_shape:
      source, transform = self.feature_source(d.train_split), pipeline.PassThrough()
      if d.train_fraction < 1.0:
        raise ValueError("data.train_fraction < 1 is not supported with cached features")
    else:
      source = records
      transform = pipeline.VideoDecodeTransform(self.spec, train=True, seed=seed,
                                                decoder=self.frame_cache)
    it = pipeline.make_loader(
        source, transform=transform,
        batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None,
        shard_index=process_index, shard_count=process_count, worker_count=d.worker_count,
        balance=d.balance or None, extra_transforms=[*self.frame_transforms(), self._text_transform(seed)],
        max_failure_ratio=d.max_failure_ratio, read_threads=d.read_threads)
    return pipeline.KeyFilterIterator(it, list(self.batch_spec()))

  def loss_fn(self, params, batch, rng, *, train: bool):
    trained = {name: tid for name, tid in data_lib.TASK_IDS.items() if self.config.tasks.get(name, 0.0)}
    return caption_loss(self.model, params, batch, rng, train=train,
                        label_smoothing=self.config.loss.label_smoothing, task_ids=trained)

  def has_pretrained(self, init_from) -> bool:
    m = self.config.model
    return bool(init_from.path or m.t5_init or (m.clip_init and not self.features_shape)
                or self.vision_init_dir())

  def ordered_transfer(self, vifi_params: dict) -> bool:
    """Whether CaptionT5's grid tokens and temporal module start from the ViFi-CLIP run's
    ordered read-out: the run has one and the model reads the pooled grid the same way."""
    m = self.config.model
    if "ordered" not in vifi_params or m.visual_tokens != "grid":
      return False
    t = m.temporal
    if t.get("frame_tokens", "keep") != "flatten" or t.get("kind") != "transformer":
      raise ValueError("model.visual_tokens='grid' from an ordered ViFi-CLIP run needs model.temporal.kind="
                       f"'transformer' and frame_tokens='flatten' (as its read-out), got {dict(t)}")
    from t5video.models import vificlip as vificlip_lib  # pylint: disable=g-import-not-at-top
    heads = vificlip_lib.ordered_readout_heads(vifi_params["vision_model"]["post_layernorm"]["scale"].shape[0])
    if t.get("num_heads") != heads:
      raise ValueError(f"model.temporal.num_heads={t.get('num_heads')}: the ordered read-out it starts from "
                       f"has {heads} heads")
    return True

  def load_pretrained(self, params, init_from):
    """``init_from.path``: a t5video workdir/checkpoint (Orbax, by regex); HF dirs come
    from ``model.clip_init`` / ``model.t5_init``; the vision tower of a ViFi-CLIP run from
    :meth:`vision_init_dir`."""
    m = self.config.model
    params = nn.unbox(params)
    vifi_dir = self.vision_init_dir()
    tower = None  # (vision_model params, their source) of the tower that was loaded
    if vifi_dir:
      from t5video.recipes.vificlip import predict as vificlip_predict  # pylint: disable=g-import-not-at-top
      _, vifi_params = vificlip_predict.restore(vifi_dir)
      print(f"vision tower from the ViFi-CLIP run {vifi_dir}", flush=True)
      tower = (vifi_params["vision_model"], vifi_dir)
      if self.ordered_transfer(vifi_params):
        # ViFi-CLIP's ordered read-out: its temporal module over the pooled grid starts CaptionT5's
        # (the read-out's order_projection has no counterpart).
        print(f"temporal module from the ordered read-out of {vifi_dir}", flush=True)
        params = merge_subtree(params, "temporal", vifi_params["ordered"]["temporal"], vifi_dir)
      if m.get("video_token"):
        # the run's video encoder: its per-frame projection and (ordered) read-out
        print(f"video token: the video embedding of {vifi_dir}", flush=True)
        params = merge_subtree(params, "video_projection", vifi_params["visual_projection"], vifi_dir)
        if m.video_token == "ordered":
          params = merge_subtree(params, "ordered", vifi_params["ordered"], vifi_dir)
    elif m.clip_init and not self.features_shape:
      _, clip_params = hf.load_hf(m.clip_init)
      tower = (clip_params["vision_model"], m.clip_init)
      if m.get("video_token"):  # an image CLIP: its image projection (the ordered read-out starts at zero)
        params = merge_subtree(params, "video_projection", clip_params["visual_projection"], m.clip_init)
    if tower is not None:
      vision_params, source = tower
      params = merge_subtree(params, "clip", {"vision_model": vision_params}, source)
      if "grid_norm" in params:
        # the patch tokens are normalised as the tower normalises its class token (and as
        # ViFi-CLIP's ordered read-out normalises the same patch tokens)
        params = merge_subtree(params, "grid_norm", vision_params["post_layernorm"], source)
    if m.t5_init:
      _, t5_params = hf.load_hf(m.t5_init, scan_layers=self.model_config.t5.scan_layers)
      params = merge_subtree(params, "t5", t5_params, m.t5_init)
    if init_from.path:
      if vifi_dir or m.clip_init or m.t5_init:
        # The merged leaves sit on one device; as host arrays they go wherever the rest is placed
        # (load_params_by_regex would otherwise pin the checkpoint's values to that one device).
        params = jax.device_get(params)
      params = super().load_pretrained(params, init_from)
    return params



def restore_run(workdir: str) -> tuple[CaptionT5Task, dict]:
  """``(task, params)``: the CaptionT5 run in ``workdir`` and its latest params (host numpy)."""
  workdir = paths.normalize(workdir)
  config = config_lib.load_run_config(workdir)
  if config.task != "captiont5":
    raise ValueError(f"{workdir}: a {config.task!r} run, not a CaptionT5 one")
  task = CaptionT5Task(config)
  task.workdir = workdir
  abstract = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.PRNGKey(0))))
  return task, checkpoint_lib.restore_params(workdir, abstract)
