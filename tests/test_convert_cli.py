"""`t5video convert` and `t5video export-hf` round trips through real HF directories."""

import os

import numpy as np
import pytest
import torch

from t5video import cli


def _t5_dir(path):
  from transformers import T5Config, T5ForConditionalGeneration
  torch.manual_seed(0)
  cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                 num_heads=2, feed_forward_proj="gated-gelu", decoder_start_token_id=0)
  model = T5ForConditionalGeneration(cfg).eval()
  model.save_pretrained(path)
  return model


def _clip_dir(path):
  from transformers import CLIPConfig, CLIPModel
  torch.manual_seed(0)
  cfg = CLIPConfig(
      text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=12),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, image_size=16, patch_size=8),
      projection_dim=8)
  model = CLIPModel(cfg).eval()
  model.save_pretrained(path)
  return model


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_convert_then_export_roundtrip(tmp_path, kind, capsys):
  src = str(tmp_path / "hf")
  model = (_t5_dir if kind == "t5" else _clip_dir)(src)
  orbax_dir = str(tmp_path / "orbax")
  assert cli.main(["convert", "--hf-dir", src, "--out", orbax_dir]) == 0
  assert os.path.isdir(os.path.join(orbax_dir, "params"))
  out = str(tmp_path / "exported")
  assert cli.main(["export-hf", "--ckpt", orbax_dir, "--out", out]) == 0
  reloaded = type(model).from_pretrained(out).eval()
  want = {k: v.numpy() for k, v in model.state_dict().items()}
  got = {k: v.numpy() for k, v in reloaded.state_dict().items()}
  assert set(want) == set(got)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=0, rtol=0, err_msg=k)
  assert "wrote" in capsys.readouterr().out
