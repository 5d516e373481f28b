"""Shared layers: the hashed dropout masks (t5video.models.layers.Dropout) are dropout masks."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5video.models import layers, t5


def _mask(seed: int, shape=(64, 128, 128), rate=0.1) -> np.ndarray:
  keep, _ = jax.jit(layers.hashed_keep_mask, static_argnums=(1, 2))(jax.random.PRNGKey(seed), shape, rate)
  return np.asarray(keep)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_hashed_mask_keeps_each_element_with_the_right_probability(rate):
  keep = _mask(0, rate=rate)
  n = keep.size  # 1,048,576
  sigma = np.sqrt(rate * (1 - rate) / n)
  assert abs(keep.mean() - (1 - rate)) < 5 * sigma
  # Every position along every axis keeps about the same share (no stripes by row, column or batch).
  for axis in range(keep.ndim):
    other = tuple(a for a in range(keep.ndim) if a != axis)
    per = keep.mean(axis=other)
    m = n // keep.shape[axis]
    assert np.abs(per - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / m)


def test_hashed_masks_are_independent_across_elements_and_keys():
  a, b = _mask(0).astype(np.float64), _mask(1).astype(np.float64)
  flat = a.ravel()
  for lag in (1, 2, 128, 128 * 128):  # neighbours along each axis of the flat index
    r = np.corrcoef(flat[:-lag], flat[lag:])[0, 1]
    assert abs(r) < 0.01, (lag, r)
  assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01  # another key, an unrelated mask
  # A key shifted by one element of the counter does not give a shifted mask (seeds mix after the hash).
  assert abs(np.corrcoef(a.ravel()[1:], b.ravel()[:-1])[0, 1]) < 0.01
  np.testing.assert_array_equal(_mask(0), _mask(0))  # the same key, the same mask


def test_dropout_layer_scales_what_it_keeps_and_is_identity_when_deterministic():
  x = jnp.ones((256, 512), jnp.float32)
  for impl in layers.DROPOUT_RNGS:
    drop = layers.Dropout(0.25, rng_impl=impl)
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
  with pytest.raises(ValueError, match="rng_impl"):
    layers.Dropout(0.1, rng_impl="philox").apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  with pytest.raises(ValueError, match="dropout_rng"):
    t5.T5Config.variant("tiny", dropout_rng="philox")


def test_t5_dropout_rng_hash_by_default_and_threefry_on_request():
  cfg = t5.T5Config.variant("tiny", dropout_rate=0.3)
  assert cfg.dropout_rng == "hash"
  ids = jnp.arange(10, dtype=jnp.int32).reshape(2, 5) + 2
  dec = t5.shift_right(ids, 0, 0)
  module = t5.T5ForConditionalGeneration(cfg)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), input_ids=ids, decoder_input_ids=dec)["params"])

  def logits(m, deterministic, key=1):
    return np.asarray(m.apply({"params": params}, input_ids=ids, decoder_input_ids=dec, deterministic=deterministic,
                              rngs={"dropout": jax.random.PRNGKey(key)}).logits)

  threefry = t5.T5ForConditionalGeneration(dataclasses.replace(cfg, dropout_rng="threefry"))
  np.testing.assert_array_equal(logits(module, True), logits(threefry, True))  # same model without dropout
  hashed, drawn = logits(module, False), logits(threefry, False)
  assert not np.allclose(hashed, logits(module, True)) and not np.allclose(hashed, drawn)
  np.testing.assert_array_equal(hashed, logits(module, False))  # reproducible from the key
  assert not np.allclose(hashed, logits(module, False, key=2))
