"""ViFi-CLIP's config schema: every key with its default, its checks, and the
shared recipe settings the configs under ``configs/vificlip/`` build on.

``recipe_config`` builds the ViT-B/16 setup of ViFi-CLIP (arXiv 2212.03640)
from the values of its public configs (github.com/muzairkhattak/ViFi-CLIP,
``configs/`` and ``utils/config.py``): AdamW (b2 0.98, weight decay 0.001),
cosine schedule with 5 warm-up epochs, label smoothing 0.1, mixup, 224px
frames, the prompt "a photo of a {}.".
"""

from __future__ import annotations

import json
import math
from typing import Optional

import ml_collections

from t5video.config import checkpoint_dir  # noqa: F401  (configs import it from here)
from t5video.evaluate import controls

OBJECTIVES = ("classification", "contrastive", "both")
PROTOCOLS = ("closed", "zero_shot", "retrieval")

# Sections whose keys are free-form: CLIP tower overrides, layout and renderer arguments.
OPEN_SECTIONS = ("model.vision", "model.text", "data.layout_kwargs", "data.synthetic")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a ViFi-CLIP config with its default (the engine's sections included)."""
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  c = trainer.default_config()
  c.task = "vificlip"
  c.stages = ()  # earlier stages, each {name, config, workdir, overrides} (t5video.train.stages)
  c.model = ml_collections.ConfigDict()
  c.model.variant = "B/16"
  c.model.vision = {}               # CLIPVisionConfig overrides of the variant
  c.model.text = {}                 # CLIPTextConfig overrides of the variant
  c.model.projection_dim = 512
  c.model.temporal = "mean"         # 'single' | 'mean' | 'spacetime' | 'ordered'
  c.model.order_grid = 4            # 'ordered': patch grid pooled to at most this many cells a side
  c.model.order_layers = 1          # 'ordered': temporal transformer layers
  c.model.prompts = dict(vision_tokens=0, text_tokens=0, vision_depth=1, text_depth=1)
  c.model.objective = "classification"  # see OBJECTIVES
  c.model.contrastive_weight = 1.0
  c.model.label_smoothing = 0.1
  c.model.mixup_alpha = 0.0
  c.model.prompt_template = "a photo of a {}."
  c.model.text_len = 77
  c.model.tokenizer = ""            # an HF CLIP tokenizer dir, or a SentencePiece .model path
  c.model.sentencepiece_vocab = 512  # pieces of a SentencePiece model trained at prepare time

  c.data = ml_collections.ConfigDict()
  c.data.layout = "generic"
  c.data.root = ""
  c.data.layout_kwargs = {}
  c.data.synthetic = {}             # render_dataset arguments (num_videos > 0: render first)
  c.data.train_split = "train"
  c.data.classes = ()               # the training classes ('()': those of the training split)
  c.data.num_classes = 0            # how many the training split has: sizes a Task built for its
                                    # shapes alone (t5video compile) when data.classes is empty
  c.data.novel_classes = ()         # held out for zero-shot; ('*',): every class of eval.split
  c.data.k_shot = 0
  c.data.k_shot_seed = 1
  c.data.train_fraction = 1.0       # a seeded subset of the training clips
  c.data.holdout_fold = ()          # (k, n): train without fold k of n (cross-fitting)
  c.data.balance = ""               # '' (every clip equally often) | 'oversample' | 'class_balanced'
  c.data.num_frames = 8
  c.data.size = 224
  c.data.resize_short = 256
  c.data.flip = True
  c.data.zoom = ()                  # (low, high): training scale jitter, one factor and centre a clip
                                    # (decode.SamplingSpec.zoom); () off
  c.data.cache_frames = False       # decode each training clip once (centre crops)
  c.data.worker_count = 0
  c.data.read_threads = 2
  c.data.max_failure_ratio = 0.1
  c.data.constant_pixels = False    # every pixel constant in training and evaluation: the
                                    # text-only control (t5video.evaluate.controls)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "val"
  c.eval.novel_extra_splits = ()
  c.eval.protocols = ("closed",)    # see PROTOCOLS
  c.eval.zero_shot_template = ""
  c.eval.num_clips = 1
  c.eval.num_crops = 1
  c.eval.crop_square = 0
  c.eval.captions_per_video = 0
  c.eval.max_videos = 0
  c.eval.chunk = 64  # videos decoded at a time (all views of a chunk are held in memory)
  # Controls in the same run (t5video.evaluate.controls): 'other_frames' (each clip's embedding
  # is another clip's: free), 'text_only' (the recipe trained on constant pixels, as a stage).
  c.eval.controls = ("other_frames",)
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond the schema's types."""
  if config.model.objective not in OBJECTIVES:
    raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {config.model.objective!r}")
  for p in config.eval.protocols:
    if p not in PROTOCOLS:
      raise ValueError(f"eval.protocols: unknown protocol {p!r}; known: {PROTOCOLS}")
  controls.check(config.eval.controls)


def as_dict(x) -> dict:
  """A plain dict from a dict / ConfigDict / None."""
  if x is None:
    return {}
  return dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x)


