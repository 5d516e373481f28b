"""Flax CLIP against HF PyTorch CLIP on tiny random checkpoints (fp32, atol 1e-5).

Every HF model is built with a fixed seed, its weights perturbed (so LayerNorm
scales, biases and every matrix are distinct and non-trivial), saved with
``save_pretrained``, read back with safetensors and converted.
"""

from __future__ import annotations

import functools
import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from t5video.models import clip, convert_clip  # noqa: E402
from t5video.models.layers import LoraSpec  # noqa: E402
from t5video.train import sharding  # noqa: E402

ATOL = 1e-5
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8, projection_dim=16)
TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, projection_dim=16,
                 pad_token_id=1, bos_token_id=97, eos_token_id=98)


def _perturb(model, seed: int):
  """Adds seeded noise to every parameter (HF inits LayerNorm to 1/0 and biases to 0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.1)
  return model.eval()


def _save_and_read(model, path):
  model.save_pretrained(path)
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  return load_file(os.path.join(path, "model.safetensors")), config


def _hf_vision(cls, path, seed=0, **overrides):
  torch.manual_seed(seed)
  model = _perturb(cls(transformers.CLIPVisionConfig(**{**TINY_VISION, **overrides})), seed)
  return (model,) + _save_and_read(model, path)


def _hf_text(cls, path, seed=0, **overrides):
  torch.manual_seed(seed)
  model = _perturb(cls(transformers.CLIPTextConfig(**{**TINY_TEXT, **overrides})), seed)
  return (model,) + _save_and_read(model, path)


def _hf_clip(path, seed=0):
  torch.manual_seed(seed)
  config = transformers.CLIPConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT),
                                   projection_dim=16)
  model = _perturb(transformers.CLIPModel(config), seed)
  return (model,) + _save_and_read(model, path)


def _pixels(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def _ids(seed=0):
  """Right-padded ids [3, 9]: the eos id (98) ends each text; row 2 pads with eos, as CLIP's tokenizer does."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 97, size=(3, 9)).astype(np.int64)
  mask = np.ones((3, 9), np.int64)
  ids[0, 0], ids[1, 0], ids[2, 0] = 97, 97, 97
  ids[0, 8] = 98
  ids[1, 5], ids[1, 6:], mask[1, 6:] = 98, 1, 0
  ids[2, 3], ids[2, 4:], mask[2, 4:] = 98, 98, 0
  return ids, mask


def _run(module, params, *args, **static):
  """``module.apply`` under jit (one compile beats op-by-op dispatch); ``static`` are Python kwargs."""
  return jax.jit(functools.partial(module.apply, **static))({"params": params}, *args)


def _close(ours, theirs, what):
  theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
  np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0, err_msg=what)


def _assert_trees_close(a, b, what):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb), what
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=ATOL, rtol=0, err_msg=what)


# -----------------------------------------------------------------------------
# Vision
# -----------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_vision_with_projection_matches_hf(tmp_path, act):
  hf, sd, config = _hf_vision(transformers.CLIPVisionModelWithProjection, tmp_path, hidden_act=act)
  module, params = convert_clip.clip_from_hf(sd, config)
  assert isinstance(module, clip.CLIPVisionModel) and module.with_projection
  assert module.config.hidden_act == act
  x = _pixels((2, 32, 32, 3))
  out = _run(module, params, x, output_hidden_states=True)
  with torch.no_grad():
    ref = hf(pixel_values=_nchw(x), output_hidden_states=True)
    ref_pooled = hf.vision_model(pixel_values=_nchw(x)).pooler_output
  assert len(out.hidden_states) == len(ref.hidden_states) == 3
  for i, (h, r) in enumerate(zip(out.hidden_states, ref.hidden_states)):
    _close(h, r, f"hidden_states[{i}]")
  _close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
  _close(out.pooler_output, ref_pooled, "pooler_output")
  _close(out.image_embeds, ref.image_embeds, "image_embeds")


