"""R2-Tuning on TACoS (cooking videos, long: about 5 minutes on average; moment retrieval).

Data: the TACoS videos and the 2D-TAN release of its annotations in one folder ``DIR``
(``{train,val,test}.json``: per video ``num_frames``, ``fps``, ``timestamps`` in frames and
``sentences``; videos as ``DIR/videos/<vid>.avi``). Convert once into the QVHighlights layout,
then train and evaluate on the test split::

  t5video data tacos --root DIR
  t5video train --config configs/r2tuning/tacos.py --workdir runs/r2_tacos \\
      --config.data.root=DIR --config.model.clip_init=/path/to/clip-vit-base-patch32
  t5video eval --workdir runs/r2_tacos --split val

``:meanpool`` trains the mean-pooling baseline head instead of the R² block.

As the paper trains it: one frame per 2-second clip, AdamW 2.5e-4, non-maximum suppression
at IoU 0.7, the recipe's other defaults (batch 128, 30 epochs of the training set repeated 4
times, cosine decay where the paper steps down at epoch 20); R1 at IoU 0.3 / 0.5 / 0.7 and
mIoU (the ``r2tuning`` protocol). TACoS has no per-clip saliency: the targets come from the
windows and no HD metric is reported.

Our choice, not the paper's: ``data.max_clips = 256`` (512 s; the few longer videos are cut
there, their later windows lost) and batch 32, so that a batch of features (32 x 256 clips x
50 tokens x 768 x 4 layers in float16, ~10 GB) fits on one 16 GB accelerator with the model.

Hardware: one 16 GB accelerator (or raise the batch on larger ones); extraction of the 127
videos (~30 GB of float16 features) takes about an hour of CPU decoding. Not practical on a
CPU: use configs/r2tuning/synthetic.py there.
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.r2tuning import config as common

NUM_TRAIN = 10146   # queries in the 2D-TAN train.json


# The accelerators this config is checked on (`t5video compile --config configs/r2tuning/tacos.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v5e-1",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: 'r2' (default) | 'meanpool'."""
  c = common.paper_config("configs/r2tuning/tacos.py", arg, num_train=NUM_TRAIN, batch_size=32,
                          learning_rate=2.5e-4)
  c.data.fps = 0.5
  c.data.max_clips = 256
  c.eval.split = "test"
  c.eval.protocol = "r2tuning"
  c.eval.nms = "normal:0.7"
  c.eval.batch_size = 16
  return c