def hf_clip_config(path: str) -> Optional[dict]:
  """The parsed ``config.json`` when ``path`` is an HF CLIP directory (``model_type='clip'``), else None."""
  from t5video.train import paths  # pylint: disable=g-import-not-at-top
  if not path or not paths.exists(paths.join(path, "config.json")):
    return None
  hf_config = json.loads(paths.read_text(paths.join(path, "config.json")))
  return hf_config if hf_config.get("model_type") == "clip" else None


def checkpoint_towers(hf_config: dict, vision: dict, text: dict, where: str) -> tuple[dict, dict, int]:
  """``(vision, text, projection_dim)`` of an HF CLIP ``config.json``: the towers a run that starts
  from it must have. Keys of ``model.vision`` / ``model.text`` that disagree with it are an error
  naming them (a size set for training from scratch, left in a config that loads a checkpoint)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  towers = []
  for name, cls, given in (("vision", clip_lib.CLIPVisionConfig, vision), ("text", clip_lib.CLIPTextConfig, text)):
    loaded = cls.from_hf(hf_config)
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(cls)
              if f.name in hf_config.get(f"{name}_config", {})
              and f.name not in ("dtype", "param_dtype", "remat", "lora")}  # t5video's own fields
    bad = {k: (v, fields[k]) for k, v in given.items()
           if k in fields and (tuple(v) if isinstance(v, list) else v) != fields[k]}
    if bad:
      raise ValueError(f"model.{name}: {', '.join(f'{k}={v!r} (checkpoint: {c!r})' for k, (v, c) in bad.items())} "
                       f"disagree with {where}/config.json; remove them (the towers come from the checkpoint)")
    towers.append({**given, **fields})
  return towers[0], towers[1], int(hf_config.get("projection_dim") or towers[0].get("projection_dim") or 512)


def vision_config(config: ml_collections.ConfigDict):
  """The CLIP vision tower of a ViFi-CLIP run config (for a model whose vision tower starts from it):
  the HF checkpoint's when ``init_from.path`` is one (``standins:CONFIG`` resolved), else
  ``model.variant`` with ``model.vision``."""
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from t5video.recipes import standins  # pylint: disable=g-import-not-at-top
  m = config.model
  vision = {k: tuple(v) if isinstance(v, list) else v for k, v in as_dict(m.get("vision")).items()}
  path = standins.resolve(str(config.init_from.get("path") or ""), "clip")
  hf_config = hf_clip_config(path)
  if hf_config is not None:
    vision = checkpoint_towers(hf_config, vision, {}, path)[0]
  return clip_lib.CLIPVisionConfig(**{**clip_lib.VARIANTS[m.variant]["vision"], **vision})


def projection_dim(config: ml_collections.ConfigDict) -> int:
  """The joint embedding width of a ViFi-CLIP run config: ``model.projection_dim``, or when it is 0
  the HF checkpoint's that ``init_from.path`` names (as :func:`vision_config`)."""
  from t5video.recipes import standins  # pylint: disable=g-import-not-at-top
  if int(config.model.get("projection_dim") or 0) > 0:
    return int(config.model.projection_dim)
  path = standins.resolve(str(config.init_from.get("path") or ""), "clip")
  hf_config = hf_clip_config(path)
  if hf_config is None:
    raise ValueError(f"model.projection_dim is 0 and init_from.path={path!r} is not an HF CLIP directory")
  return checkpoint_towers(hf_config, {}, {}, path)[2]