@pytest.mark.parity
def test_vision_video_equals_per_frame_and_hf(tmp_path):
  hf, sd, config = _hf_vision(transformers.CLIPVisionModelWithProjection, tmp_path, seed=1)
  module, params = convert_clip.clip_from_hf(sd, config)
  video = _pixels((2, 3, 32, 32, 3), seed=1)
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x, output_hidden_states=True))
  out = apply(params, video)
  assert out.last_hidden_state.shape == (2, 3, 17, 32)
  assert out.pooler_output.shape == (2, 3, 32)
  assert out.image_embeds.shape == (2, 3, 16)
  assert [h.shape for h in out.hidden_states] == [(2, 3, 17, 32)] * 3
  for t in range(3):
    frame = apply(params, video[:, t])
    _assert_trees_close(jax.tree_util.tree_map(lambda a: a[:, t], out), frame, f"frame {t}")
  with torch.no_grad():
    ref = hf(pixel_values=_nchw(video.reshape(6, 32, 32, 3)), output_hidden_states=True)
  _close(np.asarray(out.image_embeds).reshape(6, 16), ref.image_embeds, "video image_embeds")
  _close(np.asarray(out.hidden_states[1]).reshape(6, 17, 32), ref.hidden_states[1], "video hidden_states[1]")


@pytest.mark.parity
@pytest.mark.parametrize("height,width", [(48, 40), (24, 24), (64, 64)])
def test_position_interpolation_matches_hf(tmp_path, height, width):
  # HF's interpolate_pos_encoding is torch bicubic (a = -0.75, align_corners=False, no antialias)
  # on the square checkpoint grid; ours implements the same kernel, so they agree exactly.
  hf, sd, config = _hf_vision(transformers.CLIPVisionModelWithProjection, tmp_path, seed=2)
  module, params = convert_clip.clip_from_hf(sd, config)
  x = _pixels((2, height, width, 3), seed=2)
  out = _run(module, params, x, output_hidden_states=True)
  with torch.no_grad():
    ref = hf(pixel_values=_nchw(x), interpolate_pos_encoding=True, output_hidden_states=True)
  assert out.last_hidden_state.shape[1] == 1 + (height // 8) * (width // 8)
  _close(out.hidden_states[0], ref.hidden_states[0], "embeddings (interpolated positions)")
  _close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
  _close(out.image_embeds, ref.image_embeds, "image_embeds")


def test_bicubic_matrix_matches_torch_interpolate():
  grid = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
  for out_shape in [(11, 3), (7, 5), (4, 9)]:
    ref = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=out_shape,
                                          mode="bicubic", align_corners=False)[0, 0].numpy()
    ours = (clip.bicubic_resize_matrix(7, out_shape[0]) @ grid.astype(np.float64)
            @ clip.bicubic_resize_matrix(5, out_shape[1]).T)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


