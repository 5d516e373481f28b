"""Stand-ins for pretrained CLIP and T5, built here: the demo's pretrained weights.

Real checkpoints cannot be downloaded on every machine, so ``t5video standins``
pretrains small ones on the synthetic world in a few minutes and writes them as
Hugging Face directories, the form a user's ``openai/clip-vit-base-patch16`` or
``google/flan-t5-base`` snapshot takes:

* a CLIP trained contrastively on rendered stills with captions (objects,
  colours, sizes, places, counts, backgrounds; no motion);
* a T5 trained with span corruption on the world's text, with its SentencePiece
  tokenizer.

Files: ``config.py`` (schema, defaults, checks, cache key), ``data.py`` (stills
and their captions, the text corpus, span corruption), ``pretrain.py`` (the two
training loops), ``evaluate.py`` (zero-shot accuracy, held-out loss, controls),
``cache.py`` (the build, its cache, export, the command line). Notes: docs/standins.md.
"""

from t5video.recipes.standins.cache import build, is_complete, main, read_results, resolve, write_out
from t5video.recipes.standins.config import base_config, cache_key, cache_root, validate

__all__ = [
    "build",
    "is_complete",
    "main",
    "read_results",
    "resolve",
    "write_out",
    "base_config",
    "cache_key",
    "cache_root",
    "validate",
]
