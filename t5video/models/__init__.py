"""Flax ports of CLIP and T5, the video models built on them, and HF converters."""