# -----------------------------------------------------------------------------
# Text
# -----------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("eos_token_id", [98, 2], ids=["first_eos", "legacy_argmax"])
def test_text_with_projection_matches_hf(tmp_path, eos_token_id):
  hf, sd, config = _hf_text(transformers.CLIPTextModelWithProjection, tmp_path, eos_token_id=eos_token_id)
  module, params = convert_clip.clip_from_hf(sd, config)
  assert isinstance(module, clip.CLIPTextModel) and module.with_projection
  assert module.config.eos_token_id == eos_token_id
  ids, mask = _ids()
  out = _run(module, params, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    ref_pooled = hf.text_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
  assert len(out.hidden_states) == len(ref.hidden_states) == 3
  for i, (h, r) in enumerate(zip(out.hidden_states, ref.hidden_states)):
    _close(h, r, f"hidden_states[{i}]")
  _close(out.last_hidden_state, ref.last_hidden_state, "last_hidden_state")
  _close(out.pooler_output, ref_pooled, "pooler_output")
  _close(out.text_embeds, ref.text_embeds, "text_embeds")


def test_eos_conventions_pick_different_tokens():
  # First-eos pools at the first occurrence of eos_token_id; legacy (eos_token_id == 2) at the first largest id.
  ids = jnp.asarray([[97, 5, 50, 60, 98, 98]])
  assert int(clip.eos_positions(ids, 50)[0]) == 2
  assert int(clip.eos_positions(ids, 98)[0]) == 4
  assert int(clip.eos_positions(ids, 2)[0]) == 4
  ids = jnp.asarray([[5, 96, 7, 3]])
  assert int(clip.eos_positions(ids, 2)[0]) == 1
  assert int(clip.eos_positions(ids, 98)[0]) == 0  # no eos: torch's argmax of all zeros


@pytest.mark.parity
def test_text_legacy_eos_pools_at_largest_id(tmp_path):
  # A row whose largest id is not the last token: legacy pooling must follow HF's argmax, not the eos id.
  hf, sd, config = _hf_text(transformers.CLIPTextModel, tmp_path, eos_token_id=2)
  module, params = convert_clip.clip_from_hf(sd, config)
  assert not module.with_projection
  ids = np.asarray([[97, 10, 96, 11, 2, 12], [5, 6, 7, 2, 1, 1]], np.int64)
  out = _run(module, params, jnp.asarray(ids))
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids))
  _close(out.pooler_output, ref.pooler_output, "legacy pooler_output")
  _close(out.pooler_output, np.asarray(out.last_hidden_state)[[0, 1], [0, 2]], "pooled positions")


# -----------------------------------------------------------------------------
# Full CLIP
# -----------------------------------------------------------------------------

@pytest.mark.parity
def test_clip_model_matches_hf(tmp_path):
  hf, sd, config = _hf_clip(tmp_path, seed=3)
  module, params = convert_clip.clip_from_hf(sd, config)
  assert isinstance(module, clip.CLIPModel) and module.projection_dim == 16
  ids, mask = _ids(seed=3)
  x = _pixels((2, 32, 32, 3), seed=3)
  out = _run(module, params, jnp.asarray(ids), x, jnp.asarray(mask))
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids), pixel_values=_nchw(x), attention_mask=torch.from_numpy(mask))
    ref_img = hf.get_image_features(pixel_values=_nchw(x)).pooler_output
    ref_txt = hf.get_text_features(input_ids=torch.from_numpy(ids),
                                   attention_mask=torch.from_numpy(mask)).pooler_output
  _close(out.logits_per_image, ref.logits_per_image, "logits_per_image")
  _close(out.logits_per_text, ref.logits_per_text, "logits_per_text")
  _close(out.image_embeds, ref.image_embeds, "image_embeds")
  _close(out.text_embeds, ref.text_embeds, "text_embeds")
  _close(_run(module, params, x, method="get_image_features"), ref_img, "get_image_features")
  _close(_run(module, params, jnp.asarray(ids), jnp.asarray(mask), method="get_text_features"), ref_txt,
         "get_text_features")
  # Video through the full model: per-frame logits [B, T, N].
  video = _pixels((1, 2, 32, 32, 3), seed=4)
  vout = _run(module, params, jnp.asarray(ids), video, jnp.asarray(mask))
  assert vout.logits_per_image.shape == (1, 2, 3) and vout.logits_per_text.shape == (3, 1, 2)
  with torch.no_grad():
    vref = hf(input_ids=torch.from_numpy(ids), pixel_values=_nchw(video[0]), attention_mask=torch.from_numpy(mask))
  _close(vout.logits_per_image[0], vref.logits_per_image, "video logits_per_image")


