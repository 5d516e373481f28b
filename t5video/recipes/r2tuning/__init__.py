"""R2-Tuning: temporal grounding (moment retrieval, highlight detection) on a frozen CLIP.

Files: ``config.py`` (schema, defaults, checks), ``data.py`` (queries, the frozen CLIP,
cached features, examples), ``task.py`` (the trainer contract and the run's prepare step),
``predict.py`` (batched inference, ``t5video ground``), ``evaluate.py`` (metrics, controls,
baselines, the table). The model, losses and inference: :mod:`t5video.models.r2tuning`,
:mod:`t5video.models.r2tuning_losses`; the metrics: :mod:`t5video.evaluate.grounding`.
"""

from t5video.recipes.r2tuning.config import CONTROLS, HEADS, base_config
from t5video.recipes.r2tuning.task import R2TuningTask

__all__ = ["CONTROLS", "HEADS", "base_config", "R2TuningTask"]
