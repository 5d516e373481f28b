"""R2-Tuning's config schema: every key with its default, and its value checks.

Defaults are the paper's QVHighlights values (R²-Tuning, ECCV 2024, and its public
configs): a frozen CLIP, the last 4 layers, every token, one frame per 2-second clip,
the R² block at width 256 with 8 heads, losses 1.0 / 0.2 / 0.1 / 0.1 / 0.1, AdamW 5e-4,
weight decay 1e-4, 500 warm-up steps, gradient clipping 35, batch 128.
"""

from __future__ import annotations

import math
import os

import ml_collections

from t5video.config import checkpoint_dir

HEADS = ("r2", "meanpool")
# 'other_frames' and 'text_only' are computed at evaluation time from the trained model
# (another video's features / a blank video's); 'text_only_trained' trains the recipe again
# on blank videos (a stage, t5video.evaluate.controls.text_only_stage) and reports its numbers.
CONTROLS = ("other_frames", "text_only", "text_only_trained")
NMS_KINDS = ("normal", "linear", "gaussian")
HIGHLIGHT_METRICS = ("", "tvsum", "youtube")

# Free-form sections: the random CLIP's tower overrides, layout and renderer arguments.
OPEN_SECTIONS = ("model.clip", "data.layout_kwargs", "data.synthetic")


def base_config() -> ml_collections.ConfigDict:
  """Every key of an R2-Tuning config with its default (the engine's sections included)."""
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  c = trainer.default_config()
  c.task = "r2tuning"
  c.stages = ()
  c.train.batch_size = 128
  c.optim.learning_rate = 5e-4
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 500
  c.optim.clip_norm = 35.0

  c.model = ml_collections.ConfigDict()
  c.model.head = "r2"               # 'r2' (the R² block) | 'meanpool' (the ablation baseline)
  c.model.num_layers = 4            # the last K CLIP layers of both towers
  c.model.dim = 256
  c.model.num_heads = 8
  c.model.mlp_ratio = 4
  c.model.dropout = 0.5
  c.model.drop_path = 0.1
  c.model.use_tef = True
  c.model.strides = (1, 2, 4, 8)
  c.model.max_moments = 50
  c.model.sample_radius = 1.5
  c.model.loss_cls = 1.0
  c.model.loss_reg = 0.2
  c.model.loss_sal = 0.1
  c.model.loss_video_cal = 0.1
  c.model.loss_layer_cal = 0.1
  # Highlight detection only (TVSum, YouTube Highlights: per-clip scores, no moments): no
  # boundary head, BCE of each clip's logit against its score, saliency = sigmoid(logit).
  # Needs model.strides=(1,).
  c.model.highlight_only = False
  c.model.dtype = "float32"
  # The frozen CLIP: an HF CLIP directory (config.json + weights, e.g. openai/clip-vit-base-patch32);
  # 'standins:configs/standins/default.py': the stand-in CLIP `t5video standins` builds (cached);
  # '': a CLIP of random weights (model.clip sizes, model.clip_seed) written to
  # <workdir>/r2tuning/clip when the run is prepared. The resolved directory is saved.
  c.model.clip_init = ""
  c.model.clip = {}                 # the random CLIP: {'vision': {...}, 'text': {...}} overrides
  c.model.clip_seed = 0
  # '' = the CLIP directory's tokenizer, or (random CLIP) a SentencePiece model trained on the
  # training queries at prepare time.
  c.model.tokenizer = ""
  c.model.sentencepiece_vocab = 256
  c.model.text_len = 32

  c.data = ml_collections.ConfigDict()
  c.data.layout = "qvhighlights"    # highlight_{split}_release.jsonl + videos/ under data.root
  c.data.root = ""
  c.data.layout_kwargs = {}
  c.data.synthetic = {}             # render_grounding_dataset arguments (num_videos > 0: render)
  c.data.train_split = "train"
  c.data.domain = ""                # keep only the lines of this 'domain' (TVSum, YouTube Highlights)
  c.data.fps = 0.5                  # one frame per 2-second clip
  c.data.max_clips = 75             # clips per video (150 s at 0.5 fps); longer videos are cut
  c.data.max_windows = 4            # ground-truth windows kept per query
  c.data.size = 224
  c.data.resize_short = 224
  c.data.feature_dir = ""           # '' = <workdir>/features; share it between runs of one CLIP
  c.data.feature_dtype = "float16"
  c.data.extract_batch = 4          # videos per CLIP forward pass during extraction
  c.data.extract_workers = 0
  c.data.worker_count = 0
  c.data.read_threads = 2
  c.data.max_failure_ratio = 0.05
  c.data.constant_pixels = False    # every video blank in training and evaluation (the
                                    # 'text_only_trained' control's stage)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "val"
  c.eval.batch_size = 32
  c.eval.protocol = "moment_detr"   # or 'r2tuning' (t5video.evaluate.grounding.PROTOCOLS)
  c.eval.nms = ""                   # '' | 'normal:0.7' | 'linear:0.7' | 'gaussian:0.7'
  c.eval.max_queries = 0            # 0 = all
  c.eval.controls = ("other_frames", "text_only")
  c.eval.baselines = True
  # '' = QVHighlights' highlight metrics (HL-min-*); 'tvsum' = TVSum's top-5 mAP over its 20
  # annotators; 'youtube' = YouTube Highlights' mAP. The last two read the lines' clip_scores.
  c.eval.highlight_metric = ""
  return c