@pytest.mark.parity
def test_vision_tower_out_of_full_clip(tmp_path):
  hf, sd, config = _hf_clip(tmp_path, seed=5)
  module, params = convert_clip.clip_from_hf(sd, config, component="vision")
  assert isinstance(module, clip.CLIPVisionModel) and module.with_projection
  x = _pixels((2, 32, 32, 3), seed=5)
  out = _run(module, params, x)
  with torch.no_grad():
    ref = hf.get_image_features(pixel_values=_nchw(x)).pooler_output
  _close(out.image_embeds, ref, "image_embeds of the vision component")
  tmodule, tparams = convert_clip.clip_from_hf(sd, config, component="text")
  ids, mask = _ids(seed=5)
  with torch.no_grad():
    tref = hf.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
  _close(_run(tmodule, tparams, jnp.asarray(ids), jnp.asarray(mask)).text_embeds, tref,
         "text_embeds of the text component")


# -----------------------------------------------------------------------------
# Round trip
# -----------------------------------------------------------------------------

_ROUND_TRIP = {
    "CLIPVisionModel": (_hf_vision, transformers.CLIPVisionModel, transformers.CLIPVisionConfig),
    "CLIPVisionModelWithProjection": (_hf_vision, transformers.CLIPVisionModelWithProjection,
                                      transformers.CLIPVisionConfig),
    "CLIPTextModel": (_hf_text, transformers.CLIPTextModel, transformers.CLIPTextConfig),
    "CLIPTextModelWithProjection": (_hf_text, transformers.CLIPTextModelWithProjection,
                                    transformers.CLIPTextConfig),
    "CLIPModel": (None, transformers.CLIPModel, transformers.CLIPConfig),
}


def _hf_inputs(name):
  ids, mask = _ids(seed=6)
  x = _pixels((2, 32, 32, 3), seed=6)
  if name.startswith("CLIPVision"):
    return dict(pixel_values=_nchw(x))
  if name.startswith("CLIPText"):
    return dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  return dict(pixel_values=_nchw(x), input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))


def _hf_outputs(model, name):
  with torch.no_grad():
    out = model(**_hf_inputs(name), output_hidden_states=not name.startswith("CLIPModel"))
  return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)} | (
      {f"hidden_states_{i}": h for i, h in enumerate(out.hidden_states)} if getattr(out, "hidden_states", None)
      else {})


@pytest.mark.parity
@pytest.mark.parametrize("name", list(_ROUND_TRIP))
def test_round_trip_to_hf(tmp_path, name):
  build, model_cls, config_cls = _ROUND_TRIP[name]
  if build is None:
    hf, sd, config = _hf_clip(tmp_path / "src", seed=7)
  else:
    hf, sd, config = build(model_cls, tmp_path / "src", seed=7)
  module, params = convert_clip.clip_from_hf(sd, config)
  sd2, config2 = convert_clip.clip_to_hf(module, params)
  assert config2["architectures"] == [name]
  assert sorted(sd2) == sorted(sd), f"key sets differ: {set(sd) ^ set(sd2)}"
  for k in sd:
    assert sd2[k].shape == sd[k].shape and sd2[k].dtype == sd[k].dtype, k
    np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
  # A fresh HF model from the exported config, weights through load_state_dict(strict=True).
  fresh = model_cls(config_cls.from_dict(config2)).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()}, strict=True)
  ref, got = _hf_outputs(hf, name), _hf_outputs(fresh, name)
  assert sorted(ref) == sorted(got)
  for k in ref:
    _close(got[k], ref[k], f"{name} round trip: {k}")
  # And the directory form that from_pretrained reads.
  out_dir = tmp_path / "export"
  out_dir.mkdir()
  save_file(sd2, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
  (out_dir / "config.json").write_text(json.dumps(config2))
  loaded = model_cls.from_pretrained(str(out_dir)).eval()
  got = _hf_outputs(loaded, name)
  for k in ref:
    _close(got[k], ref[k], f"{name} from_pretrained: {k}")


@pytest.mark.parity
def test_export_of_our_random_init_runs_in_hf():
  vc = clip.CLIPVisionConfig.from_variant("tiny", hidden_act="gelu")
  tc = clip.CLIPTextConfig.from_variant("tiny")
  module = clip.CLIPModel(vc, tc, projection_dim=16, logit_scale_init_value=1.5)
  ids, mask = _ids(seed=8)
  x = _pixels((2, 32, 32, 3), seed=8)
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(8), jnp.asarray(ids), x)["params"])
  # Randomise LayerNorms too, so their names and orientation are checked.
  rng = np.random.default_rng(9)
  params = jax.tree_util.tree_map(
      lambda l: np.asarray(l) + 0.05 * rng.normal(size=l.shape).astype(np.float32), params)
  ours = _run(module, params, jnp.asarray(ids), x, jnp.asarray(mask))
  sd, config = convert_clip.clip_to_hf(module, params)
  hf = transformers.CLIPModel(transformers.CLIPConfig.from_dict(config)).eval()
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids), pixel_values=_nchw(x), attention_mask=torch.from_numpy(mask))
  _close(ours.logits_per_image, ref.logits_per_image, "logits_per_image")
  _close(ours.text_embeds, ref.text_embeds, "text_embeds")


