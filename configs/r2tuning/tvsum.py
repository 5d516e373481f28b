"""R2-Tuning on TVSum (highlight detection: one model per category, top-5 mAP).

Data: the TVSum release (``ydata-tvsum50-anno.tsv``, ``ydata-tvsum50-info.tsv`` and
``video/<video_id>.mp4``) in one folder ``DIR``. Convert the annotations once into the
QVHighlights layout (the 50 videos split per category, 4 for training and 1 for validation, as
every paper since UMT reports), then train one category (``BK``, ``BT``, ``DS``, ``FM``, ``GA``,
``MS``, ``PK``, ``PR``, ``VT`` or ``VU``)::

  t5video data tvsum --root DIR
  t5video train --config configs/r2tuning/tvsum.py:BK --workdir runs/r2_tvsum_bk \\
      --config.data.root=DIR --config.model.clip_init=/path/to/clip-vit-base-patch32

(the converter links ``DIR/videos``, where the layout looks for videos, to the release's ``video/``)

``:BK,meanpool`` trains the mean-pooling baseline head instead of the R² block. The paper's
figure is the mean of the ten categories' ``HL-TVSum-top5-mAP`` (85.2).

As the paper trains it (its public TVSum configs): the query is the video's title; one frame per
2-second clip; strides (1,), no temporal end-point features, no boundary head, BCE of each
clip's logit against its score ((mean of the 20 annotators' 1-5 scores - 1) / 4), the row term
of the saliency NCE, saliency = sigmoid(class logit); batch 4, 500 epochs (500 steps: 4
training videos), 50 warm-up steps, then a constant AdamW 5e-4 (weight decay 1e-4, clipping
35). Evaluated every 50 steps on the validation video, the best kept. The metric: per
annotator, the clips above that annotator's median are the highlights, the AP of the model's
top 5 clips, averaged over annotators (``t5video.evaluate.grounding.tvsum_top5_map``).

Hardware: one 16 GB accelerator (batch 4 of 330 clips). Feature extraction keeps every token
of the last 4 layers in float16, 0.3 MB per frame at ViT-B/32, one frame per 2 s of video; it
is decoding-bound. ``max_clips`` 330 is 11 minutes; a longer video is cut there and its later
clips score 0.
"""

from __future__ import annotations

import ml_collections

from t5video.data import grounding_formats
from t5video.recipes.r2tuning import config as common


# The accelerators this config is checked on (`t5video compile --config configs/r2tuning/tvsum.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v5e-1",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``DOMAIN`` (a TVSum category) or ``DOMAIN,meanpool``; none: ``BK``."""
  return common.highlight_config("configs/r2tuning/tvsum.py", arg,
                                 splits=grounding_formats.highlight_splits()["tvsum"],
                                 epochs=500, fps=0.5, max_clips=330, metric="HL-TVSum-top5-mAP")
