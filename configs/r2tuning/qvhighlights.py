"""R2-Tuning on QVHighlights (or your own data in its layout), as the paper trains it.

Data: ``DIR/highlight_{train,val,test}_release.jsonl`` (one query per line: ``qid``,
``query``, ``vid``, ``duration``, ``relevant_windows``, ``relevant_clip_ids``,
``saliency_scores``; the test split without the last three) and the videos as
``DIR/videos/<vid>.mp4`` (any common extension). The CLIP: an HF CLIP directory
(``openai/clip-vit-base-patch32`` as ``save_pretrained`` or a hub snapshot writes it;
default ``$T5VIDEO_CHECKPOINTS/clip-vit-base-patch32``)::

  t5video train --config configs/r2tuning/qvhighlights.py --workdir runs/r2_qvh \\
      --config.data.layout=qvhighlights --config.data.root=DIR \\
      --config.model.clip_init=/path/to/clip-vit-base-patch32
  t5video eval --workdir runs/r2_qvh --split val
  t5video ground --workdir runs/r2_qvh --query "a man talks about his trip" VIDEO.mp4

``:meanpool`` trains the mean-pooling baseline head instead of the R² block.

What it does: the run's prepare step decodes one frame per 2-second clip of every video
(at most 75: 150 s), keeps every token of the last 4 vision layers (50 x 768 at ViT-B/32)
and the last 4 text layers' token states, in float16 under ``data.feature_dir`` (about
23 MB per video: ~240 GB for QVHighlights' 10k videos; put it on a large local disk and
share it between runs), then trains the 2.8M-parameter R² block on them: AdamW 5e-4,
weight decay 1e-4, 500 warm-up steps, gradient clipping 35, batch 128, 30 epochs of the
training set repeated 4 times (6,767 steps at 7,218 queries). The paper decays the learning
rate ×0.1 at epoch 20; the engine's schedules are cosine / linear / rsqrt / constant, so this
config uses cosine to 0 (a difference from the paper). Evaluation: the val split with
moment_detr's metrics, the blank-video and other-video controls and the centre baseline.

Hardware: one 16 GB TPU v5e chip (v5e-1) with 2 micro-batches of 64 (the global batch stays 128):
11.2 GiB per chip, a roofline step of 110 ms (memory-bound); in one batch of 128 it needs 16.1
GiB (``t5video compile --config configs/r2tuning/qvhighlights.py``, docs/tpu.md). The input
pipeline reads ~3 GB of features per batch of 128, so use ``data.worker_count`` and a fast local
disk. Extraction at ViT-B/32 is dominated by decoding (several hours of CPU for
the 10k videos; run ``t5video train`` once to extract, or shard ``t5video extract-features``
over hosts). On a CPU this is not practical: use configs/r2tuning/synthetic.py there.
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.r2tuning import config as common

NUM_TRAIN = 7218   # queries in highlight_train_release.jsonl


# The accelerators this config is checked on (`t5video compile --config configs/r2tuning/qvhighlights.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v5e-1",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: 'r2' (default) | 'meanpool'."""
  c = common.paper_config("configs/r2tuning/qvhighlights.py", arg, num_train=NUM_TRAIN,
                          best_metric="MR-full-mAP")  # the paper's QVHighlights values
  c.data.max_clips = 75
  c.data.size = 224
  c.data.resize_short = 224
  c.eval.split = "val"
  c.eval.batch_size = 32
  c.train.micro_batches = 2  # 128 at once needs 16.1 GiB per chip: more than a 16 GB v5e chip has
  return c