# -----------------------------------------------------------------------------
# LoRA, remat, sharding annotations
# -----------------------------------------------------------------------------

@pytest.mark.parity
def test_lora_targets_and_export_merges(tmp_path):
  hf, sd, config = _hf_vision(transformers.CLIPVisionModelWithProjection, tmp_path, seed=10)
  spec = LoraSpec(rank=2, alpha=4.0, targets=r"self_attn/(q_proj|v_proj)$")
  base_module, base_params = convert_clip.clip_from_hf(sd, config)
  module, params = convert_clip.clip_from_hf(sd, config, lora=spec)
  flat = convert_clip._flatten(params)  # pylint: disable=protected-access
  lora_paths = sorted(p for p in flat if "lora_" in p)
  assert lora_paths == sorted(f"vision_model/encoder/layers_{i}/self_attn/{proj}/lora_{ab}"
                              for i in range(2) for proj in ("q_proj", "v_proj") for ab in "AB")
  x = _pixels((2, 32, 32, 3), seed=10)
  base = _run(base_module, base_params, x).image_embeds
  _close(_run(module, params, x).image_embeds, base, "untrained LoRA changes nothing")
  # Train-like update of B, then export: HF (no LoRA) must give the LoRA model's outputs.
  rng = np.random.default_rng(0)
  flat = {p: (rng.normal(size=v.shape).astype(np.float32) * 0.1 if p.endswith("lora_B") else v)
          for p, v in flat.items()}
  params = flax.traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in flat.items()})
  ours = _run(module, params, x)
  sd2, config2 = convert_clip.clip_to_hf(module, params)
  fresh = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig.from_dict(config2)).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()}, strict=True)
  with torch.no_grad():
    ref = fresh(pixel_values=_nchw(x))
  assert not np.allclose(np.asarray(ours.image_embeds), np.asarray(base), atol=1e-3)
  _close(ours.image_embeds, ref.image_embeds, "merged LoRA export")


