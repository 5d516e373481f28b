"""R2-Tuning on YouTube Highlights (highlight detection: one model per domain, mAP).

Data: the videos (``DIR/videos/<vid>.mp4``) and UMT's release of the annotations,
``DIR/youtube_anno.json`` (per video its frame count, frame rate and a -1 / 1 ``match`` label
per clip, the clips splitting the video evenly). Convert it once into the QVHighlights layout
(the published per-domain train / val split), then train one domain (``dog``, ``gymnastics``,
``parkour``, ``skating``, ``skiing`` or ``surfing``)::

  t5video data youtube-highlights --root DIR
  t5video train --config configs/r2tuning/youtube_highlights.py:dog --workdir runs/r2_yt_dog \\
      --config.data.root=DIR --config.model.clip_init=/path/to/clip-vit-base-patch32

``:dog,meanpool`` trains the mean-pooling baseline head instead. The paper's figure is the mean
of the six domains' ``HL-YouTube-mAP`` (76.1).

As the paper trains it (its public YouTube Highlights configs): strides (1,), no temporal
end-point features, no boundary head, BCE of each clip's logit against (match + 1) / 2, the
row term of the saliency NCE, saliency = sigmoid(class logit); batch 4, 200 epochs, 50 warm-up
steps, then a constant AdamW 5e-4. Evaluated every tenth of the run on the domain's validation
videos, the best kept. The metric: per video, the AP of all clips ranked by the model's
saliency, clips with match > 0 the positives, averaged over videos.

**One deliberate difference:** the paper samples one frame per annotated clip (its frame rate
differs per video); t5video samples every video at one frame per second (``data.fps``) and
scores an annotated clip by the mean saliency of the frames that fall in it (the nearest
frame for clips under a second), so features are extracted once at one rate. Videos longer
than ``max_clips`` seconds (300) are cut there; their later clips score 0.

Hardware: one 16 GB accelerator. Feature extraction keeps every token of the last 4 layers in
float16, 0.3 MB per frame at ViT-B/32, one frame per second of video; it is decoding-bound:
shard it with ``t5video extract-features`` or let the first run do it.
"""

from __future__ import annotations

import ml_collections

from t5video.data import grounding_formats
from t5video.recipes.r2tuning import config as common


# The accelerators this config is checked on (`t5video compile --config configs/r2tuning/youtube_highlights.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v5e-1",)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: ``DOMAIN`` (a YouTube Highlights domain) or ``DOMAIN,meanpool``; none: ``dog``."""
  return common.highlight_config("configs/r2tuning/youtube_highlights.py", arg,
                                 splits=grounding_formats.highlight_splits()["youtube_highlights"],
                                 epochs=200, fps=1.0, max_clips=300, metric="HL-YouTube-mAP")