# =============================================================================
# Shared settings of configs/vificlip/*.py
# =============================================================================

def steps(epochs: float, num_train: int, batch_size: int) -> int:
  """Optimizer steps for ``epochs`` passes over ``num_train`` clips."""
  return max(1, int(math.ceil(epochs * num_train / batch_size)))


def recipe_config(*, clip_dir: str, layout: str, root: str, num_frames: int, batch_size: int,
                  learning_rate: float, epochs: float, num_train: int, warmup_epochs: float = 5.0,
                  mixup_alpha: float = 0.8) -> ml_collections.ConfigDict:
  """A full fine-tuning config of both CLIP towers from the HF checkpoint ``clip_dir``."""
  c = base_config()
  c.seed = 1024  # ViFi-CLIP's seed
  c.mesh.shape = (-1, 1, 1)
  c.train.num_steps = steps(epochs, num_train, batch_size)
  c.train.batch_size = batch_size
  c.train.micro_batches = 1
  c.train.log_every = 50
  c.train.eval_every = steps(max(1.0, epochs / 5), num_train, batch_size)
  c.train.checkpoint_every = c.train.eval_every
  c.train.max_to_keep = 2
  c.train.best_metric = "closed/top1"
  c.train.dtype = "bfloat16"
  c.optim.name = "adamw"
  c.optim.learning_rate = learning_rate
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = min(c.train.num_steps // 2, steps(warmup_epochs, num_train, batch_size))
  c.optim.weight_decay = 0.001
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0
  c.init_from.path = clip_dir  # an HF CLIP directory (config.json + weights)
  c.init_from.regex = ".*"

  c.model.mixup_alpha = mixup_alpha
  c.model.tokenizer = clip_dir
  c.model.sentencepiece_vocab = 0

  c.data.layout = layout
  c.data.root = root
  c.data.num_frames = num_frames
  c.data.worker_count = 8
  c.data.read_threads = 4
  c.data.max_failure_ratio = 0.02
  return c


def small_dataset_config(arg: str, *, dataset: str, num_classes: int, num_train: int, num_base: int,
                         clip_dir: str, root: str) -> ml_collections.ConfigDict:
  """HMDB51 / UCF101 settings: 'zeroshot', 'fewshot-K', 'base2novel', 'prompt'."""
  kind, _, shots = arg.partition("-")
  if kind == "zeroshot":
    c = recipe_config(clip_dir=clip_dir, layout="generic", root=root, num_frames=32, batch_size=64,
                      learning_rate=2e-6, epochs=1, num_train=num_train)
    c.data.novel_classes = ("*",)  # every class of the eval split, none trained
    c.eval.protocols = ("zero_shot",)
    c.train.best_metric = ""
    c.data.num_classes = num_classes
  elif kind == "fewshot":
    if shots not in ("2", "4", "8", "16"):
      raise ValueError(f"configs/vificlip/{dataset}.py: fewshot-K needs K in 2, 4, 8, 16; got {arg!r}")
    k = int(shots)
    c = recipe_config(clip_dir=clip_dir, layout="generic", root=root, num_frames=32, batch_size=64,
                      learning_rate=2e-6, epochs=50, num_train=k * num_classes)
    c.data.k_shot = k
  elif kind in ("base2novel", "prompt"):
    c = recipe_config(clip_dir=clip_dir, layout="generic", root=root, num_frames=32, batch_size=64,
                      learning_rate=2e-6 if kind == "base2novel" else 4e-2, epochs=11,
                      num_train=16 * num_base)
    c.data.k_shot = 16
    c.eval.protocols = ("zero_shot",)
    c.train.best_metric = "hm"
    c.eval.split = "test"
    if kind == "prompt":
      c.model.prompts = dict(vision_tokens=16, text_tokens=16, vision_depth=9, text_depth=9)
      c.optim.trainable = "(^|/)prompts$"
      c.init_from.regex = "^(?!.*prompts).*$"  # everything but the (new) prompts
  else:
    raise ValueError(f"configs/vificlip/{dataset}.py: unknown arg {arg!r}; use zeroshot, fewshot-K, "
                     "base2novel or prompt")
  c.eval.split = "test"
  c.data.num_classes = c.data.num_classes or (num_base if kind in ("base2novel", "prompt") else num_classes)
  return c
