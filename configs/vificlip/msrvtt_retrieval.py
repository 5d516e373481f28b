"""ViFi-CLIP text-video retrieval on MSR-VTT (9k train / 1k-A test), ViT-B/16.

Symmetric InfoNCE between each video (12 frames, temporal mean pooling) and
one of its captions per epoch, both CLIP towers fine-tuned, in the setting of
CLIP4Clip's mean-pooling model (arXiv 2104.08860): lr 1e-7, batch 128,
5 epochs over the ~180k caption pairs of the 9k split (here: 7,050 steps,
10% warm-up, cosine), 32 text tokens. Reported: text-to-video and
video-to-text R@1/5/10, median and mean rank on the 1k test videos.

Data: the 'msrvtt' layout (``train_val_videodatainfo.json``,
``test_videodatainfo.json`` and the videos under ``<root>``); put the 1k-A test
list in place of the official test split if you follow that protocol::

  t5video train --config configs/vificlip/msrvtt_retrieval.py --workdir /runs/vifi_msrvtt \
      --config.init_from.path=/ckpt/clip-vit-base-patch16 --config.model.tokenizer=/ckpt/clip-vit-base-patch16 \
      --config.data.root=/data/msrvtt

Hardware: a TPU v4-8 / v5e-8, or 1-4 x A100/H100 80GB (batch 128 x 12 frames
of 224^2 in bfloat16; raise ``train.micro_batches`` on smaller memory).
The arg ``b32`` switches to ViT-B/32 (the weights directory must match).
"""

from __future__ import annotations

import os

import ml_collections

from t5video.recipes.vificlip import config as common
from t5video.recipes.captiont5 import checkpoint_dir

NUM_PAIRS = 180_000  # 9k videos x 20 captions
CLIP_DIR = os.path.join(checkpoint_dir(), "clip-vit-base-patch16")  # or --config.init_from.path=DIR


# The accelerators this config is checked on (`t5video compile --config configs/vificlip/msrvtt_retrieval.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-8", "v5litepod-8")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.recipe_config(clip_dir=CLIP_DIR, layout="msrvtt", root="", num_frames=12,
                           batch_size=128, learning_rate=1e-7, epochs=5, num_train=NUM_PAIRS,
                           warmup_epochs=0.5, mixup_alpha=0.0)
  if arg == "b32":
    c.model.variant = "B/32"
  elif arg not in (None, "", "b16"):
    raise ValueError(f"configs/vificlip/msrvtt_retrieval.py: arg must be b16 or b32, got {arg!r}")
  c.model.objective = "contrastive"
  c.model.text_len = 32
  c.model.label_smoothing = 0.0
  c.data.flip = False
  c.data.resize_short = 224
  c.eval.split = "test"
  c.eval.protocols = ("retrieval",)
  c.train.best_metric = "t2v/R@1"
  c.train.micro_batches = 2
  return c
