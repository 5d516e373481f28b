"""t5video: adapt image-language models (CLIP, T5) to video in JAX/Flax."""

__version__ = "0.1.0"
