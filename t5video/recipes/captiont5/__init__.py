"""CaptionT5: thought-augmented video-to-text with one T5 for captions, classes and tags.

Files: ``config.py`` (schema, defaults, checks), ``data.py`` (dataset folder,
records, text transform, tokenizer, concepts), ``task.py`` (the trainer contract
and the run's preparation), ``predict.py`` (decoding, re-ranking, user files),
``evaluate.py`` (the evaluation protocol, baselines, robustness).
"""

from t5video.data.records import fraction_subset
from t5video.recipes.captiont5.config import base_config, checkpoint_dir, hf_recipe
from t5video.recipes.captiont5.data import TASK_IDS, TextTransform, prepare_data, read_split
from t5video.recipes.captiont5.evaluate import format_table
from t5video.recipes.captiont5.task import CaptionT5Task, build_model_config

__all__ = [
    "fraction_subset",
    "base_config",
    "checkpoint_dir",
    "hf_recipe",
    "TASK_IDS",
    "TextTransform",
    "prepare_data",
    "read_split",
    "format_table",
    "CaptionT5Task",
    "build_model_config",
]
