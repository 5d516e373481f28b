"""ViFi-CLIP on Kinetics-400, ViT-B/16, both CLIP towers fine-tuned.

Args (``--config configs/vificlip/k400.py:ARG``):
  supervised (default): the paper's fully supervised setting, 16 frames,
    batch 512, lr 2.2e-5, 30 epochs (5 warm-up), cosine, label smoothing 0.1,
    mixup 0.8; multi-view testing 4 clips x 3 crops (paper: 83.9 top-1).
  zeroshot: the paper's K400 training for zero-shot transfer, 32 frames,
    batch 256, lr 8e-6, 10 epochs; evaluate the result on HMDB51 / UCF101 with
    ``hmdb51.py:zeroshot`` / ``ucf101.py:zeroshot`` (paper: 51.3 / 76.8).

Data: the 'kinetics' layout (``<root>/train.csv``, ``validate.csv`` with
label, youtube_id, time_start, time_end; videos under ``<root>``). Weights:
``openai/clip-vit-base-patch16`` saved locally (``--config.init_from.path``)::

  t5video train --config configs/vificlip/k400.py:supervised --workdir gs://BUCKET/vifi_k400 \
      --config.init_from.path=/ckpt/clip-vit-base-patch16 --config.model.tokenizer=/ckpt/clip-vit-base-patch16 \
      --config.data.root=/data/kinetics400

Hardware: a TPU v4-32 slice (or v5e-64), or 8 x A100/H100 80GB as in the
paper; 16 x 224^2 frames per clip at batch 512 needs ``train.micro_batches``
(set here to 4) and bfloat16. K400 train ~240k clips (clips that failed to
download vary; set ``num_train`` below to yours).
"""

from __future__ import annotations

import os

import ml_collections

from t5video.recipes.vificlip import config as common
from t5video.recipes.captiont5 import checkpoint_dir

NUM_TRAIN = 240_436  # Kinetics-400 train clips (the official list; set to what you have)
CLIP_DIR = os.path.join(checkpoint_dir(), "clip-vit-base-patch16")  # or --config.init_from.path=DIR


# The accelerators this config is checked on (`t5video compile --config configs/vificlip/k400.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-32", "v5litepod-64"), "supervised": ("v4-32", "v5litepod-64"), "zeroshot": ("v4-32", "v5litepod-64")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "supervised"
  if arg == "supervised":
    c = common.recipe_config(clip_dir=CLIP_DIR, layout="kinetics", root="", num_frames=16,
                             batch_size=512, learning_rate=2.2e-5, epochs=30, num_train=NUM_TRAIN)
    c.eval.num_clips = 4
    c.eval.num_crops = 3
    c.eval.crop_square = 256
  elif arg == "zeroshot":
    c = common.recipe_config(clip_dir=CLIP_DIR, layout="kinetics", root="", num_frames=32,
                             batch_size=256, learning_rate=8e-6, epochs=10, num_train=NUM_TRAIN)
  else:
    raise ValueError(f"configs/vificlip/k400.py: arg must be 'supervised' or 'zeroshot', got {arg!r}")
  c.data.num_classes = 400  # Kinetics-400 (sizes t5video compile; training reads them from the data)
  c.train.micro_batches = 4
  c.data.resize_short = 256
  return c
