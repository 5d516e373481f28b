"""ViFi-CLIP on UCF101 (split 1), ViT-B/16, 32 frames.

Args (``--config configs/vificlip/ucf101.py:ARG``):
  zeroshot: no training; ``t5video eval`` of a K400 ViFi-CLIP workdir (from
    ``k400.py:zeroshot``) on all 101 classes (paper, mean of 3 splits: 76.8).
  fewshot-K (K = 2, 4, 8, 16): K clips per class drawn with ``data.k_shot_seed``,
    batch 64, lr 2e-6, 50 epochs.
  base2novel: the 51 base classes, 16 shots each, lr 2e-6, 11 epochs; evaluates
    base, novel (the other 50 classes) and their harmonic mean.
  prompt: bridge and prompt on base2novel: CLIP frozen, 16 vision + 16 text
    prompt tokens in the first 9 layers, lr 4e-2, 11 epochs;
    ``init_from`` a fine-tuned ViFi-CLIP workdir.

Data: the 'generic' layout: ``<root>/annotations.jsonl`` with
``{"path", "label", "split"}`` (class names with spaces, e.g. "apply eye makeup";
split 1's train/test lists as 'train'/'test'). For base2novel put the base class
names in ``data.classes`` and the rest in ``data.novel_classes``::

  t5video train --config configs/vificlip/ucf101.py:fewshot-16 --workdir /runs/ucf_16shot \
      --config.init_from.path=/ckpt/clip-vit-base-patch16 --config.model.tokenizer=/ckpt/clip-vit-base-patch16 \
      --config.data.root=/data/ucf101

Hardware: one 8-chip TPU (v4-8 / v5e-8) or 1-2 x A100/H100 80GB (the paper
used 8 A100 with batch 4 x 2 accumulation x 8).
"""

from __future__ import annotations

import os

import ml_collections

from t5video.recipes.vificlip import config as common
from t5video.recipes.captiont5 import checkpoint_dir

NUM_CLASSES = 101
NUM_TRAIN = 9_537  # split-1 training clips
CLIP_DIR = os.path.join(checkpoint_dir(), "clip-vit-base-patch16")  # or --config.init_from.path=DIR


# The accelerators this config is checked on (`t5video compile --config configs/vificlip/ucf101.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-8", "v5litepod-8")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.small_dataset_config(arg or "fewshot-16", dataset="ucf101", num_classes=NUM_CLASSES,
                                     num_train=NUM_TRAIN, num_base=51, clip_dir=CLIP_DIR,
                                     root="")
