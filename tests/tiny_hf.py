"""Tiny random Hugging Face model configs shared by tests (no hub access needed)."""

from __future__ import annotations


def clip_config():
  """A ``transformers.CLIPConfig``: 2-layer towers 32 wide, 32x32 images, patch 8, projection 16."""
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, eos_token_id=98, bos_token_id=97,
                       pad_token_id=1),
      vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8),
      projection_dim=16)