def paper_config(config_file: str, arg: str | None, *, num_train: int, batch_size: int = 128,
                 learning_rate: float = 5e-4, best_metric: str = "MR-full-R1@0.5",
                 epochs: int = 30, repeat: int = 4, eval_every_epochs: int = 5) -> ml_collections.ConfigDict:
  """A benchmark config as the paper trains it: ``epochs`` passes over the training queries
  repeated ``repeat`` times at ``batch_size``, evaluated and checkpointed every
  ``eval_every_epochs``, cosine decay (the paper steps down x0.1 at epoch 20; the engine has no
  step schedule), the frozen CLIP at ``$T5VIDEO_CHECKPOINTS/clip-vit-base-patch32``.

  ``arg``: the head, 'r2' (default) | 'meanpool'; ``config_file`` names the file in the error.
  """
  head = arg or "r2"
  if head not in HEADS:
    raise ValueError(f"{config_file}: arg must be {'|'.join(HEADS)}, got {arg!r}")
  c = base_config()
  c.seed = 2024
  c.train.batch_size = batch_size
  c.train.num_steps = int(math.ceil(epochs * repeat * num_train / batch_size))
  c.train.log_every = 100
  c.train.eval_every = int(math.ceil(eval_every_epochs * repeat * num_train / batch_size))
  c.train.checkpoint_every = c.train.eval_every
  c.train.max_to_keep = 2
  c.train.best_metric = best_metric
  c.optim.schedule = "cosine"
  c.optim.learning_rate = learning_rate
  c.model.head = head
  _real_data(c)
  return c


def _real_data(c: ml_collections.ConfigDict) -> None:
  """What every benchmark config shares: OpenAI's ViT-B/32 under ``$T5VIDEO_CHECKPOINTS``, the
  QVHighlights layout under ``--config.data.root=DIR``, 4 extraction and loading workers."""
  c.model.clip_init = os.path.join(checkpoint_dir(), "clip-vit-base-patch32")
  c.data.layout = "qvhighlights"
  c.data.root = ""
  c.data.extract_workers = 4
  c.data.worker_count = 4
  c.data.read_threads = 4


