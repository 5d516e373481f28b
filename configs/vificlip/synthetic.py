"""ViFi-CLIP from scratch on the rendered synthetic videos (CPU, a few minutes).

A small CLIP (2-layer towers, 64 wide, 64x64 frames, 8 frames) is trained from
scratch on the synthetic action classes with class-prompt cross-entropy plus
InfoNCE on the captions; four single-action classes are held out (their actions occur in training
only inside two-event classes) and evaluated
zero-shot (``novel/top1``, chance 25%), next to closed-set accuracy on the
training classes, base/novel harmonic mean and caption retrieval.

The argument picks the temporal model (the ablation): ``single`` (middle frame),
``mean`` (ViFi-CLIP's temporal mean pooling, the default), ``spacetime``
(joint space-time attention with a learned temporal embedding) or ``ordered``
(the mean plus an ordered read-out of position-keeping frame tokens, zero at
init; t5video/models/vificlip.py)::

  t5video train --config configs/vificlip/synthetic.py:mean --workdir runs/vifi_mean
  t5video train --config configs/vificlip/synthetic.py:single --workdir runs/vifi_single
  t5video train --config configs/vificlip/synthetic.py:spacetime --workdir runs/vifi_st
  t5video train --config configs/vificlip/synthetic.py:ordered --workdir runs/vifi_ordered

Hardware: one CPU (2 cores are enough); the dataset (1500 clips of 2-4 s on
plain backgrounds without distractor objects) is rendered into ``data.root``
on first use (about a minute); training reads decoded frames from memory
(``data.cache_frames``) and zooms each clip by a random factor in [0.8, 1.25] (``data.zoom``;
``,nozoom`` turns it off), 3000 steps take a few minutes (``spacetime`` about 4x). ``synthetic.py:mean,tiny`` shrinks everything
for smoke tests.

``,standins`` starts both towers (sizes, weights, tokenizer) from the project's stand-in image CLIP
(``t5video standins``, built once in a few minutes and cached; docs/standins.md), through the HF
directory path a user's ``openai/clip-vit-base-patch16`` takes, as ViFi-CLIP fine-tunes an image CLIP::

  t5video train --config configs/vificlip/synthetic.py:mean,standins --workdir runs/vifi_standins

Controls (``eval.controls``): every evaluation also scores each clip with another clip's frames
(free: its embedding is swapped); ``,textonly`` adds the same recipe trained again on constant
pixels (a second training run, in ``<workdir>/control_text_only``).
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.vificlip import config as common

# Held out from training; each is an action that training sees only inside a
# two-event class ("grows then shrinks", "moves up then moves down", ...).
NOVEL_CLASSES = ("grows", "changes colour", "moves down", "disappears")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: 'single' | 'mean' | 'spacetime' | 'ordered', optionally ',tiny', ',textonly',
  ',standins' and ',nozoom'."""
  parts = [p for p in (arg or "mean").split(",") if p]
  temporal = parts[0] if parts else "mean"
  tiny = "tiny" in parts[1:]
  if temporal not in ("single", "mean", "spacetime", "ordered") or set(parts[1:]) - {"tiny", "textonly", "standins",
                                                                                     "nozoom"}:
    raise ValueError(f"configs/vificlip/synthetic.py: arg must be single|mean|spacetime|ordered[,tiny][,textonly]"
                     f"[,standins][,nozoom], got {arg!r}")

  c = common.base_config()  # every key with its default; what differs is set below
  c.seed = 0
  c.mesh.shape = (-1, 1, 1)
  c.train.num_steps = 60 if tiny else 3000
  c.train.batch_size = 16
  c.train.log_every = 20 if tiny else 50
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.max_to_keep = 1
  c.train.best_metric = ""
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 10 if tiny else 50
  c.optim.weight_decay = 1e-3
  c.optim.b2 = 0.98

  c.model.variant = "tiny"
  c.model.vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        image_size=64, patch_size=16, projection_dim=64)
  c.model.text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=24, projection_dim=64)
  c.model.projection_dim = 64
  c.model.temporal = temporal
  c.model.objective = "both"
  c.model.prompt_template = "a video of something that {}."
  c.model.text_len = 24
  c.model.tokenizer = "data_cache/synthetic_vificlip/vificlip_spiece.model"
  c.model.sentencepiece_vocab = 400

  c.data.root = "data_cache/synthetic_vificlip"
  # Plain backgrounds and no distractors: a CLIP trained from scratch on a few
  # hundred textured clips memorises them instead of learning the actions
  # (docs/vificlip.md); '()' / 2 give the full renderer.
  c.data.synthetic = dict(num_videos=80 if tiny else 1500, seed=0, sizes=((96, 72), (128, 96)),
                          class_prior="uniform", min_seconds=2.0, max_seconds=4.0,
                          backgrounds=("plain",), max_distractors=0,
                          overwrite=True)  # a cache folder: re-render when the generator changes
  c.data.novel_classes = NOVEL_CLASSES
  c.data.k_shot_seed = 0
  c.data.num_frames = 4 if tiny else 8
  c.data.size = 64
  c.data.resize_short = 72
  c.data.flip = False  # left/right are class-defining here
  # Scale jitter: each training clip magnified by one factor in [0.8, 1.25] about a random centre
  # (decode.SamplingSpec.zoom). Off-rendering closed top-1 rose with it (docs/results.md, "Scale
  # jitter"); ',nozoom' turns it off (the setting before 2026-11-30's scale-jitter runs).
  c.data.zoom = () if "nozoom" in parts[1:] else (0.8, 1.25)
  c.data.cache_frames = True  # decode each clip once; later epochs sample from memory (centre crops)

  c.eval.split = "test"
  c.eval.novel_extra_splits = ("train", "val")
  c.eval.protocols = ("closed", "zero_shot", "retrieval")
  c.eval.controls = ("other_frames", "text_only") if "textonly" in parts[1:] else ("other_frames",)
  if tiny:
    c.model.vision = dict(c.model.vision.to_dict(), hidden_size=32, intermediate_size=64, image_size=32, patch_size=8,
                          projection_dim=32)
    c.model.text = dict(c.model.text.to_dict(), hidden_size=32, intermediate_size=64, projection_dim=32)
    c.model.projection_dim = 32
    c.data.size = 32
    c.data.resize_short = 36
    c.model.tokenizer = "data_cache/synthetic_vificlip_tiny/vificlip_spiece.model"
    c.data.root = "data_cache/synthetic_vificlip_tiny"
  if "standins" in parts[1:]:
    # Fine-tune the project's stand-in image CLIP (t5video standins; built once and cached) on
    # video, as ViFi-CLIP fine-tunes OpenAI's: both towers, their sizes and the tokenizer come
    # from the HF directory, through the path a user's checkpoint takes.
    stand_in = "standins:configs/standins/default.py" + (":tiny" if tiny else "")
    c.init_from.path = stand_in
    c.init_from.regex = ".*"
    c.model.tokenizer = stand_in
    c.model.vision = {}
    c.model.text = {}
    c.model.projection_dim = 0
    c.optim.learning_rate = 5e-4  # a pretrained start: lower than from scratch (not tuned)
  return c
