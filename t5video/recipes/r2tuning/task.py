"""R2-Tuning as a t5video Task: temporal grounding on cached features of a frozen CLIP.

What trains is the R² side block and its heads (:mod:`t5video.models.r2tuning`, 2.8M
parameters at ViT-B/32 widths; the trainer prints the count); the CLIP never runs in the
training step. Its features are extracted once, when the run is prepared:

Why ``prepare`` and not a stage: a stage is a *training run* (its own trainer,
checkpoints and ``final_metrics.json``); feature extraction trains nothing, and what it
writes is an asset of the run, like the tokenizer: a deterministic function of the data and
the CLIP, fixed before ``config.json`` is saved. ``prepare`` therefore (1) renders the
synthetic set when the config asks for it, (2) fixes the CLIP (``model.clip_init``: an HF
directory, ``standins:CONFIG`` for the stand-in ``t5video standins`` builds and caches, or
empty for a random CLIP written to ``<workdir>/r2tuning/clip``) and the tokenizer, (3) extracts the
training and evaluation splits' features into ``data.feature_dir`` (resumable shard by
shard; keyed by the CLIP's weights, so runs of one CLIP share them) and (4) adds the
``text_only_trained`` control's stage when asked. The Task built later from
``config.json`` finds everything there; a split evaluated later (``t5video eval --split``)
is extracted on first use. In a multi-host job process 0 prepares first (extraction is not
split across hosts here; ``t5video extract-features`` shards a large set across hosts).

Evaluation (:mod:`.evaluate`), prediction and ``t5video ground`` (:mod:`.predict`).
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections

from t5video import config as config_lib
from t5video.data.tokenizer import ClipTextTokenizer, ensure_sentencepiece
from t5video.models import r2tuning as r2
from t5video.models import r2tuning_losses as losses
from t5video.recipes.r2tuning import config as cfg
from t5video.recipes.r2tuning import data as data_lib
from t5video.train import paths
from t5video.train import task as task_lib

TEXT_ONLY_TRAINED = "text_only_trained"


def _local_dir(path: str, what: str) -> str:
  if paths.is_remote(path):
    raise ValueError(f"{what} must be a local folder (features are memory-mapped), got {path!r}")
  return os.path.abspath(path)


def model_config(config: ml_collections.ConfigDict) -> r2.R2TuningConfig:
  """The model's hyper-parameters: the config's ``model`` section and the CLIP's widths."""
  m, d = config.model, config.data
  video_dim, tokens, query_dim = data_lib.clip_dims(m.clip_init, int(m.num_layers), int(d.size),
                                                    int(m.text_len))
  return r2.R2TuningConfig(
      video_dim=video_dim, query_dim=query_dim, num_tokens=tokens, num_layers=int(m.num_layers),
      dim=int(m.dim), strides=tuple(int(s) for s in m.strides), num_heads=int(m.num_heads),
      mlp_ratio=int(m.mlp_ratio), dropout=float(m.dropout), drop_path=float(m.drop_path),
      use_tef=bool(m.use_tef), head=m.head, max_moments=int(m.max_moments),
      sample_radius=float(m.sample_radius), loss_cls=float(m.loss_cls), loss_reg=float(m.loss_reg),
      loss_sal=float(m.loss_sal), loss_video_cal=float(m.loss_video_cal),
      loss_layer_cal=float(m.loss_layer_cal), highlight_only=bool(m.highlight_only), dtype=m.dtype)


