"""Optimizer pieces: schedules, weight-decay mask, freezing, groups, clipping, Adafactor, bf16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import engine_toy
from t5video.train import optim
from t5video.train import sharding
from t5video.train import trainer


def _params():
  return {
      "enc": {"dense": {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.full((3,), 0.5)},
              "layer_norm": {"scale": jnp.ones((4,))}},
      "head": {"kernel": jnp.full((3, 2), 0.5)},
  }


def _one_device():
  return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _masked(x):
  return isinstance(x, optax.MaskedNode)


def test_schedules():
  cfg = optim.OptimConfig(learning_rate=1.0, warmup_steps=10, schedule="cosine")
  s = optim.make_schedule(cfg, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 0.5, 1, 0.5, 0], atol=1e-6)
  s = optim.make_schedule(dataclass_replace(cfg, schedule="rsqrt"), 110)
  np.testing.assert_allclose([s(5), s(10), s(40)], [0.5, 1.0, 0.5], atol=1e-6)  # sqrt(10/40)
  s = optim.make_schedule(dataclass_replace(cfg, schedule="linear"), 110)
  np.testing.assert_allclose([s(10), s(60), s(110)], [1.0, 0.5, 0.0], atol=1e-6)
  s = optim.make_schedule(dataclass_replace(cfg, schedule="constant", warmup_steps=0), 110)
  np.testing.assert_allclose([s(0), s(100)], [1.0, 1.0])


def dataclass_replace(cfg, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(cfg, **kw)


def test_weight_decay_mask_skips_biases_norms_and_vectors():
  mask = optim.decay_mask(_params())
  assert mask == {"enc": {"dense": {"kernel": True, "bias": False}, "layer_norm": {"scale": False}},
                  "head": {"kernel": True}}
  # Decay actually applies only where the mask says: zero gradients, lr 1, wd 0.1.
  cfg = optim.OptimConfig(learning_rate=1.0, schedule="constant", weight_decay=0.1, clip_norm=0)
  tx, _, _ = optim.make_optimizer(_params(), cfg, 10)
  p = _params()
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, p), tx.init(p), p)
  np.testing.assert_allclose(updates["enc"]["dense"]["kernel"], -0.05, atol=1e-7)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.05, atol=1e-7)
  assert float(jnp.abs(updates["enc"]["dense"]["bias"]).max()) == 0.0
  assert float(jnp.abs(updates["enc"]["layer_norm"]["scale"]).max()) == 0.0


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_frozen_params_have_no_optimizer_state(name):
  p = _params()
  cfg = optim.OptimConfig(name=name, freeze=r"^enc/")
  tx, labels, _ = optim.make_optimizer(p, cfg, 10)
  assert labels["enc"]["dense"]["kernel"] == optim.FROZEN
  assert labels["head"]["kernel"] == "group_default"
  state = tx.init(p)
  # Every array in the optimizer state belongs to 'head' (or is a scalar count).
  arrays = [x for x in jax.tree_util.tree_leaves(state) if x.ndim > 0]
  assert arrays, "optimizer holds no state at all"
  head_numel = 6
  assert sum(x.size for x in arrays) <= 3 * head_numel
  # Wherever the state mirrors the params, the frozen 'enc' entries are empty MaskedNodes.
  enc_entries = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=_masked)[0]
                 if "enc" in optim.path_str(path).split("/")]
  assert enc_entries and all(_masked(x) for x in enc_entries)
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, p), state, p)
  assert float(jnp.abs(updates["enc"]["dense"]["kernel"]).max()) == 0.0
  # trainable= is the complement spelling of the same thing.
  _, labels2, _ = optim.make_optimizer(p, optim.OptimConfig(name=name, trainable="^head/"), 10)
  assert labels2 == labels
  with pytest.raises(ValueError, match="no parameter is trainable"):
    optim.make_optimizer(p, optim.OptimConfig(trainable="^nothing"), 10)


def test_param_group_learning_rate_multiplier():
  p = _params()
  cfg = optim.OptimConfig(learning_rate=0.1, schedule="constant", clip_norm=0,
                          param_groups=((r"^head/", 0.1),))
  tx, labels, _ = optim.make_optimizer(p, cfg, 10)
  assert labels["head"]["kernel"] == "group_0"
  grads = jax.tree_util.tree_map(jnp.ones_like, p)
  updates, _ = tx.update(grads, tx.init(p), p)
  # Adam's first step moves each weight by ~lr * sign(grad).
  np.testing.assert_allclose(updates["enc"]["dense"]["kernel"], -0.1, rtol=1e-4)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.01, rtol=1e-4)


def test_clipping_ignores_frozen_gradients():
  # eps = 1e-3 makes Adam's step depend on the gradient's scale, so a clip
  # that counted the huge frozen gradient would shrink the head's update.
  cfg = optim.OptimConfig(learning_rate=1.0, schedule="constant", clip_norm=1.0, eps=1e-3,
                          freeze="^enc/")
  p = _params()
  tx, _, _ = optim.make_optimizer(p, cfg, 10)
  grads = jax.tree_util.tree_map(jnp.zeros_like, p)
  grads["enc"]["dense"]["kernel"] = jnp.full((4, 3), 1e6)  # huge but frozen
  grads["head"]["kernel"] = jnp.full((3, 2), 0.1)  # norm 0.245 < 1: no clipping due
  updates, _ = tx.update(grads, tx.init(p), p)
  head_only = {"head": p["head"]}
  tx2, _, _ = optim.make_optimizer(head_only, dataclass_replace(cfg, freeze=""), 10)
  ref, _ = tx2.update({"head": grads["head"]}, tx2.init(head_only), head_only)
  np.testing.assert_allclose(updates["head"]["kernel"], ref["head"]["kernel"], rtol=1e-6)
  assert abs(float(ref["head"]["kernel"][0, 0])) > 0.5  # not clipped towards 0


def test_adafactor_trains_and_factors_its_second_moment():
  config = engine_toy.load_config(**{"optim.name": "adafactor", "optim.b1": 0.0,
                                     "model.embed": 128, "model.mlp": 256,
                                     "optim.learning_rate": 1e-2})
  engine = trainer.Engine.create(config, mesh=_one_device())
  state = engine.init_state()
  factored = [x for x in jax.tree_util.tree_leaves(state["opt_state"])
              if x.ndim == 1 and x.shape[0] in (128, 256)]
  assert factored, "no factored (row/column) statistics for the 128x256 kernels"
  assert not any(x.shape == (128, 256) for x in jax.tree_util.tree_leaves(state["opt_state"]))
  it = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=16)
  batch = engine.global_batch(next(it))
  losses = []
  for _ in range(5):
    state, m = engine.train_step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]


def test_bf16_compute_keeps_fp32_master_weights():
  config32 = engine_toy.load_config()
  config16 = engine_toy.load_config(**{"train.dtype": "bfloat16"})
  outs = []
  for config in (config32, config16):
    engine = trainer.Engine.create(config, mesh=_one_device())
    state = engine.init_state()
    it = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=16)
    state, m = engine.train_step(state, engine.global_batch(next(it)))
    outs.append((float(m["loss"]), state["params"]))
  (l32, p32), (l16, p16) = outs
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p16))
  assert l16 != l32  # really computed in bf16 ...
  assert abs(l16 - l32) < 2e-2  # ... and close to fp32


def test_optim_config_validation_names_the_key():
  with pytest.raises(ValueError, match="optim.name"):
    optim.OptimConfig(name="sgdd").validate()
  with pytest.raises(ValueError, match=r"optim.param_groups\[0\]"):
    optim.OptimConfig(param_groups=(("(unclosed", 2.0),)).validate()
  with pytest.raises(ValueError, match="optim.freeze"):
    optim.OptimConfig(freeze="[").validate()
