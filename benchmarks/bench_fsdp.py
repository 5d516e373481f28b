"""FSDP vs replication: per-device memory of the train state, and step time on 1 vs 8 devices.

Runs the real engine (``t5video.train.trainer.Engine``) on a stack of residual
MLP blocks built from ``t5video.models.layers.Dense``, over 8 fake CPU devices:

1. bytes of params + AdamW state held by one device when the mesh is
   ``(1, 8, 1)`` (FSDP: ``embed`` sharded over ``fsdp``) vs ``(8, 1, 1)``
   (pure data parallel: every device holds everything). Expect about 1/8.
2. median step time of the same model and global batch on 1 device vs 8
   devices (data parallel and FSDP). Fake CPU devices share the host's cores,
   so this measures the partitioning overhead, not a speed-up.

Usage (from the repository root):
  python benchmarks/bench_fsdp.py [--embed 512 --mlp 2048 --layers 4 --batch 32 --steps 20]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from t5video.models.layers import Dense  # noqa: E402
from t5video.train import sharding  # noqa: E402
from t5video.train import task as task_lib  # noqa: E402
from t5video.train import trainer  # noqa: E402


class MlpStack(nn.Module):
  """``layers`` residual blocks ``x + W2 gelu(W1 LN(x))`` and a linear head."""
  embed: int
  mlp: int
  layers: int
  classes: int = 16

  @nn.compact
  def __call__(self, x):
    x = nn.with_logical_constraint(x, ("act_batch", "act_embed"))
    for i in range(self.layers):
      h = nn.LayerNorm(name=f"norm_{i}", scale_init=nn.with_logical_partitioning(
          nn.initializers.ones, ("embed",)), bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ("embed",)))(x)
      h = Dense(self.mlp, kernel_axes=("embed", "mlp"), name=f"wi_{i}")(h)
      h = nn.with_logical_constraint(nn.gelu(h), ("act_batch", "act_mlp"))
      x = x + Dense(self.embed, kernel_axes=("mlp", "embed"), name=f"wo_{i}")(h)
    return Dense(self.classes, kernel_axes=("embed", "vocab"), name="head")(x)


class BenchTask(task_lib.Task):
  """Classification of random vectors (the timed loop reuses one batch)."""

  def __init__(self, config, *, shapes_only: bool = False):
    super().__init__(config, shapes_only=shapes_only)
    m = config.model
    self.model = MlpStack(m.embed, m.mlp, m.layers)

  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.config.model.embed)))["params"]

  def batch_spec(self):
    return {"x": ("act_batch", "act_embed"), "y": ("act_batch",)}

  def example_shapes(self):
    return {"x": jax.ShapeDtypeStruct((self.config.model.embed,), np.float32),
            "y": jax.ShapeDtypeStruct((), np.int32)}

  def train_loader(self, *, seed, process_index, process_count, batch_size):
    embed = self.config.model.embed

    def example(i):
      rs = np.random.RandomState(int(i))
      return {"x": rs.normal(size=(embed,)).astype(np.float32), "y": np.int32(rs.randint(16))}

    ds = grain.MapDataset.range(4096)[process_index::process_count].shuffle(seed=seed).repeat(None)
    return iter(ds.map(example).batch(batch_size, drop_remainder=True).to_iter_dataset())

  def loss_fn(self, params, batch, rng, *, train):
    logits = self.model.apply({"params": params}, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}


def make_config(args, mesh_shape):
  c = trainer.default_config()
  c.task = "bench"
  c.mesh.shape = mesh_shape
  c.train.batch_size = args.batch
  c.train.num_steps = 1000
  c.optim.weight_decay = 1e-4
  import ml_collections  # pylint: disable=g-import-not-at-top
  c.model = ml_collections.ConfigDict({"embed": args.embed, "mlp": args.mlp, "layers": args.layers})
  return c


def per_device_bytes(tree, device) -> int:
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    for shard in leaf.addressable_shards:
      if shard.device == device:
        total += shard.data.nbytes
  return total


def run(args, mesh_shape, devices):
  config = make_config(args, mesh_shape)
  mesh = sharding.make_mesh(mesh_shape, devices=devices)
  engine = trainer.Engine.create(config, task=BenchTask(config), mesh=mesh)
  state = engine.init_state()
  nbytes = per_device_bytes({"p": state["params"], "o": state["opt_state"]}, devices[0])
  loader = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=args.batch)
  batch = engine.global_batch(next(loader))
  t0 = time.perf_counter()
  state, m = engine.train_step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = engine.train_step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return nbytes, statistics.median(times), compile_s, float(m["loss"])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--embed", type=int, default=512)
  parser.add_argument("--mlp", type=int, default=2048)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  devices = jax.devices()
  if len(devices) < 8:
    raise SystemExit(f"needs 8 devices, found {len(devices)} (set XLA_FLAGS before JAX starts)")
  print(f"devices: {len(devices)} x {devices[0].device_kind}; model embed={args.embed} "
        f"mlp={args.mlp} layers={args.layers}; global batch {args.batch}; AdamW")
  results = {}
  for name, shape, devs in [("1 device", (1, 1, 1), devices[:1]),
                            ("8 dev data-parallel (8,1,1)", (8, 1, 1), devices[:8]),
                            ("8 dev FSDP (1,8,1)", (1, 8, 1), devices[:8])]:
    results[name] = run(args, shape, devs)
    nbytes, step_s, compile_s, loss = results[name]
    print(f"{name:30s} state/device {nbytes / 2**20:8.2f} MiB  step {1e3 * step_s:8.2f} ms  "
          f"(first call {compile_s:.1f} s, loss {loss:.4f})")
  rep = results["8 dev data-parallel (8,1,1)"]
  fsdp = results["8 dev FSDP (1,8,1)"]
  one = results["1 device"]
  print(f"per-device state bytes, FSDP / replicated: {fsdp[0] / rep[0]:.4f}  (ideal 1/8 = 0.125)")
  print(f"step time, 8 devices data-parallel / 1 device: {rep[1] / one[1]:.2f}x")
  print(f"step time, 8 devices FSDP / 1 device:          {fsdp[1] / one[1]:.2f}x")
  print("(fake CPU devices share the same cores: >1x is partitioning overhead, not slowdown on "
        "real accelerators)")


if __name__ == "__main__":
  main()
