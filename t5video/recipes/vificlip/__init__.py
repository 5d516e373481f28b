"""ViFi-CLIP: video-text contrastive fine-tuning of CLIP and its evaluation protocols.

Files: ``config.py`` (schema, defaults, shared config settings), ``data.py``
(records, K-shot, class list, example transform), ``task.py`` (the trainer
contract), ``predict.py`` (encoders, restore, zero-shot, :class:`ConceptScorer`),
``evaluate.py`` (closed-set, zero-shot and retrieval protocols).
"""

from t5video.recipes.vificlip.config import OBJECTIVES, PROTOCOLS, base_config, vision_config
from t5video.recipes.vificlip.data import ExampleTransform, k_shot, read_records
from t5video.recipes.vificlip.predict import ConceptScorer, Predictor, restore, zero_shot
from t5video.recipes.vificlip.task import TOKENIZER_DIR, ViFiCLIPTask, is_workdir, save_workdir_assets

__all__ = [
    "OBJECTIVES",
    "PROTOCOLS",
    "base_config",
    "vision_config",
    "ExampleTransform",
    "k_shot",
    "read_records",
    "ConceptScorer",
    "Predictor",
    "restore",
    "zero_shot",
    "TOKENIZER_DIR",
    "ViFiCLIPTask",
    "is_workdir",
    "save_workdir_assets",
]
