"""CaptionT5 recipe: thought-augmented video-to-text with one T5 for captions,
classes and tags.

What one training example is:

* frames: ``T`` frames of the clip (segment-sampled in training, uniform in
  evaluation), uint8, normalised inside the jitted step;
* a task drawn per example from ``config.tasks`` (weights): ``caption``,
  ``classify`` or ``tags``;
* the encoder text: the task prompt, then the thoughts
  (:mod:`t5video.data.thoughts`: concepts, metadata, subtitle, draft; thought
  dropout in training);
* the decoder target: a reference caption (one drawn at random), the class
  name, or the sorted tags.

Evaluation (``evaluate``) runs on ``config.data.eval_split``: captions by
greedy or beam search (optionally re-ranked with a video-text CLIP, and
optionally refined in a second pass that reads the first pass as a "draft"
thought), classes both by free generation and by rank classification (every
class name scored by the decoder), tags by generation; it reports CIDEr-D,
BLEU-4, ROUGE-L (METEOR where Java is present), top-1/top-5, macro-F1,
head/tail recall and tag F1, beside trivial baselines (the most frequent
training caption, the class prior), and writes sample captions.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Any, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from t5video.data import decode as decode_lib
from t5video.data import layouts
from t5video.data import pipeline
from t5video.data import thoughts as thoughts_lib
from t5video.data import tokenizer as tokenizer_lib
from t5video.data.frame_cache import FrameCache
from t5video.data.records import VideoRecord, fold_of, fraction_subset
from t5video.evaluate import caption_metrics
from t5video.evaluate import classification as cls_metrics
from t5video.evaluate import decoding
from t5video.models import clip as clip_lib
from t5video.models import hf
from t5video.models import peft
from t5video.models import t5 as t5_lib
from t5video.models.captiont5 import CaptionT5, CaptionT5Config
from t5video.models.layers import LoraSpec
from t5video.models.temporal import TemporalConfig
from t5video.train import paths
from t5video.train import task as task_lib

TASK_IDS = {"caption": 0, "classify": 1, "tags": 2}


# =============================================================================
# Config
# =============================================================================

def checkpoint_dir() -> str:
  """Where recipe configs look for local HF checkpoints by default:
  ``$T5VIDEO_CHECKPOINTS``, else ``~/.cache/t5video/checkpoints``."""
  return os.environ.get("T5VIDEO_CHECKPOINTS",
                        os.path.join(os.path.expanduser("~"), ".cache", "t5video", "checkpoints"))


def base_config() -> ml_collections.ConfigDict:
  """Every key of a CaptionT5 config with its default; configs/captiont5/*.py start here."""
  c = ml_collections.ConfigDict()
  c.task = "captiont5"
  c.seed = 0
  c.data = dict(
      layout="synthetic",           # 'synthetic' | 'generic' | 'msrvtt' | 'vatex' | 'kinetics'
      root="data_cache/synthetic",  # the dataset folder (synthetic: rendered here if absent)
      annotations="",               # generic layout: the JSONL/CSV file under root
      num_videos=600,               # synthetic only
      synthetic_seed=0,             # synthetic only
      synthetic_backgrounds=(),     # synthetic only: () = every kind, e.g. ('plain',)
      synthetic_max_distractors=2,  # synthetic only: other objects per clip (0 to 2)
      train_split="train",
      eval_split="test",
      num_frames=8,
      size=224,
      resize_short=0,               # 0: = size
      cache_frames=False,           # decode each clip once, sample later epochs from memory
      worker_count=0,               # Grain worker processes
      read_threads=2,
      balance="",                   # '' | 'oversample' | 'class_balanced'
      max_failure_ratio=0.2,
      train_fraction=1.0,           # a seeded subset of the training clips
      features_dir="",              # train on cached CLIP features: <dir>/<split> written by
                                    # `t5video extract-features --split S --out <dir>/S`
      features_layer="pooled",      # which extracted layer ('pooled', 'embeds', 'layer_12', ...)
  )
  c.tasks = dict(caption=1.0, classify=0.0, tags=0.0)
  c.text = dict(max_input_len=64, max_target_len=32, vocab_size=512, tokenizer="")
  c.thoughts = dict(
      sources=("metadata", "subtitle"),
      dropout=0.2,
      drop_all=0.1,
      top_k=5,
      metadata_fields=("objects", "background"),
      clip_workdir="",              # a ViFi-CLIP workdir for CLIP-guided 'concepts' (and
                                    # eval.rerank); '' = <workdir>/vificlip, trained there by
                                    # clip_stage first when that is set
      # A ViFi-CLIP stage trained on this run's own data before CaptionT5 (when 'concepts' or
      # eval.rerank need a CLIP and clip_workdir is ''): a config file[:arg] (relative to the
      # current directory or the repository) and its steps; '' = no stage.
      # folds > 1 cross-fits it: one CLIP per fold, trained without that fold's training clips,
      # picks that fold's concepts (a CLIP trained on a clip knows it too well); other clips get
      # the folds' mean similarity.
      # init_vision: CaptionT5's vision tower starts from the stage's CLIP (fold 0 when
      # cross-fitted), its sizes taken from the stage config: the stand-in for a pretrained CLIP.
      clip_stage=dict(config="", num_steps=2000, folds=1, init_vision=False),
      concepts_file="",             # default: <data.root>/concepts.txt, else caption words
      vocab_size=200,               # concepts taken from the captions when there is no file
  )
  c.model = dict(
      clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, image_size=224, patch_size=16, projection_dim=512,
                hidden_act="quick_gelu"),
      t5=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1),
      temporal=dict(kind="transformer", num_layers=1, num_heads=8),
      visual_tokens="pooled",       # 'pooled' (a token per frame) | 'patches'
      clip_init="",                 # an HF CLIP directory or a finished ViFi-CLIP workdir (then
                                    # `clip` sizes come from it)
      t5_init="",                   # an HF T5 directory (sizes and tokenizer come from it)
      remat=False,
  )
  c.peft = dict(method="full", lora_rank=8, lora_alpha=16.0, lora_dropout=0.0,
                lora_targets=r"(SelfAttention|EncDecAttention)/(q|v)$", adapter_dim=64,
                prompt_length=16, last_n=2, bridge=True)
  c.loss = dict(label_smoothing=0.0)
  c.mesh = dict(shape=(-1, 1, 1))
  c.sharding = dict(rules=())
  c.train = dict(num_steps=10000, batch_size=64, micro_batches=1, log_every=100, eval_every=0,
                 checkpoint_every=1000, max_to_keep=3, best_metric="", best_mode="max",
                 max_nonfinite=10, dtype="float32", progress=True)
  c.optim = dict(name="adamw", learning_rate=1e-4, schedule="cosine", warmup_steps=500,
                 weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8, param_groups=(),
                 freeze="", trainable="")
  c.init_from = dict(path="", regex=".*")
  c.eval = dict(max_examples=0, batch_size=32, beam_size=1, length_penalty=0.6, refine=False,
                meteor="auto",                # 'auto' (if Java is present) | 'true' | 'false'
                tail_fraction=0.3,
                # CLIP-guided caption ranking: `candidates` captions per video (0: off) from
                # 'beam' search or top-p 'sample'-ing, each scored by its length-normalised
                # T5 log-probability + weight x cos(video, caption) under the video-text
                # CLIP of thoughts.clip_workdir (default <workdir>/vificlip).
                rerank=dict(candidates=0, source="beam", weight=1.0, top_p=0.9, temperature=1.0,
                            seed=0))
  return ml_collections.ConfigDict(c)


def hf_recipe(c: ml_collections.ConfigDict, clip_name: str, t5_name: str) -> None:
  """Points ``c.model`` at local HF snapshots named ``clip_name`` / ``t5_name``
  under :func:`checkpoint_dir` (override with ``--config.model.clip_init=...``)."""
  c.model.clip_init = os.path.join(checkpoint_dir(), clip_name)
  c.model.t5_init = os.path.join(checkpoint_dir(), t5_name)


# =============================================================================
# Data
# =============================================================================

def prepare_data(data: ml_collections.ConfigDict) -> str:
  """Returns the dataset root; renders the synthetic dataset there if absent."""
  root = os.path.abspath(os.path.expanduser(data.root))
  if data.layout == "synthetic":
    from t5video.data import synthetic
    done = os.path.join(root, "DONE")
    rendered = {}
    if os.path.isfile(done):
      with open(done) as f:
        rendered = json.load(f).get("config", {})
    # The settings this config asks for (DONE leaves out renderer defaults). A
    # finished folder rendered with them by this generator version is used as it
    # is; a missing, half-written, outdated or differently rendered one is a
    # cache and is rendered again.
    backgrounds = tuple(data.get("synthetic_backgrounds") or ())
    distractors = int(data.get("synthetic_max_distractors", 2))
    wanted = {"generator_version": synthetic.GENERATOR_VERSION, "num_videos": int(data.num_videos),
              "seed": int(data.synthetic_seed), "backgrounds": list(backgrounds) or None,
              "max_distractors": distractors if distractors != 2 else None}
    if any(rendered.get(k) != v for k, v in wanted.items()):
      print(f"rendering the synthetic dataset ({data.num_videos} clips, seed {data.synthetic_seed}"
            f"{', backgrounds ' + '/'.join(backgrounds) if backgrounds else ''}, at most {distractors} "
            f"distractors) into {root}", flush=True)
      synthetic.render_dataset(root, data.num_videos, data.synthetic_seed, backgrounds=backgrounds or None,
                               max_distractors=distractors, overwrite=True)
  elif not data.root:
    raise ValueError(f"config.data.root is empty: pass --config.data.root=DIR (the {data.layout} "
                     "dataset folder)")
  elif not os.path.exists(root):
    raise FileNotFoundError(f"config.data.root={data.root!r} does not exist")
  return root


def read_split(data: ml_collections.ConfigDict, root: str, split: str) -> list[VideoRecord]:
  """The records of one split, whatever the layout."""
  if data.layout in ("synthetic", "generic"):
    ann = os.path.join(root, data.get("annotations", "") or "annotations.jsonl")
    records = layouts.read_generic(ann, root=root)
    records = [r for r in records if r.split == split]
  else:
    records = layouts.read_dataset(data.layout, root, split)
  if not records:
    raise ValueError(f"no records in split {split!r} of {data.layout} dataset at {root}")
  return records


class TextTransform:
  """Per-example: picks the task, writes thoughts, tokenises (runs in Grain workers).

  Produces ``input_ids``/``attention_mask`` ``[max_input_len]``,
  ``decoder_input_ids``/``decoder_target``/``decoder_mask`` ``[max_target_len]``
  and ``task_id``.
  """

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer, *, tasks: dict[str, float],
               thought_cfg: thoughts_lib.ThoughtConfig, max_input_len: int, max_target_len: int,
               seed: int, concepts: Optional[dict[str, list[str]]] = None,
               draft_vocab: Sequence[str] = (), features_key: str = ""):
    names = [k for k, w in tasks.items() if w > 0]
    weights = np.asarray([tasks[k] for k in names], np.float64)
    self.task_names, self.task_p = names, weights / weights.sum()
    self.tok = tokenizer
    self.thought_cfg = thought_cfg
    self.max_input_len, self.max_target_len = max_input_len, max_target_len
    self.seed = seed
    self.concepts = concepts or {}
    self.draft_vocab = list(draft_vocab)
    self.features_key = features_key  # read cached features from this key instead of frames

  def target_text(self, task: str, ex: dict, rng: np.random.Generator) -> str:
    if task == "caption":
      caps = ex["captions"]
      return caps[int(rng.integers(len(caps)))] if caps else ""
    if task == "classify":
      return ex["label"]
    return thoughts_lib.tags_text(ex["tags"])

  def __call__(self, ex: dict) -> dict:
    rng = np.random.default_rng([self.seed, 17, int(ex["epoch"]), int(ex["position"]),
                                 int(ex["index"]) + 1])
    available = [t for t in self.task_names
                 if (t != "caption" or ex["captions"]) and (t != "classify" or ex["label"])
                 and (t != "tags" or ex["tags"])]
    if not available:
      available = self.task_names
    p = np.asarray([self.task_p[self.task_names.index(t)] for t in available])
    task = available[int(rng.choice(len(available), p=p / p.sum()))]
    target = self.target_text(task, ex, rng)
    draft = None
    if task == "caption" and "draft" in self.thought_cfg.sources and ex["captions"]:
      # Self-refinement training: a corrupted reference stands in for a draft.
      ref = ex["captions"][int(rng.integers(len(ex["captions"])))]
      draft = thoughts_lib.corrupt_caption(ref, self.thought_cfg.draft_corruption,
                                           self.draft_vocab, rng)
    text = thoughts_lib.encoder_text(task, thoughts_lib.build_thoughts(
        ex["metadata"], ex["subtitle"], self.thought_cfg,
        concepts=self.concepts.get(ex["video_id"]), draft=draft, rng=rng))
    ids, mask = self.tok.encode_batch([text], self.max_input_len)
    tgt, tmask = self.tok.encode_batch([target], self.max_target_len)
    weight = float(bool(ex["valid"]))
    visual = ({"features": np.asarray(ex[self.features_key], np.float32)} if self.features_key
              else {"frames": ex["frames"]})
    return {
        **visual, "frame_mask": np.asarray(ex["frame_mask"]).astype(np.int32),
        "input_ids": ids[0], "attention_mask": mask[0],
        "decoder_input_ids": np.asarray(t5_lib.shift_right(tgt, 0, 0))[0].astype(np.int32),
        "decoder_target": tgt[0], "decoder_mask": tmask[0],
        "task_id": np.int32(TASK_IDS[task]), "weight": np.float32(weight),
        # kept for the loader's failure accounting; removed before the step
        **{k: ex[k] for k in pipeline.PIPELINE_KEYS},
    }


# =============================================================================
# Model construction
# =============================================================================

def _meteor_flag(value) -> bool | str:
  """``eval.meteor``: 'auto' (when Java is present), 'true' or 'false' (strings or bools)."""
  v = str(value).strip().lower()
  if v not in ("auto", "true", "false", "1", "0", "yes", "no"):
    raise ValueError(f"eval.meteor must be 'auto', 'true' or 'false', got {value!r}")
  return "auto" if v == "auto" else v in ("true", "1", "yes")


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _round_up(n: int, k: int) -> int:
  return ((n + k - 1) // k) * k


# Words never used as concepts when the vocabulary comes from the captions.
_FUNCTION_WORDS = frozenset("""
a an the and or but of to in on at by for with from into onto over under as is are was were be
been being it its it's this that these those there here then than so very just also while when where
which who whom whose what how why not no yes can could will would should may might must do does did
has have had having he she they them their his her him we you your our i me my one two some any all
each every more most other such only own same too out off about above below after before again once
""".split())


def fill_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Adds the keys of ``defaults`` that ``config`` lacks (recursively), in place."""
  with config.unlocked():
    for key, value in defaults.items():
      if key not in config:
        config[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
        fill_defaults(config[key], value)


def check_init_dirs(config: ml_collections.ConfigDict) -> None:
  """``model.clip_init`` / ``model.t5_init``, when set, must be HF model directories
  (``clip_init`` may also be a finished ViFi-CLIP workdir)."""
  for key in ("clip_init", "t5_init"):
    path = config.model[key]
    if path and not os.path.isfile(os.path.join(path, "config.json")) and not (
        key == "clip_init" and _is_vificlip_workdir(path)):
      other = " or a finished ViFi-CLIP workdir" if key == "clip_init" else ""
      raise FileNotFoundError(
          f"config.model.{key}={path!r} is not a Hugging Face model directory (no config.json){other}. "
          f"Put a local snapshot there (save_pretrained / a hub download), set "
          f"T5VIDEO_CHECKPOINTS to the folder holding it, or pass --config.model.{key}=DIR")


def _is_vificlip_workdir(path: str) -> bool:
  from t5video.recipes import vificlip as vificlip_recipe  # pylint: disable=g-import-not-at-top
  return vificlip_recipe.is_workdir(path)


def vision_source_config(config: ml_collections.ConfigDict) -> Optional[ml_collections.ConfigDict]:
  """The ViFi-CLIP run config CaptionT5's vision tower starts from, if any.

  ``model.clip_init`` naming a ViFi-CLIP workdir (its saved config), or
  ``thoughts.clip_stage.init_vision`` (the stage's config file; the stage may
  not have trained yet).
  """
  from t5video import cli  # pylint: disable=g-import-not-at-top
  from t5video.recipes import vificlip as vificlip_recipe  # pylint: disable=g-import-not-at-top
  m, st = config.model, config.thoughts.clip_stage
  if m.clip_init and vificlip_recipe.is_workdir(m.clip_init):
    with open(os.path.join(m.clip_init, vificlip_recipe.TOKENIZER_DIR, "config.json")) as f:
      return ml_collections.ConfigDict(json.load(f)["config"])
  if st.get("init_vision") and not m.clip_init:
    if not st.config:
      raise ValueError("thoughts.clip_stage.init_vision needs thoughts.clip_stage.config")
    return cli.load_config_file(st.config)
  return None


def build_model_config(config: ml_collections.ConfigDict, vocab_size: int,
                       feature_dim: Optional[int] = None) -> CaptionT5Config:
  """CaptionT5Config from ``config.model``/``config.peft`` (HF dirs give the sizes).

  With ``feature_dim`` the model reads cached features of that width instead of pixels.
  """
  m, p = config.model, config.peft
  check_init_dirs(config)
  dtype = config.train.dtype
  lora = (LoraSpec(rank=p.lora_rank, alpha=p.lora_alpha, dropout=p.lora_dropout,
                   targets=p.lora_targets) if p.method == "lora" else None)
  adapter_dim = p.adapter_dim if p.method == "adapters" else None
  vision_source = None if feature_dim else vision_source_config(config)
  if feature_dim:
    vision = None  # cached features replace the vision tower
  elif vision_source is not None:  # a ViFi-CLIP run (a workdir or this run's CLIP stage)
    from t5video.recipes import vificlip as vificlip_recipe  # pylint: disable=g-import-not-at-top
    vision = dataclasses.replace(vificlip_recipe.vision_config(vision_source), dtype=dtype, lora=lora,
                                 remat=m.remat)
  elif m.clip_init:
    vision = clip_lib.CLIPVisionConfig.from_hf(hf.read_hf_config(m.clip_init), dtype=dtype,
                                               lora=lora, remat=m.remat)
  else:
    vision = clip_lib.CLIPVisionConfig(**dict(m.clip), dtype=dtype, lora=lora, remat=m.remat)
  if m.t5_init:
    t5 = t5_lib.T5Config.from_hf(hf.read_hf_config(m.t5_init), dtype=dtype, lora=lora,
                                 adapter_dim=adapter_dim, remat=m.remat)
  else:
    fields = dict(m.t5)
    fields["vocab_size"] = _round_up(vocab_size, 128)
    t5 = t5_lib.T5Config(**fields, dtype=dtype, lora=lora, adapter_dim=adapter_dim, remat=m.remat)
  temporal = TemporalConfig(**dict(m.temporal), dtype=_dtype(dtype))
  return CaptionT5Config(vision=vision, t5=t5, temporal=temporal, visual_tokens=m.visual_tokens,
                         feature_dim=feature_dim,
                         prompt_length=p.prompt_length if p.method == "prompt" else 0, lora=lora)


def _merge_subtree(params: dict, key: str, loaded: dict, path: str) -> dict:
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

class CaptionT5Task(task_lib.Task):
  """The CaptionT5 recipe for the trainer (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    # Runs saved before a key existed restore with its default (``config.json`` of old workdirs).
    fill_defaults(config, base_config())
    super().__init__(config)
    self.workdir: Optional[str] = None  # set by the trainer before train_loader/evaluate
    check_init_dirs(config)
    self.root = prepare_data(config.data)
    self.records = {s: read_split(config.data, self.root, s)
                    for s in dict.fromkeys((config.data.train_split, config.data.eval_split))}
    train = self.records[config.data.train_split]
    labels = {r.label for recs in self.records.values() for r in recs if r.label}
    self.class_names = sorted(labels)
    self.tokenizer = self._tokenizer()
    self.features_shape = self._features_shape()  # (frames, [tokens,] width) or None
    self.model_config = build_model_config(
        config, self.tokenizer.vocab_size,
        feature_dim=self.features_shape[-1] if self.features_shape else None)
    self.model = CaptionT5(self.model_config)
    if config.peft.method != "full" and not config.optim.trainable:
      # PEFT decides what trains; the optimizer then keeps state for those alone.
      t5c = self.model_config.t5
      config.optim.trainable = peft.trainable_regex(
          config.peft.method, last_n=config.peft.last_n, num_layers=t5c.num_layers,
          num_decoder_layers=t5c.num_decoder_layers, bridge=config.peft.bridge)
    rr = config.eval.rerank
    if config.data.features_dir and rr.candidates > 0:
      logging.warning("eval.rerank needs decoded frames for the video-text CLIP; training on cached "
                      "features (data.features_dir), so re-ranking is off")
      rr.candidates = 0
    if rr.source not in ("beam", "sample") or rr.candidates < 0:
      raise ValueError(f"eval.rerank: source must be 'beam' or 'sample' and candidates >= 0, got "
                       f"source={rr.source!r}, candidates={rr.candidates}")
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
    self._clip_scorers: Optional[list] = None
    counts = collections.Counter(r.label for r in train if r.label)
    self.train_class_counts = counts
    self.caption_prior = collections.Counter(c for r in train for c in r.captions)

  # ---- tokenizer ----------------------------------------------------------------
  def _tokenizer(self) -> tokenizer_lib.Tokenizer:
    cfg = self.config
    if cfg.text.tokenizer:
      return tokenizer_lib.load_tokenizer(cfg.text.tokenizer)
    if cfg.model.t5_init:
      return tokenizer_lib.HFTokenizer(cfg.model.t5_init)
    # From scratch: a SentencePiece model trained on this dataset's training text,
    # cached beside the data under a name that hashes that text.
    texts = []
    for r in self.records[cfg.data.train_split]:
      texts += r.captions + [r.label or "", ", ".join(r.tags), r.subtitle]
      texts += [f"{k}: {v}" for k, v in r.metadata.items()]
    texts += list(thoughts_lib.TASK_PROMPTS.values()) + ["concepts:", "draft:", "subtitle:"]
    concepts_file = os.path.join(self.root, "concepts.txt")
    if os.path.isfile(concepts_file):
      with open(concepts_file) as f:
        texts += [line.strip() for line in f if line.strip()]
    texts = [t for t in texts if t]
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:10]
    path = os.path.join(self.root, f"t5video_spiece_{cfg.text.vocab_size}_{digest}.model")
    if os.path.isfile(path):
      return tokenizer_lib.SentencePieceTokenizer(path)
    return tokenizer_lib.train_sentencepiece(texts, path, cfg.text.vocab_size)

  # ---- cached features -----------------------------------------------------------
  def feature_source(self, split: str):
    """The cached features of ``split`` (a Grain source aligned with its records)."""
    from t5video.data import features as features_lib
    d = self.config.data
    path = os.path.join(d.features_dir, split)
    return features_lib.FeatureSource(path, records=self.records[split], layers=[d.features_layer])

  def _features_shape(self):
    if not self.config.data.features_dir:
      return None
    item = self.feature_source(self.config.data.train_split)[0]
    return tuple(np.asarray(item[self.config.data.features_layer]).shape)

  # ---- CLIP-guided concepts -------------------------------------------------------
  def concepts(self) -> dict[str, list[str]]:
    """Training video_id -> top concepts from the video-text CLIP (empty when not configured).

    Computed once, for the training loader. A training clip of fold ``k`` is
    scored by the CLIP trained without fold ``k`` (``thoughts.clip_stage.folds``).
    Other clips (evaluation, a user's files) are scored from the frames of
    their batch (:meth:`batch_concepts`), so corrupted frames get their own.
    """
    if self._concepts is not None:
      return self._concepts
    self._concepts = {}
    tc = self.config.thoughts
    if "concepts" not in tc.sources:
      return self._concepts
    scorers = self.clip_scorers(purpose="thoughts.sources has 'concepts'")
    vocab = self.concept_vocabulary()
    # Frames as the video-text CLIP was trained on them (its frame count and size).
    spec = decode_lib.SamplingSpec(num_frames=scorers[0].num_frames, size=scorers[0].image_size)
    loader = pipeline.make_loader(
        list(self.records[self.config.data.train_split]),
        transform=pipeline.VideoDecodeTransform(spec, train=False, seed=0),
        batch_size=32, seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
        worker_count=0, drop_remainder=False, pad_to_batch=True,
        read_threads=self.config.data.read_threads)
    for batch in loader:
      frames = np.asarray(batch["frames"])
      sims = np.stack([s.scores(frames, vocab) for s in scorers])  # [folds, b, concepts]
      for i, (vid, valid) in enumerate(zip(batch["video_id"], batch["valid"])):
        if not bool(valid):
          continue
        # The CLIP that never saw this clip (the only one when not cross-fitted).
        row = sims[fold_of(vid, len(scorers)) if len(scorers) > 1 else 0, i]
        self._concepts[vid] = [vocab[j] for j in np.argsort(-row, kind="stable")[:tc.top_k]]
    logging.info("CLIP-guided concepts for %d clips from %s", len(self._concepts), self.clip_dirs())
    return self._concepts

  def batch_concepts(self, batch: dict) -> list[Optional[list[str]]]:
    """Concepts per example: a training clip's precomputed ones, else scored from the batch's
    frames by every fold's CLIP (their cosine similarities averaged)."""
    if "concepts" not in self.config.thoughts.sources:
      return [None] * len(batch["video_id"])
    known = self.concepts()
    missing = [i for i, v in enumerate(batch["video_id"]) if v not in known]
    out = [known.get(v) for v in batch["video_id"]]
    if missing and "frames" in batch:  # evaluation clips, a user's own files (`t5video caption`)
      vocab = self.concept_vocabulary()
      scorers = self.clip_scorers(purpose="thoughts.sources has 'concepts'")
      frames = np.asarray(batch["frames"])[missing]
      sims = np.mean([s.scores(s.fit_frames(frames), vocab) for s in scorers], axis=0)  # [m, concepts]
      for i, row in zip(missing, sims):
        out[i] = [vocab[j] for j in np.argsort(-row, kind="stable")[:self.config.thoughts.top_k]]
    return out

  def clip_dirs(self) -> list[str]:
    """The video-text CLIP workdirs: ``thoughts.clip_workdir``, else ``<workdir>/vificlip``
    (``<workdir>/vificlip_fold<k>`` for each fold when cross-fitted)."""
    tc = self.config.thoughts
    if tc.clip_workdir:
      return [tc.clip_workdir]
    if not self.workdir:
      return []
    folds = int(tc.clip_stage.get("folds", 1))
    if folds > 1:
      return [os.path.join(self.workdir, f"vificlip_fold{k}") for k in range(folds)]
    return [os.path.join(self.workdir, "vificlip")]

  def clip_scorers(self, purpose: str) -> list:
    """The video-text CLIPs (restored ViFi-CLIP runs) for concepts and caption ranking."""
    if self._clip_scorers is None:
      from t5video.recipes import vificlip as vificlip_recipe  # heavy; only when used
      dirs = self.clip_dirs()
      if not dirs:
        raise ValueError(f"{purpose}, which needs a video-text CLIP, but thoughts.clip_workdir is not set")
      self._clip_scorers = [vificlip_recipe.ConceptScorer.from_workdir(d) for d in dirs]
    return self._clip_scorers

  def needs_clip(self) -> bool:
    """Whether this run uses a video-text CLIP (concepts, re-ranking, or its vision tower)."""
    tc = self.config.thoughts
    return ("concepts" in tc.sources or self.config.eval.rerank.candidates > 0
            or bool(tc.clip_stage.get("init_vision") and not self.config.model.clip_init))

  def vision_init_dir(self) -> str:
    """The ViFi-CLIP workdir whose vision tower CaptionT5's starts from ('' = none)."""
    m, st = self.config.model, self.config.thoughts.clip_stage
    if m.clip_init and _is_vificlip_workdir(m.clip_init):
      return m.clip_init
    if st.get("init_vision") and not m.clip_init and not self.features_shape:
      dirs = self.clip_dirs()
      if not dirs:
        raise ValueError("thoughts.clip_stage.init_vision: no CLIP stage directory (the run has no workdir)")
      return dirs[0]
    return ""

  def clip_stage_config(self, fold: Optional[int] = None) -> ml_collections.ConfigDict:
    """``thoughts.clip_stage.config`` pointed at this run's data (every class, no rendering)."""
    from t5video import cli  # pylint: disable=g-import-not-at-top
    st, d = self.config.thoughts.clip_stage, self.config.data
    c = cli.load_config_file(st.config)
    c.data.root = self.root
    c.data.layout = "generic" if d.layout == "synthetic" else d.layout
    c.data.layout_kwargs = ({"annotation_path": os.path.join(self.root, d.annotations), "video_root": self.root}
                            if d.layout in ("synthetic", "generic") and d.get("annotations") else {})
    if c.data.get("synthetic"):
      c.data.synthetic.num_videos = 0  # the data is here already
    c.data.train_split, c.eval.split = d.train_split, d.eval_split
    c.data.novel_classes = ()
    c.data.classes = ()
    c.data.train_fraction = float(d.train_fraction)  # the same seeded subset of training clips
    if fold is not None:
      c.data.holdout_fold = (fold, int(st.folds))
    c.eval.protocols = tuple(p for p in c.eval.protocols if p != "zero_shot")
    c.eval.novel_extra_splits = ()
    stage_dir = self.clip_dirs()[fold or 0]
    c.model.tokenizer = os.path.join(stage_dir, "vificlip_spiece.model")
    c.train.num_steps = int(st.num_steps)
    c.seed = self.config.seed
    return c

  def prepare(self) -> bool:
    """Trains the ViFi-CLIP stage (each fold) into ``<workdir>/vificlip*`` when configured and unfinished."""
    tc = self.config.thoughts
    if not (self.needs_clip() and not tc.clip_workdir and tc.clip_stage.config and self.workdir):
      return True
    from t5video import cli  # pylint: disable=g-import-not-at-top
    from t5video.train import trainer  # pylint: disable=g-import-not-at-top
    dirs = self.clip_dirs()
    for k, stage_dir in enumerate(dirs):
      done = os.path.join(stage_dir, "final_metrics.json")
      if os.path.isfile(done):
        continue
      what = f"fold {k + 1}/{len(dirs)}, trained without that fold's clips, " if len(dirs) > 1 else ""
      print(f"stage 0: video-text CLIP ({what}{tc.clip_stage.config}, {tc.clip_stage.num_steps} steps) "
            f"in {stage_dir}", flush=True)
      config = self.clip_stage_config(k if len(dirs) > 1 else None)
      cli.save_run_config(config, stage_dir)
      if trainer.train(config, stage_dir).get("preempted"):
        return False  # trainer.train writes final_metrics.json when the stage ends
    return True

  def concept_vocabulary(self) -> list[str]:
    """``thoughts.concepts_file``, else ``<data.root>/concepts.txt``, else words of the training captions.

    The fallback takes the ``thoughts.vocab_size`` most frequent words of the
    training captions that are not function words (ties broken
    alphabetically), so a user's own dataset works without a vocabulary file.
    """
    tc = self.config.thoughts
    path = tc.concepts_file or os.path.join(self.root, "concepts.txt")
    if os.path.isfile(path):
      with open(path) as f:
        return [line.strip() for line in f if line.strip()]
    if tc.concepts_file:
      raise FileNotFoundError(f"thoughts.concepts_file={tc.concepts_file!r} does not exist")
    counts = collections.Counter(
        w for r in self.records[self.config.data.train_split] for c in r.captions
        for w in re.findall(r"[a-z][a-z'-]+", c.lower()) if w not in _FUNCTION_WORDS and len(w) > 2)
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:int(tc.vocab_size)]
    if not vocab:
      raise ValueError(f"no concept vocabulary: {path} is missing and the training captions have no words")
    return vocab

  # ---- Task API -------------------------------------------------------------------
  def _dummy(self, batch: int = 1):
    d, t = self.config.data, self.config.text
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

  def visual_inputs(self, batch) -> dict:
    """The model's visual keyword arguments from a batch: pixels or cached features."""
    if "features" in batch:
      return dict(features=jnp.asarray(batch["features"], jnp.float32))
    return dict(pixel_values=clip_lib.clip_preprocess(batch["frames"]))

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

  def _text_transform(self, seed: int) -> TextTransform:
    vocab = []
    if os.path.isfile(os.path.join(self.root, "concepts.txt")):
      vocab = self.concept_vocabulary()
    return TextTransform(
        self.tokenizer, tasks=dict(self.config.tasks), thought_cfg=self.thought_cfg,
        max_input_len=self.config.text.max_input_len,
        max_target_len=self.config.text.max_target_len, seed=seed,
        concepts=self.concepts(), draft_vocab=[w for c in vocab for w in c.split()],
        features_key=self.config.data.features_layer if self.features_shape else "")

  def train_loader(self, *, seed, process_index, process_count, batch_size):
    d = self.config.data
    records = fraction_subset(self.records[d.train_split], d.train_fraction, seed)
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
        balance=d.balance or None, extra_transforms=[self._text_transform(seed)],
        max_failure_ratio=d.max_failure_ratio, read_threads=d.read_threads)
    return pipeline.KeyFilterIterator(it, list(self.batch_spec()))

  def loss_fn(self, params, batch, rng, *, train: bool):
    out = self.model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"],
        batch["decoder_input_ids"], batch["decoder_mask"],
        **self.visual_inputs(batch), frame_mask=batch["frame_mask"],
        deterministic=not train, rngs={"dropout": rng})
    logits = out.logits  # [b, l, vocab] float32
    ls = self.config.loss.label_smoothing
    vocab = logits.shape[-1]
    onehot = jax.nn.one_hot(batch["decoder_target"], vocab)
    if ls:
      onehot = onehot * (1 - ls) + ls / vocab
    tok_loss = optax.softmax_cross_entropy(logits, onehot)  # [b, l]
    mask = batch["decoder_mask"].astype(jnp.float32) * batch["weight"][:, None]
    denom = jnp.maximum(mask.sum(), 1.0)
    loss = (tok_loss * mask).sum() / denom
    acc = ((logits.argmax(-1) == batch["decoder_target"]) * mask).sum() / denom
    metrics = {"token_accuracy": acc}
    for name, tid in TASK_IDS.items():
      tm = mask * (batch["task_id"] == tid)[:, None]
      metrics[f"loss_{name}"] = (tok_loss * tm).sum() / jnp.maximum(tm.sum(), 1.0)
    return loss, metrics

  def has_pretrained(self, init_from) -> bool:
    m = self.config.model
    return bool(init_from.path or m.t5_init or (m.clip_init and not self.features_shape)
                or self.vision_init_dir())

  def load_pretrained(self, params, init_from):
    """``init_from.path``: a t5video workdir/checkpoint (Orbax, by regex); HF dirs come
    from ``model.clip_init`` / ``model.t5_init``; the vision tower of a ViFi-CLIP run from
    :meth:`vision_init_dir`."""
    m = self.config.model
    params = nn.unbox(params)
    vifi_dir = self.vision_init_dir()
    if vifi_dir:
      from t5video.recipes import vificlip as vificlip_recipe  # pylint: disable=g-import-not-at-top
      _, vifi_params = vificlip_recipe.restore(vifi_dir)
      print(f"vision tower from the ViFi-CLIP run {vifi_dir}", flush=True)
      params = _merge_subtree(params, "clip", {"vision_model": vifi_params["vision_model"]}, vifi_dir)
    elif m.clip_init and not self.features_shape:
      _, clip_params = hf.load_hf(m.clip_init)
      params = _merge_subtree(params, "clip", {"vision_model": clip_params["vision_model"]}, m.clip_init)
    if m.t5_init:
      _, t5_params = hf.load_hf(m.t5_init)
      params = _merge_subtree(params, "t5", t5_params, m.t5_init)
    if init_from.path:
      params = super().load_pretrained(params, init_from)
    return params

  # ---- evaluation -------------------------------------------------------------------
  def _eval_spec(self) -> decode_lib.SamplingSpec:
    return dataclasses.replace(self.spec, mode="uniform")

  def eval_records(self, split: Optional[str] = None) -> list[VideoRecord]:
    split = split or self.config.data.eval_split
    if split not in self.records:
      self.records[split] = read_split(self.config.data, self.root, split)
    recs = self.records[split]
    n = self.config.eval.max_examples
    return recs[:n] if n else recs

  @functools.cached_property
  def _jitted(self):
    model, ev = self.model, self.config.eval
    max_len = self.config.text.max_target_len

    def encode(params, visual, frame_mask, input_ids, attention_mask):
      return model.apply({"params": params}, input_ids, attention_mask,
                         **self.visual_inputs(visual), frame_mask=frame_mask,
                         method=CaptionT5.encode)

    def make_step(params):
      def step_fn(tokens, cache, step):
        logits, mut = model.apply(
            {"params": params, "cache": {"t5": cache["t5"]}}, cache["enc"], cache["enc_mask"], tokens,
            decode=True, method=CaptionT5.decode, mutable=["cache"])
        logits = logits[:, -1, :]  # [b, padded vocab]
        # Ids past the tokenizer's vocabulary (padding of the embedding table) are never produced.
        real = jnp.arange(logits.shape[-1]) < self.tokenizer.vocab_size
        return jnp.where(real, logits, -1e9), {**cache, "t5": mut["cache"]["t5"]}
      return step_fn

    def init_cache(hidden, mask):
      t5_cache = t5_lib.init_cache(self.model_config.t5, hidden.shape[0], max_len, hidden, mask)
      return {"t5": t5_cache, "enc": hidden, "enc_mask": mask}

    def greedy(params, hidden, mask):
      res = decoding.greedy_search(make_step(params), init_cache(hidden, mask),
                                   batch_size=hidden.shape[0], max_len=max_len,
                                   start_id=0, eos_id=self.tokenizer.eos_id)
      return res.tokens, res.scores

    def beam(params, hidden, mask, beam_size):
      res = decoding.beam_search(make_step(params), init_cache(hidden, mask),
                                 batch_size=hidden.shape[0], beam_size=beam_size,
                                 max_len=max_len, start_id=0, eos_id=self.tokenizer.eos_id,
                                 length_penalty=ev.length_penalty)
      return res.tokens, res.scores

    def sample(params, hidden, mask, rng, num_samples, top_p, temperature):
      res = decoding.sample(make_step(params), init_cache(hidden, mask), rng,
                            batch_size=hidden.shape[0], num_samples=num_samples, max_len=max_len,
                            start_id=0, eos_id=self.tokenizer.eos_id, top_p=top_p,
                            temperature=temperature)
      # Length-normalised like beam search's scores, so the two rank alike.
      lengths = decoding.sequence_lengths(res.tokens, self.tokenizer.eos_id)  # [b, n]
      return res.tokens, res.scores / decoding.gnmt_length_penalty(lengths, ev.length_penalty)

    def rank(params, hidden, mask, cand_ids, cand_mask):
      """Sum log-likelihood of each candidate [C, L] for each example -> [B, C]."""
      b, c = hidden.shape[0], cand_ids.shape[0]
      # [b, s, d] -> [b * c, s, d]
      h = jnp.repeat(hidden, c, axis=0)
      m = jnp.repeat(mask, c, axis=0)
      # [c, l] -> [b * c, l]
      tgt = jnp.tile(cand_ids, (b, 1))
      tmask = jnp.tile(cand_mask, (b, 1))
      logits = model.apply({"params": params}, h, m, t5_lib.shift_right(tgt, 0, 0), tmask,
                           method=CaptionT5.decode)
      logp = jax.nn.log_softmax(logits, axis=-1)
      # [b * c, l, vocab] -> [b * c, l]
      tok = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
      # [b * c] -> [b, c]
      return (tok * tmask).sum(-1).reshape(b, c)

    return {"encode": jax.jit(encode), "greedy": jax.jit(greedy),
            "beam": jax.jit(beam, static_argnums=3),
            "sample": jax.jit(sample, static_argnums=(4, 5, 6)), "rank": jax.jit(rank)}

  def _encoder_inputs(self, batch: dict, task: str, drafts: Optional[list[str]] = None):
    texts = []
    concepts = self.batch_concepts(batch)
    for i in range(len(batch["video_id"])):
      th = thoughts_lib.build_thoughts(
          batch["metadata"][i], batch["subtitle"][i], self.thought_cfg,
          concepts=concepts[i],
          draft=drafts[i] if drafts else None, rng=None)
      texts.append(thoughts_lib.encoder_text(task, th))
    return self.tokenizer.encode_batch(texts, self.config.text.max_input_len)

  def predict(self, params, batch: dict, tasks: Sequence[str] = ("caption", "classify", "tags"),
              frame_mask: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Runs every task on one batch of decoded examples (host-side)."""
    j, ev = self._jitted, self.config.eval
    visual = {k: np.asarray(batch[k]) for k in ("frames", "features") if k in batch}
    fmask = jnp.asarray(batch["frame_mask"] if frame_mask is None else frame_mask, jnp.int32)
    out: dict[str, Any] = {}

    def enc(task, drafts=None):
      ids, mask = self._encoder_inputs(batch, task, drafts)
      return j["encode"](params, visual, fmask, jnp.asarray(ids), jnp.asarray(mask))

    def generate(hidden, mask):
      if ev.beam_size > 1:
        toks, _ = j["beam"](params, hidden, mask, int(ev.beam_size))
        toks = np.asarray(toks)[:, 0]  # best beam: [b, max_len]
      else:
        toks, _ = j["greedy"](params, hidden, mask)
      return self.tokenizer.decode_batch(np.asarray(toks))

    if "caption" in tasks:
      hidden, mask = enc("caption")
      caps = generate(hidden, mask)
      out["draft"] = caps
      if "draft" in self.thought_cfg.sources and ev.refine:
        hidden, mask = enc("caption", drafts=caps)
        caps = generate(hidden, mask)
      if ev.rerank.candidates > 0:
        out["model_caption"] = caps
        out["candidates"] = self.ranked_candidates(batch, self.caption_candidates(params, hidden, mask))
        caps = [c[0]["caption"] if c else "" for c in out["candidates"]]
      out["caption"] = caps
    if "classify" in tasks and self.class_names:
      hidden, mask = enc("classify")
      out["class_generated"] = generate(hidden, mask)
      ids, cmask = self.tokenizer.encode_batch(self.class_names, self.config.text.max_target_len)
      out["class_scores"] = np.asarray(j["rank"](params, hidden, mask, jnp.asarray(ids),
                                                 jnp.asarray(cmask)))
    if "tags" in tasks:
      hidden, mask = enc("tags")
      out["tags"] = generate(hidden, mask)
    return out

  def caption_candidates(self, params, hidden, mask, *, source: Optional[str] = None,
                         num: Optional[int] = None, seed: Optional[int] = None
                         ) -> list[list[tuple[str, float]]]:
    """``num`` candidate captions per example with their length-normalised log-probability.

    ``source`` is 'beam' (the ``num`` best beams) or 'sample' (``num`` top-p
    samples, ``eval.rerank.top_p`` / ``temperature``, seeded by ``seed``);
    both default to ``eval.rerank``. Duplicates are kept once, at their best
    score; hypotheses a tiny vocabulary could not fill (score ``-inf``) are
    dropped. This is also how pseudo-labels are drawn.
    """
    r = self.config.eval.rerank
    source = source or r.source
    num = int(num or r.candidates or 1)
    j = self._jitted
    if source == "beam":
      toks, scores = j["beam"](params, hidden, mask, num)
    elif source == "sample":
      rng = jax.random.PRNGKey(int(r.seed if seed is None else seed))
      toks, scores = j["sample"](params, hidden, mask, rng, num, float(r.top_p), float(r.temperature))
    else:
      raise ValueError(f"eval.rerank.source must be 'beam' or 'sample', got {source!r}")
    toks, scores = np.asarray(toks), np.asarray(scores)  # [b, num, len], [b, num]
    out = []
    for row_toks, row_scores in zip(toks, scores):
      best: dict[str, float] = {}
      for text, score in zip(self.tokenizer.decode_batch(row_toks), row_scores):
        if np.isfinite(score) and score > best.get(text, -np.inf):
          best[text] = float(score)
      out.append(sorted(best.items(), key=lambda kv: -kv[1]))
    return out

  def video_text_similarity(self, batch: dict, texts: list[list[str]]) -> list[np.ndarray]:
    """cos(video, text) under the video-text CLIP(s) for each example's own texts (mean over folds)."""
    if "frames" not in batch:
      raise ValueError("eval.rerank needs decoded frames; it is not available when training on "
                       "cached features (data.features_dir)")
    flat = sorted({t for row in texts for t in row})
    if not flat:
      return [np.zeros((0,), np.float32) for _ in texts]
    scorers = self.clip_scorers(purpose="eval.rerank.candidates > 0")
    frames = np.asarray(batch["frames"])
    # [b, n]: every example against every text, averaged over the CLIPs.
    sims = np.mean([s.scores(s.fit_frames(frames), flat) for s in scorers], axis=0)
    index = {t: i for i, t in enumerate(flat)}
    return [sims[b, [index[t] for t in row]] if row else np.zeros((0,), np.float32)
            for b, row in enumerate(texts)]

  def ranked_candidates(self, batch: dict, candidates: list[list[tuple[str, float]]]
                        ) -> list[list[dict[str, float]]]:
    """Re-ranks candidates by ``log-prob + eval.rerank.weight * cos(video, caption)``, best first."""
    weight = float(self.config.eval.rerank.weight)
    sims = self.video_text_similarity(batch, [[c for c, _ in row] for row in candidates])
    ranked = []
    for row, sim in zip(candidates, sims):
      items = [{"caption": c, "logprob": lp, "clip": float(s), "score": lp + weight * float(s)}
               for (c, lp), s in zip(row, sim)]
      ranked.append(sorted(items, key=lambda d: -d["score"]))
    return ranked

  def _eval_loader(self, records, batch_size, split: Optional[str] = None):
    if self.features_shape:
      split = split or self.config.data.eval_split
      key = self.config.data.features_layer

      def rename(ex):
        ex = dict(ex)
        ex["features"] = ex.pop(key)
        return ex

      return pipeline.make_loader(
          self.feature_source(split), transform=pipeline.PassThrough(), extra_transforms=[rename],
          batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
          shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True)
    return pipeline.make_loader(
        records, transform=pipeline.VideoDecodeTransform(self._eval_spec(), train=False, seed=0,
                                                         decoder=self.frame_cache),
        batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
        shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True,
        read_threads=self.config.data.read_threads)

  def run_eval(self, params, records: Sequence[VideoRecord], *, corrupt=None) -> tuple[dict, list]:
    """Predictions and metrics on ``records``. ``corrupt(batch) -> (frames, frame_mask)``."""
    ev = self.config.eval
    refs, cands, rows = {}, {}, []
    labels, scores, gen_labels, tag_true, tag_pred = [], [], [], [], []
    for batch in self._eval_loader(list(records), ev.batch_size):
      if corrupt is not None:
        batch = dict(batch)
        batch["frames"], batch["frame_mask"] = corrupt(batch)
      pred = self.predict(params, batch)
      for i in range(len(batch["video_id"])):
        if not bool(batch["valid"][i]):
          continue
        vid = batch["video_id"][i]
        row = {"video_id": vid, "path": batch["path"][i]}
        if "caption" in pred and batch["captions"][i]:
          refs[vid], cands[vid] = list(batch["captions"][i]), [pred["caption"][i]]
          row.update(caption=pred["caption"][i], draft=pred["draft"][i],
                     references=list(batch["captions"][i]))
          if "candidates" in pred:
            row.update(model_caption=pred["model_caption"][i], candidates=pred["candidates"][i])
        if "class_scores" in pred and batch["label"][i]:
          labels.append(self.class_names.index(batch["label"][i]))
          scores.append(pred["class_scores"][i])
          gen_labels.append(pred["class_generated"][i])
          row.update(label=batch["label"][i],
                     class_ranked=self.class_names[int(np.argmax(pred["class_scores"][i]))],
                     class_generated=pred["class_generated"][i])
        if "tags" in pred and batch["tags"][i]:
          tag_true.append(set(batch["tags"][i]))
          tag_pred.append(thoughts_lib.parse_tags(pred["tags"][i]))
          row.update(tags=sorted(tag_pred[-1]), tags_true=sorted(tag_true[-1]))
        rows.append(row)
    metrics: dict[str, float] = {}
    if refs:
      metrics.update(caption_metrics.compute_caption_metrics(refs, cands,
                                                             meteor=_meteor_flag(ev.meteor)))
    if labels:
      metrics.update(self._class_metrics(np.asarray(labels), np.stack(scores), gen_labels))
    if tag_true:
      metrics.update({f"tags_{k}": v for k, v in cls_metrics.multilabel_f1(tag_pred, tag_true).items()})
    metrics["num_examples"] = float(len(rows))
    return metrics, rows

  def tail_classes(self) -> list[int]:
    """Indices of the tail classes: the dataset's own head/tail split when it has
    one (the synthetic ``classes.json``), else classes with fewer training clips
    than ``eval.tail_fraction`` x the largest class."""
    path = os.path.join(self.root, "classes.json")
    if os.path.isfile(path):
      with open(path) as f:
        doc = json.load(f)
      tail = doc.get("tail") or [c["name"] for c in doc.get("classes", []) if c.get("tail")]
      if tail:
        return [self.class_names.index(c) for c in tail if c in self.class_names]
    counts = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names])
    return [int(i) for i in np.nonzero(counts < self.config.eval.tail_fraction * counts.max())[0]]

  def _class_metrics(self, labels: np.ndarray, scores: np.ndarray, generated: list[str],
                     prefix: str = "") -> dict:
    counts = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names])
    rep = cls_metrics.classification_report(labels, scores=scores, class_counts=counts,
                                            tail_classes=self.tail_classes())
    out = {f"{prefix}{k}": float(rep[k]) for k in
           ("top1", "top5", "macro_f1", "mean_recall", "head_mean_recall", "tail_mean_recall")}
    if generated is not None:
      gen = cls_metrics.match_generated(generated, self.class_names)
      out[f"{prefix}top1_generated"] = float(np.mean(gen == labels))
    return out

  def baselines(self, records: Sequence[VideoRecord]) -> dict[str, float]:
    """Trivial baselines on ``records``: the most frequent training caption for
    every clip; the most frequent training class for every clip (class prior)."""
    out = {}
    refs = {r.video_id: list(r.captions) for r in records if r.captions}
    if refs and self.caption_prior:
      top = self.caption_prior.most_common(1)[0][0]
      m = caption_metrics.compute_caption_metrics(refs, {k: [top] for k in refs}, meteor=False)
      out.update({f"baseline_caption_{k}": v for k, v in m.items()})
    lab = np.asarray([self.class_names.index(r.label) for r in records if r.label])
    if lab.size and self.train_class_counts:
      prior = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names], float)
      out.update(self._class_metrics(lab, np.tile(prior, (len(lab), 1)), None,
                                     prefix="baseline_prior_"))
    return out

  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    records = self.eval_records()
    metrics, rows = self.run_eval(params, records)
    metrics.update(self.baselines(records))
    if jax.process_index() == 0:
      paths.write_text(paths.join(workdir, f"samples_step{step}.jsonl"),
                       "".join(json.dumps(row) + "\n" for row in rows))
      paths.write_text(paths.join(workdir, "eval_metrics.json"), json.dumps(
          {"step": step, "split": self.config.data.eval_split, **metrics}, indent=2))
      print(format_table(metrics, step, self.config.data.eval_split), flush=True)
    return metrics


  # ---- user files and robustness ----------------------------------------------------
  def caption_files(self, params, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Caption, class and tags for a user's own video files (``t5video caption``)."""
    records = [VideoRecord(video_id=f"user-file:{i}:{os.path.basename(p)}", path=os.path.abspath(p), split="user")
               for i, p in enumerate(paths)]
    loader = pipeline.make_loader(
        records, transform=pipeline.VideoDecodeTransform(self._eval_spec(), train=False, seed=0),
        batch_size=min(len(records), self.config.eval.batch_size), seed=0, shuffle=False,
        num_epochs=1, shard_index=0, shard_count=1, worker_count=0, drop_remainder=False,
        pad_to_batch=True, read_threads=1)
    by_path = {}
    for batch in loader:
      pred = self.predict(params, batch)
      for i in range(len(batch["path"])):
        if int(batch["index"][i]) < 0:
          continue  # padding slot
        path = paths[int(batch["index"][i])]
        if not bool(batch["valid"][i]):
          by_path[path] = {"path": path, "error": batch["failure"][i]}
          continue
        scores = pred.get("class_scores")
        by_path[path] = {
            "path": path, "caption": pred["caption"][i],
            "class": self.class_names[int(np.argmax(scores[i]))] if scores is not None else "",
            "tags": sorted(thoughts_lib.parse_tags(pred["tags"][i])),
        }
    return [by_path[p] for p in paths]

  def robustness(self, params, *, workdir: str, drop_rates=(0.0, 0.25, 0.5, 0.75),
                 noise_stds=(0.0, 10.0, 25.0, 50.0), seed: int = 0) -> dict[str, Any]:
    """Metric curves under frame dropping and Gaussian pixel noise (std in 0-255 units).

    Dropped frames are zeroed and masked out (at least one frame is kept); the
    same clips and the same random draws are used at every level.
    """
    records = self.eval_records()
    keys = ("CIDEr", "BLEU-4", "top1", "tags_micro_f1")
    curves: dict[str, Any] = {"drop": [], "noise": []}
    for rate in drop_rates:
      rng = np.random.default_rng(seed)

      def drop(batch, rate=rate, rng=rng):
        mask = np.asarray(batch["frame_mask"]).astype(bool).copy()
        b, t = mask.shape
        for i in range(b):
          k = min(int(round(rate * t)), t - 1)
          mask[i, rng.permutation(t)[:k]] = False
        frames = np.asarray(batch["frames"]) * mask[:, :, None, None, None]
        return frames.astype(np.uint8), mask.astype(np.int32)

      m, _ = self.run_eval(params, records, corrupt=drop)
      curves["drop"].append({"rate": rate, **{k: m.get(k) for k in keys}})
    for std in noise_stds:
      rng = np.random.default_rng(seed)

      def noise(batch, std=std, rng=rng):
        frames = np.asarray(batch["frames"], np.float32)
        frames = frames + rng.normal(0.0, std, frames.shape) if std else frames
        return np.clip(frames, 0, 255).astype(np.uint8), np.asarray(batch["frame_mask"], np.int32)

      m, _ = self.run_eval(params, records, corrupt=noise)
      curves["noise"].append({"std": std, **{k: m.get(k) for k in keys}})
    if jax.process_index() == 0:
      paths.write_text(paths.join(workdir, "robustness.json"), json.dumps(curves, indent=2))
      png = os.path.join(paths.local_mirror(workdir), "robustness.png")
      _plot_robustness(curves, png)
    return curves


def _plot_robustness(curves: dict[str, Any], out: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for ax, (name, xkey) in zip(axes, (("drop", "rate"), ("noise", "std"))):
    xs = [row[xkey] for row in curves[name]]
    for key in ("CIDEr", "BLEU-4", "top1", "tags_micro_f1"):
      ys = [row.get(key) for row in curves[name]]
      if all(y is not None for y in ys):
        ax.plot(xs, ys, "o-", label=key)
    ax.set_xlabel("dropped frame share" if name == "drop" else "noise std (0-255)")
    ax.set_title(f"robustness: {name}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)


def format_table(m: dict[str, float], step: int, split: str) -> str:
  """The summary table printed after each evaluation."""
  def f(key, scale=100.0):
    return f"{scale * m[key]:7.2f}" if key in m else "      -"
  lines = [
      f"evaluation at step {step} on {split} ({int(m.get('num_examples', 0))} clips)",
      f"{'':22s} {'CIDEr':>7s} {'BLEU-4':>7s} {'ROUGE-L':>7s} {'top-1':>7s} {'macroF1':>7s} {'tail-R':>7s} {'tagF1':>7s}",
      f"{'CaptionT5':22s} {f('CIDEr')} {f('BLEU-4')} {f('ROUGE-L')} {f('top1')} {f('macro_f1')} {f('tail_mean_recall')} {f('tags_micro_f1')}",
      f"{'most frequent caption':22s} {f('baseline_caption_CIDEr')} {f('baseline_caption_BLEU-4')} {f('baseline_caption_ROUGE-L')}",
      f"{'class prior':22s} {'':7s} {'':7s} {'':7s} {f('baseline_prior_top1')} {f('baseline_prior_macro_f1')} {f('baseline_prior_tail_mean_recall')}",
      "(all numbers x100; CIDEr-D as pycocoevalcap reports it, x100)",
  ]
  return "\n".join(lines)
