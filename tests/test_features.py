"""Tests for cached CLIP features (t5video/data/features.py)."""

from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest

from t5video.data import decode
from t5video.data import features
from t5video.data import pipeline
from t5video.data.records import VideoRecord
from tests import videos

SPEC = decode.SamplingSpec(num_frames=3, size=32)
LAYERS = ("pooled", "embeds", 1)


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
  """A tiny random HF CLIPVisionModelWithProjection, saved and loaded back."""
  torch = pytest.importorskip("torch")
  import transformers

  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16,
      hidden_act="quick_gelu")
  model = transformers.CLIPVisionModelWithProjection(config).eval()
  path = str(tmp_path_factory.mktemp("clip"))
  model.save_pretrained(path)
  module, params = features._load_vision_tower(path)  # pylint: disable=protected-access
  return model, module, params


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("fvideos")
  recs = []
  for i in range(5):
    frames = np.roll(videos.palette_frames(9, 48, 64), i, axis=0)
    path = videos.write_test_video(str(root / f"v{i}.mp4"), frames, fps=6)
    recs.append(VideoRecord(video_id=f"v{i}", path=path, label=f"c{i % 2}",
                            captions=[f"video {i}"]))
  empty = str(root / "empty.mp4")
  open(empty, "wb").close()
  recs.insert(3, VideoRecord(video_id="bad", path=empty, label="c0"))
  return recs


def _extract(records, tower, out_dir, **kw):
  _, module, params = tower
  return features.extract_features(
      records, module, params, spec=SPEC, out_dir=str(out_dir),
      layers=LAYERS, tokens="cls", batch_size=2, shard_size=2, **kw)


def _load_all(out_dir):
  src = features.FeatureSource(str(out_dir))
  return {k: np.stack([src[i][k] for i in range(len(src))])
          for k in src.layers + ["timestamps", "frame_mask", "valid"]}


def test_extraction_resumes_and_matches_one_shot_run(records, tower,
                                                     tmp_path):
  out = tmp_path / "resumed"
  first = _extract(records, tower, out, max_shards=1)
  assert first["written"] == 1 and not first["complete"]
  with pytest.raises(ValueError, match="2 of 3 shards missing"):
    features.FeatureSource(str(out))
  # A run killed while writing leaves only a temporary, never a shard.
  os.makedirs(out / "shard-00001.tmp-99999")
  (out / "shard-00001.tmp-99999" / "pooled.npy").write_bytes(b"garbage")
  second = _extract(records, tower, out)
  assert (second["written"], second["skipped"], second["complete"]) == (
      2, 1, True)
  assert not [n for n in os.listdir(out) if ".tmp-" in n]
  third = _extract(records, tower, out)
  assert (third["written"], third["skipped"]) == (0, 3)

  once = tmp_path / "once"
  _extract(records, tower, once)
  resumed, oneshot = _load_all(out), _load_all(once)
  for k in oneshot:
    np.testing.assert_array_equal(resumed[k], oneshot[k])
  assert resumed["pooled"].shape == (6, 3, 32)
  assert resumed["embeds"].shape == (6, 3, 16)
  assert resumed["layer_1"].shape == (6, 3, 32)
  np.testing.assert_array_equal(resumed["valid"], [1, 1, 1, 0, 1, 1])
  assert not resumed["pooled"][3].any()
  with open(out / "failures.json") as f:
    assert json.load(f) == [{"path": records[3].path, "kind": "empty"}]
  assert second["failures"] == [(records[3].path, "empty")]


def test_features_equal_the_pytorch_tower(records, tower, tmp_path):
  """Stored layers are the HF reference's outputs for the decoded frames."""
  import torch
  model, _, _ = tower
  out = tmp_path / "all_tokens"
  _, module, params = tower
  features.extract_features(
      records[:2], module, params, spec=SPEC, out_dir=str(out),
      layers=("pooled", "embeds", 1, -1), tokens="all", batch_size=2,
      shard_size=4)
  src = features.FeatureSource(str(out))
  frames, _ = decode.decode_clip(records[1].path, SPEC)
  mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
  pixels = (frames.astype(np.float32) / 255.0 - mean) / std  # [T, H, W, 3]
  pixels = torch.from_numpy(pixels.transpose(0, 3, 1, 2))  # [T, 3, H, W]
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True)
  item = src[1]
  np.testing.assert_allclose(item["embeds"], ref.image_embeds.numpy(),
                             atol=1e-5)
  np.testing.assert_allclose(item["layer_1"],
                             ref.hidden_states[1].numpy(), atol=1e-5)
  np.testing.assert_allclose(item["layer_-1"],
                             ref.hidden_states[-1].numpy(), atol=1e-5)
  assert item["layer_1"].shape == (3, 17, 32)  # [frames, 1 + 16 patches, D]
  # HF's pooler output is the post-LayerNorm class token.
  with torch.no_grad():
    pooled = model.vision_model.post_layernorm(ref.last_hidden_state[:, 0])
  np.testing.assert_allclose(item["pooled"], pooled.numpy(), atol=1e-5)


def test_feature_source_feeds_the_loader(records, tower, tmp_path):
  out = tmp_path / "feed"
  _extract(records, tower, out)
  src = features.FeatureSource(str(out), records=records, layers=["pooled"])
  assert src.lookup("v4") == 5
  it = pipeline.make_loader(src, batch_size=3, seed=0, shuffle=False,
                            num_epochs=1, shard_index=0, shard_count=1)
  batches = list(it)
  assert len(batches) == 2
  b = batches[1]
  assert b["pooled"].shape == (3, 3, 32)
  assert b["video_id"] == ["bad", "v3", "v4"]
  assert b["captions"] == [[], ["video 3"], ["video 4"]]
  np.testing.assert_array_equal(b["valid"], [0, 1, 1])
  assert dict(it.failures.counts) == {"empty": 1}
  with pytest.raises(ValueError, match="do not match"):
    features.FeatureSource(str(out), records=records[::-1])
  gc.collect()


def test_changed_settings_refuse_to_mix(records, tower, tmp_path):
  out = tmp_path / "mix"
  _extract(records[:2], tower, out)
  _, module, params = tower
  with pytest.raises(ValueError, match="differs in .*layers"):
    features.extract_features(records[:2], module, params, spec=SPEC,
                              out_dir=str(out), layers=("pooled",),
                              batch_size=2, shard_size=2)
  with pytest.raises(ValueError, match="Unknown feature layer"):
    features.extract_features(records[:2], module, params, spec=SPEC,
                              out_dir=str(tmp_path / "x"), layers=("cls",))
