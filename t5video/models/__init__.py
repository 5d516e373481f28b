"""Flax ports of CLIP and T5, the video models built on them, and HF converters.

``load_hf(dir)`` / ``export_hf(module, params, dir)`` (also reachable as
``t5video.models.hf.load_hf`` / ``hf.export_hf``) read and write Hugging Face
CLIP and T5 directories.
"""

from t5video.models.hf import export_hf, load_hf

__all__ = ["export_hf", "load_hf"]
