"""R2-Tuning on Charades-STA (moment retrieval: one window per query, no saliency labels).

Data: Charades' videos and the Charades-STA annotations in one folder ``DIR``
(``charades_sta_{train,test}.txt``, lines ``<vid> <start> <end>##<sentence>``, and optionally
``Charades_v1_{train,test}.csv`` for the video lengths; videos as ``DIR/videos/<vid>.mp4``).
Convert the annotations once into the QVHighlights layout every grounding recipe reads, then
train and evaluate on the test split (the benchmark has no validation split)::

  t5video data charades-sta --root DIR
  t5video train --config configs/r2tuning/charades_sta.py --workdir runs/r2_charades \\
      --config.data.root=DIR --config.model.clip_init=/path/to/clip-vit-base-patch32
  t5video ground --workdir runs/r2_charades --query "a person opens the door" VIDEO.mp4

``:meanpool`` trains the mean-pooling baseline head instead of the R² block.

As the paper trains it: one frame per second (1-second clips), AdamW 2.5e-4 with the
recipe's other defaults (weight decay 1e-4, 500 warm-up steps, clipping 35, batch 128, 30
epochs of the training set repeated 4 times, cosine decay where the paper steps down at
epoch 20), non-maximum suppression at IoU 0.7 at inference; R1 at IoU 0.3 / 0.5 / 0.7 and
mIoU (the ``r2tuning`` protocol of :mod:`t5video.evaluate.grounding`). Charades-STA has no
per-clip saliency: the saliency targets come from the windows and no HD metric is reported.

Hardware: one 16 GB TPU v5e chip (v5e-1) with 2 micro-batches of 64 (the global batch stays 128):
11.2 GiB per chip, a roofline step of 110 ms (memory-bound); in one batch of 128 it needs 16.1
GiB (``t5video compile --config configs/r2tuning/charades_sta.py``, docs/tpu.md). Feature extraction (about 9.8k videos of ~30 s, one frame
per second, every token of the last 4 layers in float16: ~4.6 MB per video, ~45 GB) is
decoding-bound and takes hours of CPU; shard it over hosts with ``t5video extract-features``
or let the first ``t5video train`` do it. Not practical on a CPU: use
configs/r2tuning/synthetic.py there.
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.r2tuning import config as common

NUM_TRAIN = 12408   # queries in charades_sta_train.txt


# The accelerators this config is checked on (`t5video compile --config configs/r2tuning/charades_sta.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v5e-1",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: 'r2' (default) | 'meanpool'."""
  c = common.paper_config("configs/r2tuning/charades_sta.py", arg, num_train=NUM_TRAIN,
                          learning_rate=2.5e-4)
  c.data.fps = 1.0
  c.data.max_clips = 75              # 75 s: longer than almost every Charades video
  c.eval.split = "test"
  c.eval.protocol = "r2tuning"
  c.eval.nms = "normal:0.7"
  c.eval.batch_size = 32
  c.train.micro_batches = 2  # 128 at once needs 16.1 GiB per chip: more than a 16 GB v5e chip has
  return c
