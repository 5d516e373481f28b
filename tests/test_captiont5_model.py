"""CaptionT5 model-level tests: shapes, PEFT masks, LoRA merging, cached decoding."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5video.data import thoughts
from t5video.evaluate import decoding
from t5video.models import clip as clip_lib
from t5video.models import peft
from t5video.models import t5 as t5_lib
from t5video.models.captiont5 import CaptionT5, CaptionT5Config
from t5video.models.layers import LoraSpec
from t5video.models.temporal import TemporalConfig

B, T, S, L, TGT = 2, 4, 32, 12, 7


def _config(temporal="transformer", lora=None, adapter_dim=None, prompt_length=0):
  vision = clip_lib.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8,
                                     projection_dim=16, lora=lora)
  t5 = t5_lib.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                       num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                       tie_word_embeddings=False, dropout_rate=0.0, lora=lora,
                       adapter_dim=adapter_dim)
  return CaptionT5Config(vision=vision, t5=t5, temporal=TemporalConfig(kind=temporal, num_heads=4),
                         prompt_length=prompt_length, lora=lora)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return dict(
      input_ids=jnp.asarray(rng.integers(3, 96, (B, L)), jnp.int32),
      attention_mask=jnp.asarray(np.r_[np.ones((1, L)), np.c_[np.ones((1, 8)), np.zeros((1, 4))]], jnp.int32),
      decoder_input_ids=jnp.asarray(np.c_[np.zeros((B, 1)), rng.integers(3, 96, (B, TGT - 1))], jnp.int32),
      pixel_values=jnp.asarray(rng.normal(size=(B, T, S, S, 3)), jnp.float32),
      frame_mask=jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.int32),
  )


@pytest.fixture(scope="module")
def model_and_params():
  model = CaptionT5(_config())
  params = jax.jit(lambda r: model.init(r, **_inputs()))(jax.random.PRNGKey(0))["params"]
  import flax.linen as nn
  return model, nn.unbox(params)


@pytest.mark.parametrize("kind,num_visual", [("mean", 1), ("transformer", T), ("resampler", 8)])
def test_shapes_per_temporal_module(kind, num_visual):
  model = CaptionT5(_config(kind))
  out, variables = model.init_with_output(jax.random.PRNGKey(0), **_inputs())
  assert out.logits.shape == (B, TGT, 96)
  assert out.encoder_last_hidden_state.shape == (B, num_visual + L, 32)
  assert np.isfinite(np.asarray(out.logits)).all()


def test_frame_order_matters_for_transformer_not_mean():
  """Reversing the frames changes a temporal transformer's output, not mean pooling's."""
  x = _inputs()
  rev = dict(x, pixel_values=x["pixel_values"][:, ::-1], frame_mask=jnp.ones((B, T), jnp.int32))
  fwd = dict(x, frame_mask=jnp.ones((B, T), jnp.int32))
  for kind, should_differ in (("mean", False), ("transformer", True)):
    model = CaptionT5(_config(kind))
    v = model.init(jax.random.PRNGKey(1), **fwd)
    a = model.apply(v, **fwd).logits
    b = model.apply(v, **rev).logits
    assert (not np.allclose(a, b, atol=1e-5)) == should_differ, kind


def test_cached_decoding_equals_full_and_beam1_equals_greedy(model_and_params):
  model, params = model_and_params
  x = _inputs()
  hidden, mask = model.apply({"params": params}, x["input_ids"], x["attention_mask"],
                             pixel_values=x["pixel_values"], frame_mask=x["frame_mask"],
                             method=CaptionT5.encode)
  max_len = 6

  def step_fn(tokens, cache, step):
    logits, mut = model.apply({"params": params, "cache": {"t5": cache["t5"]}}, cache["enc"],
                              cache["enc_mask"], tokens, decode=True, method=CaptionT5.decode,
                              mutable=["cache"])
    return logits[:, -1], {**cache, "t5": mut["cache"]["t5"]}

  cache = {"t5": t5_lib.init_cache(model.config.t5, B, max_len, hidden, mask), "enc": hidden,
           "enc_mask": mask}
  greedy = jax.jit(lambda c: decoding.greedy_search(step_fn, c, batch_size=B, max_len=max_len,
                                                    start_id=0, eos_id=1))(cache)
  beam = jax.jit(lambda c: decoding.beam_search(step_fn, c, batch_size=B, beam_size=1,
                                                max_len=max_len, start_id=0, eos_id=1,
                                                length_penalty=0.0))(cache)
  np.testing.assert_array_equal(np.asarray(greedy.tokens), np.asarray(beam.tokens)[:, 0])
  # Full (uncached) teacher-forced decoding of the greedy tokens picks the same tokens.
  toks = np.asarray(greedy.tokens)
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), toks[:, :-1]], axis=1)
  logits = model.apply({"params": params}, hidden, mask, jnp.asarray(dec_in), method=CaptionT5.decode)
  full = np.asarray(jnp.argmax(logits, -1))
  for b in range(B):
    n = int(np.argmax(toks[b] == 1)) + 1 if (toks[b] == 1).any() else max_len
    np.testing.assert_array_equal(full[b, :n], toks[b, :n])


def _paths(params):
  return [p for p, _ in peft.path_strings(params)]


@pytest.mark.parametrize("method", ["bridge", "lora", "adapters", "prompt", "bitfit", "last_n"])
def test_peft_trainable_masks(method):
  lora = LoraSpec(rank=2, alpha=4.0, targets=r"(SelfAttention|EncDecAttention)/(q|v)$") \
      if method == "lora" else None
  cfg = _config(lora=lora, adapter_dim=8 if method == "adapters" else None,
                prompt_length=4 if method == "prompt" else 0)
  model = CaptionT5(cfg)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **_inputs()))["params"]
  import flax.linen as nn
  params = nn.unbox(params)
  regex = peft.trainable_regex(method, last_n=1, num_layers=2, num_decoder_layers=2)
  pat = re.compile(regex)
  trainable = [p for p in _paths(params) if pat.search(p)]
  frozen = [p for p in _paths(params) if not pat.search(p)]
  bridge = [p for p in trainable if re.match(peft.BRIDGE, p)]
  others = [p for p in trainable if not re.match(peft.BRIDGE, p)]
  assert bridge and all(p.startswith(("temporal/", "visual_projection/", "visual_norm/")) for p in bridge)
  assert not any(p.startswith("t5/shared") for p in trainable)
  if method == "bridge":
    assert others == []
  elif method == "lora":
    assert others and all(re.search(r"/lora_(A|B)$", p) for p in others)
    assert any("SelfAttention/q/lora_A" in p for p in others)
    assert not any("SelfAttention/k/" in p for p in others)
  elif method == "adapters":
    assert others and all("/adapter/" in p for p in others)
  elif method == "prompt":
    assert others == ["prompt_embeddings"]
  elif method == "bitfit":
    assert others and all(re.search(r"(bias|weight|scale)$", p) for p in others)
    assert not any(p.endswith("kernel") for p in others)
  elif method == "last_n":
    assert others and all(re.match(r"t5/(encoder|decoder)/(block_1|final_layer_norm)/", p) for p in others)
  summary = peft.trainable_summary(params, regex)
  assert 0 < summary["trainable"] < summary["total"]
  assert frozen and summary["share"] < 0.5


def test_lora_merge_equals_lora_forward():
  lora = LoraSpec(rank=2, alpha=4.0, targets=r"(SelfAttention|EncDecAttention)/(q|v)$")
  model = CaptionT5(_config(lora=lora))
  import flax.linen as nn
  x = _inputs()
  params = nn.unbox(model.init(jax.random.PRNGKey(0), **x)["params"])
  # Give B non-zero values so the LoRA path matters.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.05 if "lora_B" in jax.tree_util.keystr(p) else v, params)
  with_lora = model.apply({"params": params}, **x).logits
  merged = peft.merge_lora(jax.device_get(params), lora)
  plain = CaptionT5(_config(lora=None))
  without = plain.apply({"params": merged}, **x).logits
  np.testing.assert_allclose(np.asarray(with_lora), np.asarray(without), atol=1e-4)
  assert not any("lora_" in p for p in _paths(merged))


def test_thoughts_and_dropout():
  cfg = thoughts.ThoughtConfig(sources=("concepts", "metadata", "subtitle", "draft"), dropout=0.0,
                               drop_all=0.0)
  meta = {"objects": "a red circle, a blue square", "background": "stripes"}
  text = thoughts.build_thoughts(meta, "a circle goes", cfg, concepts=["red", "circle", "left"],
                                 draft="a circle moves")
  assert text.startswith("concepts: red, circle, left")
  assert "objects: a red circle" in text and "subtitle: a circle goes" in text
  assert text.endswith("draft: a circle moves")
  off = thoughts.ThoughtConfig(sources=())
  assert thoughts.build_thoughts(meta, "x", off) == ""
  drop = dataclasses.replace(cfg, drop_all=1.0)
  assert thoughts.build_thoughts(meta, "x", drop, rng=np.random.default_rng(0)) == ""
  # No rng (evaluation): never dropped.
  assert thoughts.build_thoughts(meta, "x", drop) != ""
  with pytest.raises(ValueError, match="unknown thought sources"):
    thoughts.ThoughtConfig(sources=("nonsense",))
  assert thoughts.tags_text(["b", "a", "b"]) == "a, b"
  assert thoughts.parse_tags("a, b ,, c") == {"a", "b", "c"}


def test_decoder_learns_what_only_the_pixels_carry():
  """The visual pathway reaches the decoder: a label carried by the frames alone (a colour per
  class under noise; the text input is the same for every example) is learned, and swapping
  the frames between examples swaps the predictions."""
  import optax
  import flax.linen as nn
  k, b, t, size = 6, 32, 4, 16
  vision = clip_lib.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=size, patch_size=8, projection_dim=16)
  t5 = t5_lib.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                       num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
  model = CaptionT5(CaptionT5Config(vision=vision, t5=t5, temporal=TemporalConfig(kind="transformer", num_heads=4)))
  colours = np.random.default_rng(0).uniform(-1, 1, size=(k, 3)).astype(np.float32)

  def batch(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, b)
    # [b, 3] -> [b, t, size, size, 3]: one colour per class plus pixel noise
    pixels = colours[y][:, None, None, None, :] + 0.3 * rng.normal(size=(b, t, size, size, 3))
    target = np.stack([10 + y, np.ones(b, int)], 1)  # the class token, then EOS
    return dict(input_ids=jnp.full((b, 6), 5, jnp.int32), attention_mask=jnp.ones((b, 6), jnp.int32),
                decoder_input_ids=jnp.asarray(np.c_[np.zeros((b, 1), int), target[:, :-1]], jnp.int32),
                pixel_values=jnp.asarray(pixels, jnp.float32), frame_mask=jnp.ones((b, t), jnp.int32)), y

  tx = optax.adamw(2e-3)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), **batch(0)[0])["params"])
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, inputs, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, **inputs).logits  # [b, 2, vocab]
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, 0], 10 + y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  for i in range(60):
    params, opt = step(params, opt, *batch(1 + i))
  inputs, y = batch(1000)
  predict = jax.jit(lambda p, x: model.apply({"params": p}, **x).logits[:, 0].argmax(-1) - 10)
  assert np.mean(np.asarray(predict(params, inputs)) == y) > 0.9  # chance: 1/6
  perm = np.roll(np.arange(b), 1)
  swapped = dict(inputs, pixel_values=inputs["pixel_values"][perm])
  assert np.mean(np.asarray(predict(params, swapped)) == y[perm]) > 0.9