def test_remat_gives_same_outputs_and_grads():
  tc = clip.CLIPTextConfig.from_variant("tiny")
  ids, mask = _ids(seed=11)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  plain = clip.CLIPTextModel(tc, with_projection=True)
  rematted = clip.CLIPTextModel(clip.CLIPTextConfig.from_variant("tiny", remat=True), with_projection=True)
  params = nn.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), ids, mask)["params"])

  def loss(module, p):
    return jnp.sum(module.apply({"params": p}, ids, mask, deterministic=False).text_embeds ** 2)

  g1 = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
  g2 = jax.jit(jax.grad(lambda p: loss(rematted, p)))(params)
  la, lb = jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)
  assert len(la) == len(lb) == len(jax.tree_util.tree_leaves(params))
  for a, b in zip(la, lb):  # the two programs fuse differently: float reassociation only
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def test_param_axes_use_only_the_vocabulary_and_shard_under_the_rules():
  vc = clip.CLIPVisionConfig.from_variant("tiny")
  tc = clip.CLIPTextConfig.from_variant("tiny", vocab_size=100)  # divisible by the tensor axis
  module = clip.CLIPModel(vc, tc, projection_dim=16)
  ids, mask = _ids(seed=12)
  ids = np.concatenate([ids, ids[:1]])  # batch 4 = data * fsdp
  mask = np.concatenate([mask, mask[:1]])
  x = _pixels((4, 32, 32, 3), seed=12)
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.asarray(ids), x))["params"]
  flat = flax.traverse_util.flatten_dict(boxed)
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.Partitioned), f"{'/'.join(path)} has no logical axes"
    assert len(leaf.names) == len(leaf.value.shape), "/".join(path)
    assert set(leaf.names) - {None} <= set(sharding.PARAM_AXES), f"{'/'.join(path)}: {leaf.names}"
  assert flat[("vision_model", "encoder", "layers_0", "self_attn", "q_proj", "kernel")].names == (
      "embed", "joined_kv")
  assert flat[("text_model", "embeddings", "token_embedding", "embedding")].names == ("vocab", "embed")
  # Under the default rules on a (2, 2, 2) mesh the sharded, constrained forward equals the plain one.
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(ids), x)["params"])
  expected = _run(module, params, jnp.asarray(ids), x, jnp.asarray(mask))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), sharding.MESH_AXES)
  rules = sharding.DEFAULT_RULES
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  assert shardings["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded = jax.device_put(params, shardings)
    out = jax.jit(lambda p: module.apply({"params": p}, jnp.asarray(ids), x, jnp.asarray(mask)))(sharded)
  _close(out.logits_per_image, np.asarray(expected.logits_per_image), "sharded logits")


# -----------------------------------------------------------------------------
# Configs, variants, preprocessing, tokenizer, errors
# -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["B/32", "L/14"])
def test_variants_have_the_hf_parameter_count(variant):
  spec = clip.VARIANTS[variant]
  vc, tc = clip.CLIPVisionConfig.from_variant(variant), clip.CLIPTextConfig.from_variant(variant)
  ours = convert_clip.abstract_params(clip.CLIPModel(vc, tc, spec["projection_dim"]))
  with torch.device("meta"):
    hf_config = transformers.CLIPConfig(vision_config=vc.to_hf(), text_config=tc.to_hf(),
                                        projection_dim=spec["projection_dim"])
    hf = transformers.CLIPModel(hf_config)
  assert sum(int(np.prod(v.shape)) for v in ours.values()) == sum(p.numel() for p in hf.parameters())
  assert len(ours) == len(list(hf.parameters()))


def test_config_from_hf_to_hf_round_trip():
  hf = transformers.CLIPConfig(vision_config=dict(TINY_VISION, hidden_act="gelu"), text_config=TINY_TEXT,
                               projection_dim=16).to_dict()
  vc = clip.CLIPVisionConfig.from_hf(hf, dtype=jnp.bfloat16, remat=True)
  tc = clip.CLIPTextConfig.from_hf(hf)
  assert vc.hidden_act == "gelu" and vc.dtype == jnp.bfloat16 and vc.remat and tc.eos_token_id == 98
  for ours, sub in ((vc, "vision_config"), (tc, "text_config")):
    back = ours.to_hf()
    for k, v in back.items():
      if k in hf[sub] and k != "dtype":
        assert hf[sub][k] == v, f"{sub}.{k}: {hf[sub][k]!r} != {v!r}"
  with pytest.raises(ValueError, match="model_type"):
    clip.CLIPVisionConfig.from_hf({"model_type": "clip_text_model"})
  with pytest.raises(ValueError, match="hidden_act"):
    clip.CLIPVisionConfig(hidden_act="mish")
  with pytest.raises(ValueError, match="unknown override"):
    clip.CLIPTextConfig.from_hf({}, scan_layers=True)


def test_bf16_compute_runs_close_to_fp32():
  vc = clip.CLIPVisionConfig.from_variant("tiny")
  module = clip.CLIPVisionModel(vc, with_projection=True)
  x = _pixels((2, 32, 32, 3), seed=13)
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"])
  ref = _run(module, params, x).image_embeds
  out = _run(module.clone(config=clip.CLIPVisionConfig.from_variant("tiny", dtype="bfloat16")), params,
             x).image_embeds
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.1, rtol=0.05)


