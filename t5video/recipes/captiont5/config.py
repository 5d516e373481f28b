"""CaptionT5's config schema: every key with its default, the checks, and the
values derived from a config (which vision tower, which CLIP stage).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import ml_collections

from t5video import config as config_lib
from t5video.models import clip as clip_lib
from t5video.models import hf
from t5video.models import t5 as t5_lib
from t5video.models.captiont5 import CaptionT5Config
from t5video.models.layers import DTYPES, LoraSpec
from t5video.models.temporal import TemporalConfig
from t5video.config import checkpoint_dir  # noqa: F401  (configs import it from here)
from t5video.evaluate import controls as controls_lib
from t5video.recipes.captiont5 import concepts as concepts_lib
from t5video.recipes.standins import cache as standins_cache
from t5video.train import paths

DRAFT_SOURCES = ("model", "corrupted_reference")  # t5video.recipes.captiont5.drafts

# Sections whose keys are free-form: the sizes of the CLIP, T5 and temporal modules.
OPEN_SECTIONS = ("model.clip", "model.t5", "model.temporal")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a CaptionT5 config with its default; configs/captiont5/*.py start here."""
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  c = trainer.default_config()
  c.task = "captiont5"
  c.seed = 0
  c.stages = ()  # earlier stages, each {name, config, workdir, overrides} (t5video.train.stages);
                 # derived from thoughts.clip_stage when the run is prepared
  c.data = dict(
      layout="synthetic",           # 'synthetic' | 'generic' | 'msrvtt' | 'vatex' | 'kinetics'
      root="data_cache/synthetic",  # the dataset folder (synthetic: rendered here if absent)
      annotations="",               # generic layout: the JSONL/CSV file under root
      num_videos=600,               # synthetic only
      synthetic_seed=0,             # synthetic only
      synthetic_backgrounds=(),     # synthetic only: () = every kind, e.g. ('plain',)
      synthetic_max_distractors=2,  # synthetic only: other objects per clip (0 to 2)
      # synthetic only, () = the renderer's defaults: frame sizes (w, h), frame rates and the clip
      # length range (min, max) in seconds; other values render a held-out geometry (docs/results.md)
      synthetic_sizes=(),
      synthetic_fps=(),
      synthetic_seconds=(),
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
      class_names=(),               # the class list ('()': every label of the train/eval splits);
                                    # written when the run is prepared
      constant_pixels=False,        # every pixel (cached feature) constant, in training and
                                    # evaluation: the text-only control (t5video.evaluate.controls)
  )
  # Task weights; 'qa': video question answering on the records' QA pairs (t5video.data.qa).
  c.tasks = dict(caption=1.0, classify=0.0, tags=0.0, qa=0.0)
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
      # balance: how the stage samples its training clips ('' every clip equally often, 'oversample',
      # 'class_balanced'); not data.balance, which is CaptionT5's own (on the demo, a class-balanced
      # stage 0 lost on action and left/right: docs/results.md).
      # num_frames: the stage's frames per clip (0 = its config's own).
      clip_stage=dict(config="", num_steps=2000, folds=1, init_vision=False, balance="", num_frames=0),
      concepts_file="",             # default: <data.root>/concepts.txt, else caption words
      # Which CLIP ranks the concepts: '' = the video-text CLIP above (clip_workdir or the stage,
      # cross-fitted when folds > 1); else an HF CLIP directory used zero-shot (the frames'
      # mean image embedding; 'standins:CONFIG' = the stand-in image CLIP), which never saw the
      # clips, or a finished ViFi-CLIP workdir. t5video/recipes/captiont5/concepts.py
      concepts_clip="",
      # Training's concepts: 'sample' draws top_k without replacement with probability
      # softmax(cos / concept_temperature) per example (CLIP-guided thought sampling; evaluation
      # takes the top_k); 'top_k' takes each clip's top_k (what runs before 2026-11-30 did).
      concept_train="sample",
      concept_temperature=0.01,     # CLIP's logit scale is 100
      # Where the 'draft' thought comes from in training (t5video.recipes.captiont5.drafts):
      # 'model': an earlier checkpoint of this recipe, trained num_steps without drafts (stages
      # draft_model and drafts, before the run); 'corrupted_reference': a reference caption with
      # words dropped or swapped (it states the answer; for comparison only). file: the drafts,
      # set when the run is prepared.
      drafts=dict(source="model", num_steps=400, file=""),
      vocab_size=200,               # concepts taken from the captions when there is no file
  )
  c.model = dict(
      clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, image_size=224, patch_size=16, projection_dim=512,
                hidden_act="quick_gelu"),
      t5=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1),
      temporal=dict(kind="transformer", num_layers=1, num_heads=8),
      visual_tokens="pooled",       # 'pooled' (a token per frame) | 'patches' | 'grid' (the patch
                                    # grid pooled to grid_cells a side; with a ViFi-CLIP vision source
                                    # whose temporal='ordered', its ordered read-out's temporal module
                                    # and norm start the model's: t5video/models/captiont5.py)
      grid_cells=4,
      video_token="",               # '' | 'mean' | 'ordered': the ViFi-CLIP video embedding as one more
                                    # visual token (sizes from the vision source's run; see
                                    # t5video/models/captiont5.py)
      clip_init="",                 # an HF CLIP directory or a finished ViFi-CLIP workdir (then
                                    # `clip` sizes come from it)
      t5_init="",                   # an HF T5 directory (sizes and tokenizer come from it)
      remat=False,
      scan_layers=False,            # T5 blocks 1..n-1 of each stack under one nn.scan (compiles in a
                                    # fraction of the time; not with peft.method='last_n')
      dropout_rng="hash",           # T5's dropout masks: 'hash' (cheap on CPU) | 'threefry' (Flax's
                                    # nn.Dropout; what runs before 2026-11-30 used): T5Config.dropout_rng
  )
  c.peft = dict(method="full", lora_rank=8, lora_alpha=16.0, lora_dropout=0.0,
                lora_targets=r"(SelfAttention|EncDecAttention)/(q|v)$", adapter_dim=64,
                prompt_length=16, last_n=2, bridge=True)
  c.loss = dict(label_smoothing=0.0)
  # The engine's sections (mesh, sharding, train, optim, init_from) come from trainer.default_config();
  # CaptionT5 changes a few of their defaults.
  c.train.update(num_steps=10000, batch_size=64, log_every=100, checkpoint_every=1000)
  c.optim.update(learning_rate=1e-4, warmup_steps=500, weight_decay=0.01)
  c.eval = dict(max_examples=0, batch_size=32, beam_size=1, length_penalty=0.6, refine=False,
                meteor="auto",                # 'auto' (if Java is present) | 'true' | 'false'
                qa="auto",                    # video QA accuracy: 'auto' (when tasks.qa > 0) | 'true' (on
                                              # every clip with QA pairs, trained on them or not) | 'false'
                tail_fraction=0.3,
                # Controls in the same run (t5video.evaluate.controls): 'other_frames' (the model fed
                # another clip's frames; one more evaluation pass), 'text_only' (the same recipe
                # trained on constant pixels: a second training run, as a stage).
                controls=("other_frames",),
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



def meteor_flag(value) -> bool | str:
  """``eval.meteor``: 'auto' (when Java is present), 'true' or 'false' (strings or bools)."""
  v = str(value).strip().lower()
  if v not in ("auto", "true", "false", "1", "0", "yes", "no"):
    raise ValueError(f"eval.meteor must be 'auto', 'true' or 'false', got {value!r}")
  return "auto" if v == "auto" else v in ("true", "1", "yes")



def evaluates_qa(config: ml_collections.ConfigDict) -> bool:
  """Whether evaluation answers the clips' QA pairs (``eval.qa``, see :func:`base_config`)."""
  v = str(config.eval.get("qa", "auto")).strip().lower()
  if v not in ("auto", "true", "false"):
    raise ValueError(f"eval.qa must be 'auto', 'true' or 'false', got {config.eval.qa!r}")
  return v == "true" or (v == "auto" and bool(config.tasks.get("qa", 0.0)))


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond the schema's types."""
  rr = config.eval.rerank
  if rr.source not in ("beam", "sample") or rr.candidates < 0:
    raise ValueError(f"eval.rerank: source must be 'beam' or 'sample' and candidates >= 0, got "
                     f"source={rr.source!r}, candidates={rr.candidates}")
  meteor_flag(config.eval.meteor)
  if config.model.get("scan_layers") and config.peft.method == "last_n":
    raise ValueError("peft.method='last_n' trains whole T5 blocks by name; model.scan_layers=True stacks "
                     "them under one scan: use one or the other")
  evaluates_qa(config)
  controls_lib.check(config.eval.controls)
  tc = config.thoughts
  if tc.concept_train not in concepts_lib.CONCEPT_TRAIN or not tc.concept_temperature > 0:
    raise ValueError(f"thoughts.concept_train must be one of {concepts_lib.CONCEPT_TRAIN} and "
                     f"concept_temperature > 0, got {tc.concept_train!r}, {tc.concept_temperature}")
  dr = config.thoughts.drafts
  if dr.source not in DRAFT_SOURCES or dr.num_steps < 1:
    raise ValueError(f"thoughts.drafts: source must be one of {DRAFT_SOURCES} and num_steps >= 1, got "
                     f"source={dr.source!r}, num_steps={dr.num_steps}")


def check_init_dirs(config: ml_collections.ConfigDict) -> None:
  """``model.clip_init`` / ``model.t5_init``, when set, must be HF model directories
  (``clip_init`` may also be a finished ViFi-CLIP workdir; ``standins:CONFIG`` is resolved to
  the stand-in's directory when the run is prepared)."""
  for key in ("clip_init", "t5_init"):
    path = config.model[key]
    if path.startswith(standins_cache.PREFIX):
      raise ValueError(f"config.model.{key}={path!r} is resolved when the run is prepared "
                       "(t5video train); this config was not")
    if path and not os.path.isfile(os.path.join(path, "config.json")) and not (
        key == "clip_init" and is_vificlip_workdir(path)):
      other = " or a finished ViFi-CLIP workdir" if key == "clip_init" else ""
      raise FileNotFoundError(
          f"config.model.{key}={path!r} is not a Hugging Face model directory (no config.json){other}. "
          f"Put a local snapshot there (save_pretrained / a hub download), set "
          f"T5VIDEO_CHECKPOINTS to the folder holding it, or pass --config.model.{key}=DIR")


def is_vificlip_workdir(path: str) -> bool:
  """Whether ``path`` is a prepared ViFi-CLIP workdir."""
  from t5video.recipes.vificlip import task as vificlip_task  # pylint: disable=g-import-not-at-top
  return vificlip_task.is_workdir(path)


def vision_source_config(config: ml_collections.ConfigDict) -> Optional[ml_collections.ConfigDict]:
  """The ViFi-CLIP run config CaptionT5's vision tower starts from, if any.

  ``model.clip_init`` naming a ViFi-CLIP workdir (its saved config), or
  ``thoughts.clip_stage.init_vision`` (the stage's config file; the stage may
  not have trained yet).
  """
  m, st = config.model, config.thoughts.clip_stage
  if m.clip_init and is_vificlip_workdir(m.clip_init):
    meta = paths.read_text(paths.join(m.clip_init, "vificlip", "config.json"))
    return ml_collections.ConfigDict(json.loads(meta)["config"])
  if st.get("init_vision") and not m.clip_init:
    if not st.config:
      raise ValueError("thoughts.clip_stage.init_vision needs thoughts.clip_stage.config")
    return config_lib.load_config_file(st.config)
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
    from t5video.recipes.vificlip import config as vificlip_config  # pylint: disable=g-import-not-at-top
    vision = dataclasses.replace(vificlip_config.vision_config(vision_source), dtype=dtype, lora=lora,
                                 remat=m.remat)
  elif m.clip_init:
    vision = clip_lib.CLIPVisionConfig.from_hf(hf.read_hf_config(m.clip_init), dtype=dtype,
                                               lora=lora, remat=m.remat)
  else:
    vision = clip_lib.CLIPVisionConfig(**dict(m.clip), dtype=dtype, lora=lora, remat=m.remat)
  if m.t5_init:
    t5 = t5_lib.T5Config.from_hf(hf.read_hf_config(m.t5_init), dtype=dtype, lora=lora,
                                 adapter_dim=adapter_dim, remat=m.remat, scan_layers=m.scan_layers,
                                 dropout_rng=m.get("dropout_rng", "hash"))
  else:
    fields = dict(m.t5)
    fields["vocab_size"] = -(-vocab_size // 128) * 128
    fields["dropout_rng"] = m.get("dropout_rng", "hash")
    t5 = t5_lib.T5Config(**fields, dtype=dtype, lora=lora, adapter_dim=adapter_dim, remat=m.remat,
                         scan_layers=m.scan_layers)
  temporal = TemporalConfig(**dict(m.temporal), dtype=DTYPES[dtype])
  video = {}
  if m.get("video_token"):
    video = dict(video_token=m.video_token, num_frames=config.data.num_frames)
    if vision_source is not None:  # the ViFi-CLIP run's video encoder
      from t5video.recipes.vificlip import config as vificlip_config  # pylint: disable=g-import-not-at-top
      vm = vision_source.model
      video.update(projection_dim=vificlip_config.projection_dim(vision_source), order_layers=vm.get("order_layers", 1))
      if m.video_token == "ordered":
        if vm.temporal != "ordered":
          raise ValueError(f"model.video_token='ordered' needs an ordered ViFi-CLIP run, got temporal={vm.temporal!r}")
        # the read-out's weights fix the size of its grid, which also feeds the grid tokens
        video["grid_cells"] = cells = vm.get("order_grid", 4)
        if m.visual_tokens == "grid" and m.get("grid_cells", 4) != cells:
          raise ValueError(f"model.grid_cells={m.get('grid_cells', 4)}: the ordered read-out of the ViFi-CLIP run "
                           f"pools a {cells}x{cells} grid; set model.grid_cells to match")
    else:  # an image CLIP (its visual_projection) or a tower from scratch
      video.update(projection_dim=(vision.projection_dim if vision is not None else 512))
  return CaptionT5Config(vision=vision, t5=t5, temporal=temporal, visual_tokens=m.visual_tokens,
                         **{"grid_cells": m.get("grid_cells", 4), **video},
                         feature_dim=feature_dim,
                         prompt_length=p.prompt_length if p.method == "prompt" else 0, lora=lora)