class R2TuningTask(task_lib.Task):
  """The R2-Tuning recipe (see the module docstring)."""

  CONFIG_MODULE = cfg

  def __init__(self, config, *, shapes_only: bool = False):
    super().__init__(config, shapes_only=shapes_only)
    config_lib.fill_defaults(config, cfg.base_config())
    cfg.validate(config)
    if shapes_only and not config.model.clip_init:
      raise ValueError("an R2-Tuning config compiled for its shapes alone needs model.clip_init (an HF CLIP "
                       "directory or the name of a catalogued one, e.g. clip-vit-base-patch32)")
    if not shapes_only and (not config.model.clip_init or not config.model.tokenizer
                            or not config.data.feature_dir):
      raise ValueError("model.clip_init, model.tokenizer and data.feature_dir are set when the run "
                       "is prepared (t5video train does it); this config was not")
    self.model_config = model_config(config)
    self.model = r2.R2Tuning(self.model_config)

  # ---- run assets ---------------------------------------------------------------

  @classmethod
  def prepare(cls, config, workdir: str) -> ml_collections.ConfigDict:
    """Renders, fixes the CLIP and tokenizer, extracts features (see the module docstring)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config_lib.fill_defaults(config, cfg.base_config())
    cfg.validate(config)
    d, m = config.data, config.model
    if d.root:
      d.root = _local_dir(d.root, "data.root")
    data_lib.render_synthetic(d)
    train = data_lib.read_queries(d, d.train_split)
    evaluated = data_lib.read_queries(d, config.eval.split, int(config.eval.max_queries))
    assets = os.path.join(_local_dir(workdir, "the workdir of an R2-Tuning run"), data_lib.ASSETS)
    os.makedirs(assets, exist_ok=True)
    d.feature_dir = _local_dir(d.feature_dir or os.path.join(workdir, "features"), "data.feature_dir")
    m.clip_init = data_lib.resolve_clip(m.clip_init)
    if not m.tokenizer:
      m.tokenizer = m.clip_init or ensure_sentencepiece(
          os.path.join(assets, "spiece.model"), [r["query"] for r in train.rows],
          int(m.sentencepiece_vocab))
    tokenizer = ClipTextTokenizer(m.tokenizer)
    if not m.clip_init:
      m.clip_init = os.path.join(assets, "clip")
      if not os.path.isfile(os.path.join(m.clip_init, "config.json")):
        data_lib.write_random_clip(config, tokenizer, m.clip_init)
    towers = data_lib.load_clip(m.clip_init, int(m.num_layers))
    data_lib.ensure_features(config, train, towers, tokenizer)
    data_lib.ensure_features(config, evaluated, towers, tokenizer)
    if TEXT_ONLY_TRAINED in config.eval.controls and not any(
        dict(s).get("name") == _text_only_stage()["name"] for s in config.stages):
      config.stages = tuple(config.stages) + (_text_only_stage(),)
    return config

  @functools.cached_property
  def towers(self) -> data_lib.ClipTowers:
    """The frozen CLIP (loaded on first use: evaluation, ``ground``)."""
    return data_lib.load_clip(self.config.model.clip_init, int(self.config.model.num_layers))

  @functools.cached_property
  def tokenizer(self) -> ClipTextTokenizer:
    return ClipTextTokenizer(self.config.model.tokenizer)

  def features(self, queries: data_lib.QuerySet) -> data_lib.SplitFeatures:
    """The split's cached features (extracted now when missing)."""
    return data_lib.ensure_features(self.config, queries, self.towers, self.tokenizer)

  def source(self, queries: data_lib.QuerySet, **kwargs) -> data_lib.QuerySource:
    """The split's examples; ``data.constant_pixels`` makes every video blank."""
    kwargs.setdefault("blank", bool(self.config.data.constant_pixels))
    return data_lib.QuerySource(queries, self.features(queries), self.towers.vision_layers,
                                self.config, **kwargs)

  # ---- Task API --------------------------------------------------------------

  def init_params(self, rng: jax.Array):
    c = self.model_config
    t = max(16, max(c.strides))
    video = jnp.zeros((1, c.num_layers, t, c.num_tokens, c.video_dim), jnp.float32)
    query = jnp.zeros((1, c.num_layers, int(self.config.model.text_len), c.query_dim), jnp.float32)
    return self.model.init({"params": rng}, video, jnp.ones((1, t)), query,
                           jnp.ones((1, query.shape[2])))["params"]

  def batch_spec(self) -> dict[str, tuple]:
    return {"video": ("act_batch", None, "act_frames", None, None),
            "video_mask": ("act_batch", "act_frames"),
            "query": ("act_batch", None, "act_len", None),
            "query_mask": ("act_batch", "act_len"),
            "boundaries": ("act_batch", None, None),
            "boundary_mask": ("act_batch", None),
            "saliency": ("act_batch", "act_frames"),
            "pos_clip": ("act_batch",),
            "valid": ("act_batch",)}

  def example_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    c, d, shape = self.model_config, self.config.data, jax.ShapeDtypeStruct
    clips, text_len, windows = int(d.max_clips), int(self.config.model.text_len), int(d.max_windows)
    return {"video": shape((c.num_layers, clips, c.num_tokens, c.video_dim), jnp.float16),
            "video_mask": shape((clips,), jnp.int32),
            "query": shape((c.num_layers, text_len, c.query_dim), jnp.float16),
            "query_mask": shape((text_len,), jnp.int32),
            "boundaries": shape((windows, 2), jnp.float32),
            "boundary_mask": shape((windows,), jnp.float32),
            "saliency": shape((clips,), jnp.float32),
            "pos_clip": shape((), jnp.int32),
            "valid": shape((), jnp.bool_)}

  def eval_steps(self) -> dict[str, task_lib.EvalStep]:
    """Evaluation's program: moments and saliency of a batch of queries (cached features)."""
    from t5video.recipes.r2tuning import predict  # pylint: disable=g-import-not-at-top
    keys = ("video", "video_mask", "query", "query_mask")
    program = predict.task_inference(self)
    shapes = {k: v for k, v in self.example_shapes().items() if k in keys}
    return {"eval": task_lib.EvalStep(lambda params, batch: program(params, *(batch[k] for k in keys)),
                                      shapes, int(self.config.eval.batch_size), "moments and saliency")}

  def train_loader(self, *, seed: int, process_index: int, process_count: int,
                   batch_size: int) -> Iterator[dict]:
    from t5video.data import pipeline  # pylint: disable=g-import-not-at-top
    d = self.config.data
    source = self.source(data_lib.read_queries(d, d.train_split))
    it = pipeline.make_loader(
        source, transform=pipeline.PassThrough(), batch_size=batch_size, seed=seed,
        shard_index=process_index, shard_count=process_count, worker_count=int(d.worker_count),
        read_threads=int(d.read_threads),
        extra_transforms=(data_lib.TrainExample(seed, max(self.model_config.strides),
                                                above_median=self.model_config.highlight_only),))
    return pipeline.KeyFilterIterator(it, list(self.batch_spec()))

  def loss_fn(self, params, batch, rng, *, train: bool):
    out = self.model.apply({"params": params}, batch["video"], batch["video_mask"], batch["query"],
                           batch["query_mask"], deterministic=not train, rngs={"dropout": rng})
    total, parts = losses.r2tuning_loss(out, batch, self.model_config)
    return total, {f"loss_{k}": v for k, v in parts.items()}

  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    """Moment retrieval and highlight detection on ``eval.split`` with the controls and
    baselines (:func:`.evaluate.run`)."""
    del step
    from t5video.evaluate import hosts  # pylint: disable=g-import-not-at-top
    from t5video.recipes.r2tuning import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
    split = self.config.data.get("eval_split") or self.config.eval.split  # `t5video eval --split`
    return evaluate_lib.run(self, jax.device_get(hosts.local_params(params)), split=split,
                            workdir=workdir)

  def ground(self, params, query: str, videos, **kwargs):
    """``t5video ground``: see :func:`.predict.ground`."""
    from t5video.recipes.r2tuning import predict  # pylint: disable=g-import-not-at-top
    return predict.ground(self, params, query, videos, **kwargs)


def _text_only_stage() -> dict:
  from t5video.evaluate import controls  # pylint: disable=g-import-not-at-top
  return controls.text_only_stage()
