"""R2-Tuning on rendered long videos with events and queries (CPU, a few minutes).

The data (:mod:`t5video.data.synthetic_grounding`, rendered into ``data.root`` on first
use): 200 videos of 3-5 shots of 6-10 s each (about 34 s on average), every shot a scene of
the synthetic world (textured background, up to 2 still distractors) whose key object does
something (moves, grows, fades, spins, changes colour); no two shots of a video share a key
colour or shape. One query per shot ("the violet hexagon becomes smaller"), the shot as its
relevant window and 3 annotators' 1-4 saliency per 2-second clip, highest where the event
happens. Written in the QVHighlights layout, read by the same code as a user's QVHighlights
data; 560 training queries, 119 test queries.

The frozen CLIP is the project's stand-in (``t5video standins``, configs/standins/default.py:
a 2-layer CLIP trained contrastively on 12,000 rendered stills of this world with captions;
docs/standins.md), built and cached on first use (about 13 minutes on 2 loaded cores, once
per machine) since no pretrained CLIP can be downloaded here. Features of both of its layers
(every token of one frame per 2-second clip; the query's text-tower token states) are cached
once in ``data.feature_dir``, shared by every run of this config. ``--config.model.clip_init``
takes an HF CLIP directory instead.

The argument picks the head: ``r2`` (the R² block, default) or ``meanpool`` (the ablation
baseline: the last layer's tokens mean-pooled, no recursion, no query-modulated pooling)::

  t5video train --config configs/r2tuning/synthetic.py --workdir runs/r2_synth
  t5video train --config configs/r2tuning/synthetic.py:meanpool --workdir runs/r2_synth_meanpool
  t5video ground --workdir runs/r2_synth --query "the red square moves to the left" VIDEO.mp4

Hardware: one CPU (2 cores): rendering about a minute, feature extraction under a minute,
1000 steps of batch 32 and the evaluation (test split with its controls) about 6 minutes (1.5 for
``:meanpool``); the
stand-in's build the first time. ``,textonly`` adds the recipe trained again on blank
videos (a second run, in ``<workdir>/control_text_only``); ``,tiny`` shrinks everything
(and takes a random CLIP) for tests.
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.r2tuning import config as common

STANDIN = "standins:configs/standins/default.py"   # t5video standins' CLIP (built once, cached)
# The tiny test config's random CLIP (no stage).
TINY_CLIP = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=16, projection_dim=32),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              projection_dim=32))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: 'r2' | 'meanpool', optionally ',textonly' and ',tiny'."""
  parts = [p for p in (arg or "r2").split(",") if p]
  head = parts[0] if parts else "r2"
  flags = set(parts[1:])
  if head not in common.HEADS or flags - {"textonly", "tiny"}:
    raise ValueError(f"configs/r2tuning/synthetic.py: arg must be r2|meanpool[,textonly][,tiny], got {arg!r}")
  tiny = "tiny" in flags

  c = common.base_config()  # every key with its default (the paper's); what differs is set below
  c.seed = 0
  c.train.num_steps = 1000          # 300 gave R1@0.5 1.14x mean pooling, 1000 gives 1.22x (docs/results.md)
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.max_to_keep = 1
  c.optim.learning_rate = 3e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 30

  c.model.head = head
  c.model.dim = 64
  c.model.num_heads = 4
  c.model.dropout = 0.1
  c.model.clip_init = STANDIN
  c.model.num_layers = 2            # the stand-in's towers have 2 layers: all of them
  c.model.text_len = 24

  c.data.root = "data_cache/synthetic_grounding"
  c.data.synthetic = dict(num_videos=200, seed=0, shots=(3, 5), shot_seconds=(6.0, 10.0),
                          size=(96, 72), fps=4, overwrite=True)
  c.data.feature_dir = "data_cache/synthetic_grounding/features"
  c.data.max_clips = 25
  c.data.size = 64
  c.data.resize_short = 72
  c.data.extract_batch = 8

  c.eval.split = "test"
  c.eval.controls = ("other_frames", "text_only") + (("text_only_trained",) if "textonly" in flags else ())
  if tiny:
    c.train.num_steps = 12
    c.train.batch_size = 8
    c.train.log_every = 4
    c.optim.warmup_steps = 2
    c.model.num_layers = 2
    c.model.dim = 32
    c.model.strides = (1, 2)
    c.model.clip_init = ""          # a random CLIP: seconds instead of the stand-in's build
    c.model.clip = TINY_CLIP
    c.model.sentencepiece_vocab = 128
    c.model.text_len = 16
    c.data.root = "data_cache/synthetic_grounding_tiny"
    c.data.synthetic = dict(num_videos=12, seed=0, shots=(2, 3), shot_seconds=(4.0, 6.0),
                            size=(64, 48), fps=2, overwrite=True)
    c.data.feature_dir = "data_cache/synthetic_grounding_tiny/features"
    c.data.max_clips = 9
    c.data.size = 32
    c.data.resize_short = 36
    c.eval.split = "val"
    c.eval.batch_size = 8
  return c