def highlight_config(config_file: str, arg: str | None, *, splits: dict, epochs: int,
                     fps: float, max_clips: int, metric: str) -> ml_collections.ConfigDict:
  """A highlight-detection benchmark config as the paper trains it (TVSum, YouTube Highlights):
  one model per domain, strides (1,), no temporal end-point features, no boundary head, BCE on
  every clip's score and the row term of the saliency NCE, saliency = sigmoid(class logit);
  batch 4, ``epochs`` passes over the domain's training videos, 50 warm-up steps then a constant
  learning rate (the paper's ``lr_schedule=None``), evaluated every tenth of the run, the best
  ``metric`` kept.

  ``arg``: ``DOMAIN`` or ``DOMAIN,meanpool`` (none: the first domain in ``splits``' order);
  ``splits``: ``{domain: {'train': [...], 'val': [...]}}``.
  """
  parts = [p for p in (arg or "").split(",") if p]
  domain = parts[0] if parts else next(iter(splits))
  head = parts[1] if len(parts) > 1 else "r2"
  if domain not in splits or head not in HEADS or len(parts) > 2:
    raise ValueError(f"{config_file}: arg must be DOMAIN[,meanpool] with DOMAIN one of "
                     f"{sorted(splits)}, got {arg!r}")
  batch = 4
  steps_per_epoch = max(1, math.ceil(len(splits[domain]["train"]) / batch))
  c = base_config()
  c.seed = 2024
  c.train.batch_size = batch
  c.train.num_steps = epochs * steps_per_epoch
  c.train.log_every = 50
  c.train.eval_every = max(1, c.train.num_steps // 10)
  c.train.checkpoint_every = c.train.eval_every
  c.train.max_to_keep = 2
  c.train.best_metric = metric
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 50
  c.model.head = head
  c.model.highlight_only = True
  c.model.strides = (1,)
  c.model.use_tef = False
  c.model.loss_reg = 0.0
  _real_data(c)                     # --config.data.root=DIR, converted by `t5video data ...`
  c.data.domain = domain
  c.data.fps = fps
  c.data.max_clips = max_clips
  c.eval.split = "val"
  c.eval.batch_size = 4
  c.eval.highlight_metric = "tvsum" if "TVSum" in metric else "youtube"
  return c


def parse_nms(spec: str):
  """``'normal:0.7'`` -> ``('normal', 0.7)``; ``''`` -> None."""
  if not spec:
    return None
  kind, _, threshold = spec.partition(":")
  if kind not in NMS_KINDS:
    raise ValueError(f"eval.nms: kind must be one of {NMS_KINDS}, got {spec!r}")
  try:
    return kind, float(threshold or 0.7)
  except ValueError as e:
    raise ValueError(f"eval.nms: threshold of {spec!r} is not a number") from e


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond the schema's types."""
  from t5video.evaluate import grounding  # pylint: disable=g-import-not-at-top
  m, d, e = config.model, config.data, config.eval
  if m.head not in HEADS:
    raise ValueError(f"model.head must be one of {HEADS}, got {m.head!r}")
  if m.num_layers < 1:
    raise ValueError(f"model.num_layers must be >= 1, got {m.num_layers}")
  if m.dim % m.num_heads:
    raise ValueError(f"model.dim={m.dim} is not divisible by model.num_heads={m.num_heads}")
  if list(m.strides) != sorted(m.strides) or any(s < 1 or s & (s - 1) for s in m.strides):
    raise ValueError(f"model.strides must be increasing powers of 2, got {tuple(m.strides)}")
  if d.layout != "qvhighlights":
    raise ValueError(f"data.layout must be 'qvhighlights' (convert other grounding sets to its "
                     f"JSONL lines), got {d.layout!r}")
  if not d.fps > 0:
    raise ValueError(f"data.fps must be > 0, got {d.fps}")
  if d.max_clips < max(m.strides):
    raise ValueError(f"data.max_clips={d.max_clips} must be >= the largest stride {max(m.strides)}")
  if d.feature_dtype not in ("float16", "float32"):
    raise ValueError(f"data.feature_dtype must be float16 or float32, got {d.feature_dtype!r}")
  if e.protocol not in grounding.PROTOCOLS:
    raise ValueError(f"eval.protocol must be one of {sorted(grounding.PROTOCOLS)}, got {e.protocol!r}")
  parse_nms(e.nms)
  if m.highlight_only and tuple(m.strides) != (1,):
    raise ValueError(f"model.highlight_only scores every clip: set model.strides=(1,), got "
                     f"{tuple(m.strides)}")
  if e.highlight_metric not in HIGHLIGHT_METRICS:
    raise ValueError(f"eval.highlight_metric must be one of {HIGHLIGHT_METRICS}, got "
                     f"{e.highlight_metric!r}")
  if e.highlight_metric and not m.highlight_only:
    raise ValueError(f"eval.highlight_metric={e.highlight_metric!r} is for model.highlight_only=True")
  for c in e.controls:
    if c not in CONTROLS:
      raise ValueError(f"eval.controls: unknown control {c!r}; known: {CONTROLS}")


def as_dict(x) -> dict:
  """A plain dict from a dict / ConfigDict / None."""
  if x is None:
    return {}
  return dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x)
