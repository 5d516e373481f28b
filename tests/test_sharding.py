"""Mesh construction, params sharded as the rules say, and sharded steps equal to 1 device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import engine_toy
from t5video.train import sharding
from t5video.train import trainer


def _local_batch(config, step=0):
  task = engine_toy.ToyTask(config)
  it = task.train_loader(seed=config.seed, process_index=0, process_count=1,
                         batch_size=config.train.batch_size)
  for _ in range(step):
    next(it)
  return next(it)


def test_mesh_shape_resolution_and_errors():
  assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.resolve_mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="covers 4 devices"):
    sharding.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="3 entries"):
    sharding.resolve_mesh_shape((8, 1), 8)
  mesh = sharding.make_mesh((2, 4, 1))
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  # Auto axes: Linen's logical constraints refuse Explicit ones.
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_params_and_optimizer_state_are_sharded_as_the_rules_say():
  config = engine_toy.load_config("fsdp")  # mesh (2, 2, 2)
  engine = trainer.Engine.create(config)
  state = engine.init_state()
  params = state["params"]
  expected = {  # logical axes from the model -> DEFAULT_RULES
      ("mlp_in", "kernel"): P("fsdp", "tensor"),  # (embed, mlp)
      ("mlp_in", "bias"): P("tensor"),  # (mlp,)
      ("mlp_out", "kernel"): P("tensor", "fsdp"),  # (mlp, embed)
      ("head", "kernel"): P("fsdp", "tensor"),  # (embed, vocab)
      ("norm", "scale"): P("fsdp"),  # (embed,)
  }
  for (module, name), spec in expected.items():
    leaf = params[module][name]
    assert leaf.sharding.spec == spec, (module, name, leaf.sharding.spec)
    shard_shape = leaf.addressable_shards[0].data.shape
    want = tuple(dim // (2 if axis else 1) for dim, axis in zip(leaf.shape, tuple(spec) + (None,) * 2))
    assert shard_shape == want, (module, name, shard_shape)
  # Adam's moments follow their parameter's sharding.
  mu = jax.tree_util.tree_leaves(
      state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
  adam = [x for x in mu if hasattr(x, "mu")][0]
  assert adam.mu["mlp_in"]["kernel"].sharding.spec == P("fsdp", "tensor")
  # The batch is split over data x fsdp.
  assert engine.batch_shardings["x"].spec == P(("data", "fsdp"), None, None)


def test_rule_override_from_config_changes_the_sharding():
  config = engine_toy.load_config("fsdp", **{"sharding.rules": (("embed", None), ("mlp", "fsdp"))})
  engine = trainer.Engine.create(config)
  shardings = engine.state_shardings["params"]
  assert shardings["mlp_in"]["kernel"].spec == P(None, "fsdp")
  assert shardings["norm"]["scale"].spec == P(None)
  with pytest.raises(ValueError, match="unknown logical axis"):
    sharding.merge_rules([("embd", "fsdp")])


def _run_steps(config, mesh, batches):
  engine = trainer.Engine.create(config, mesh=mesh)
  state = engine.init_state()
  init = jax.device_get(state["params"])
  losses = []
  for local in batches:
    state, metrics = engine.train_step(state, engine.global_batch(local))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state["params"]), init


@pytest.fixture(scope="module")
def single_device_run():
  config = engine_toy.load_config()
  batches = [_local_batch(config, 0), _local_batch(config, 1)]
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return batches, _run_steps(config, one, batches)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device_step(shape, single_device_run):
  batches, (ref_losses, ref_params, init) = single_device_run
  config = engine_toy.load_config(**{"mesh.shape": shape})
  losses, params, _ = _run_steps(config, sharding.make_mesh(shape), batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  # The steps really trained (the comparison is not between two unchanged inits).
  assert np.abs(params["head"]["kernel"] - init["head"]["kernel"]).max() > 1e-3