def test_clip_preprocess():
  frames = np.random.default_rng(0).integers(0, 256, size=(2, 3, 4, 5, 3), dtype=np.uint8)
  out = clip.clip_preprocess(frames)
  expected = (frames.astype(np.float64) / 255.0 - np.asarray(clip.CLIP_MEAN)) / np.asarray(clip.CLIP_STD)
  assert out.dtype == jnp.float32 and out.shape == frames.shape
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  with pytest.raises(TypeError, match="uint8"):
    clip.clip_preprocess(frames.astype(np.float32))


def test_load_clip_tokenizer(tmp_path):
  vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>", "t</w>",
           "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>", "<|startoftext|>", "<|endoftext|>"]
  (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (tmp_path / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
  tok = clip.load_clip_tokenizer(str(tmp_path))
  ids = tok("lower newer")["input_ids"]
  expected = [vocab.index(t) for t in ("lo", "w", "er</w>", "n", "e", "w", "er</w>")]
  assert ids == [vocab.index("<|startoftext|>")] + expected + [vocab.index("<|endoftext|>")]
  # save_pretrained's output loads back the same.
  tok.save_pretrained(str(tmp_path / "saved"))
  assert clip.load_clip_tokenizer(str(tmp_path / "saved"))("lower newer")["input_ids"] == ids
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no CLIP tokenizer files"):
    clip.load_clip_tokenizer(str(tmp_path / "empty"))


def test_converter_errors(tmp_path):
  _, sd, config = _hf_vision(transformers.CLIPVisionModelWithProjection, tmp_path, seed=14)
  broken = dict(sd)
  del broken["vision_model.encoder.layers.1.mlp.fc2.bias"]
  broken["vision_model.encoder.layers.1.mlp.fc3.bias"] = np.zeros(32, np.float32)
  with pytest.raises(ValueError) as err:
    convert_clip.clip_from_hf(broken, config)
  assert "vision_model.encoder.layers.1.mlp.fc2.bias" in str(err.value)
  assert "vision_model.encoder.layers.1.mlp.fc3.bias" in str(err.value)
  wrong = dict(config, intermediate_size=48)
  with pytest.raises(ValueError, match=r"fc1\.weight: got \(32, 64\)"):
    convert_clip.clip_from_hf(sd, wrong)
  with pytest.raises(ValueError, match="model_type='siglip_vision_model'"):
    convert_clip.clip_from_hf(sd, dict(config, model_type="siglip_vision_model"))
  module, params = convert_clip.clip_from_hf(sd, config)
  with pytest.raises(ValueError, match="NCHW"):
    _run(module, params, np.zeros((1, 3, 32, 32), np.float32))
  with pytest.raises(ValueError, match=r"missing keys \(1\): \['visual_projection.weight'\]"):
    convert_clip.clip_from_hf({k: v for k, v in sd.items() if k != "visual_projection.weight"}, config)
  # A transformers-4 style CLIPVisionModel state dict ('vision_model.'-prefixed, no projection) loads too.
  v4 = {k: v for k, v in sd.items() if k != "visual_projection.weight"}
  module4, params4 = convert_clip.clip_from_hf(v4, dict(config, architectures=["CLIPVisionModel"]))
  assert not module4.with_projection
  np.testing.assert_array_equal(params4["vision_model"]["post_layernorm"]["scale"],
                                sd["vision_model.post_layernorm.weight"])
  assert "embeddings.class_embedding" in convert_clip.clip_to_hf(module4, params4)[0]
  # Older (transformers 4) checkpoints stored position_ids buffers: dropped.
  module, _ = convert_clip.clip_from_hf(
      {**sd, "vision_model.embeddings.position_ids": np.arange(17)[None]}, config)
  assert module.with_projection
