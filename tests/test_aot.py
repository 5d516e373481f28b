"""``t5video compile``: steps compiled for TPU slices on this CPU (libtpu, no TPU), and what is
read from them: memory per chip, XLA's and the model's FLOPs, collectives, the verdict and advice.

The slices' devices are compile-only (``jax.experimental.topologies``); nothing runs on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5video.train import flops
from t5video.train import hlo
from t5video.train import topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "configs", "engine_toy.py")
pytest.importorskip("libtpu", reason="compiling for TPUs needs the tpu extra (libtpu)")


@pytest.mark.parametrize("name,family,topo,chips,hosts,cores", [
    ("v4-8", "v4", "2x2x1", 4, 1, 240),       # v4 names count TensorCores: 2 per chip
    ("v4-32", "v4", "2x2x4", 16, 4, 240),
    ("v5p-16", "v5p", "2x2x2", 8, 2, 208),
    ("v5litepod-8", "v5e", "2x4", 8, 1, 224),  # v5e and v6e names count chips
    ("v5e-1", "v5e", "1x1", 1, 1, 24),
    ("v5litepod-256", "v5e", "16x16", 256, 32, 224),
    ("v6e-8", "v6e", "2x4", 8, 1, 180),
    ("v5e:4x4", "v5e", "4x4", 16, 2, 224),
    ("2xv5litepod-16", "v5e", "4x4", 32, 4, 224),
])
def test_slices_by_the_names_users_rent_them_by(name, family, topo, chips, hosts, cores):
  tpu = topology.slice_devices(name)
  assert (tpu.family, tpu.topology, tpu.chips, tpu.hosts, tpu.host_cores) == (family, topo, chips, hosts, cores)
  # One device per chip: a v4's two TensorCores are one megacore device, as a v4 VM runs them.
  assert len({tuple(d.coords) + (getattr(d, "slice_index", 0),) for d in tpu.devices}) == chips


@pytest.mark.parametrize("bad,match", [("v4-3", "2 per chip"), ("v5e-12", "no v5e slice of 12"),
                                       ("v7-8", "unknown TPU")])
def test_an_unknown_slice_is_one_line_naming_the_forms(bad, match):
  with pytest.raises(ValueError, match=match):
    topology.parse(bad)


def _mlp_loss(p, x):
  h = jax.nn.relu(x @ p["w1"])
  return jnp.mean((h @ p["w2"]) ** 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_model_flops_of_a_pure_matmul_model_equal_xlas_count(dtype):
  b, d, h, o = 512, 1024, 4096, 512
  p = {"w1": jax.ShapeDtypeStruct((d, h), dtype), "w2": jax.ShapeDtypeStruct((h, o), dtype)}
  x = jax.ShapeDtypeStruct((b, d), dtype)
  counted = flops.matmul_flops(_mlp_loss, (p, x), ({"w1": True, "w2": True}, False))
  # Forward 2BDH + 2BHO; backward: both weight gradients, and the activation gradient of the second
  # layer only (the input x needs none).
  assert counted.forward == 2 * b * (d * h + h * o)
  assert counted.backward == 2 * b * (d * h + h * o) + 2 * b * h * o
  xla = jax.jit(jax.value_and_grad(_mlp_loss)).lower(p, x).compile().cost_analysis()["flops"]
  assert xla == pytest.approx(counted.total, rel=0.02)


def test_frozen_parts_count_forward_only_and_loops_their_trips():
  b, d, h, o = 8, 16, 32, 4
  p = {"w1": jax.ShapeDtypeStruct((d, h), jnp.float32), "w2": jax.ShapeDtypeStruct((h, o), jnp.float32)}
  x = jax.ShapeDtypeStruct((b, d), jnp.float32)
  frozen_first = flops.matmul_flops(_mlp_loss, (p, x), ({"w1": False, "w2": True}, False))
  assert frozen_first.total == 2 * b * d * h + 2 * 2 * b * h * o  # w1: forward; w2: forward + its gradient
  frozen_all = flops.matmul_flops(_mlp_loss, (p, x), ({"w1": False, "w2": False}, False))
  assert frozen_all.backward == 0 and frozen_all.forward == 2 * b * (d * h + h * o)

  def stack(ws, x):
    y, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)
    return y.sum()

  ws = jax.ShapeDtypeStruct((5, d, d), jnp.float32)
  scanned = flops.matmul_flops(stack, (ws, x), (True, False))
  assert scanned.forward == 5 * 2 * b * d * d
  assert scanned.backward == 5 * 2 * b * d * d + 4 * 2 * b * d * d  # the first layer's input needs no grad
  rematerialised = flops.matmul_flops(jax.checkpoint(stack), (ws, x), (True, False))
  assert rematerialised.total == scanned.total  # recomputation is not model work


def test_collectives_of_an_fsdp_step_counted_per_layer_and_trip():
  """4 layers scanned, weights split over 4 chips: each layer's weight is gathered in the forward
  and again in the backward pass, 8 all-gathers of the full 2 MiB matrix."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  tpu = topology.slice_devices("v5e:2x2")
  mesh = Mesh(np.asarray(tpu.devices).reshape(4), ("fsdp",))

  def loss(ws, x):
    y, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)
    return y.sum()

  ws = jax.ShapeDtypeStruct((4, 1024, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "fsdp")))
  x = jax.ShapeDtypeStruct((256, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)  # the tests' CPU cache holds no TPU programs
  try:
    compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)
  found = hlo.collectives(compiled.as_text(), 4)
  gathers = found["all-gather"]
  assert gathers["count"] == 8
  assert gathers["bytes"] == 8 * 1024 * 1024 * 2
  assert gathers["wire_bytes"] == pytest.approx(gathers["bytes"] * 3 / 4)


def _compile_cli(tmp_path, *args, config=TOY):
  out_json = tmp_path / "records.json"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]))
  env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # what the TPU would run, not the tests' cheap pipeline
  env.pop("JAX_PLATFORMS", None)  # t5video picks the CPU itself where no accelerator is attached
  out = subprocess.run([sys.executable, "-m", "t5video.cli", "compile", "--config", config, *args,
                        "--json", str(out_json)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return json.loads(out_json.read_text()), out


KEYS = ("stage", "topology", "chips", "device_kind", "step", "hbm_per_chip_bytes", "need_per_chip_bytes",
        "need_parts", "fits", "advice", "xla_flops_per_chip", "model_flops_per_step", "roofline_step_s",
        "collectives", "collective_s", "input_frames_per_s_per_host", "host_cores_needed", "host_cores")


def test_compile_command_reports_a_step_that_fits_and_one_that_does_not(tmp_path):
  records, out = _compile_cli(tmp_path, "--topology", "v5litepod-8,v4-8", "--config.train.batch_size=64")
  assert [(r["topology"], r["chips"], r["device_kind"]) for r in records] == [
      ("v5litepod-8", 8, "TPU v5 lite"), ("v4-8", 4, "TPU v4")]
  for r in records:
    assert set(KEYS) <= set(r), set(KEYS) - set(r)
    assert r["fits"] and not r["advice"] and r["step"] == "train"
    assert set(r["need_parts"]) >= {"params", "optimizer_state", "batch", "temporaries"}
    assert r["need_per_chip_bytes"] >= r["need_parts"]["params"] + r["need_parts"]["temporaries"]
  assert records[0]["hbm_per_chip_bytes"] == 16 << 30 and records[1]["hbm_per_chip_bytes"] == 32 << 30
  assert "Source Location Trace" not in out.stderr and "TPU_WORKER_HOSTNAMES" not in out.stderr
  # 4 GiB of fp32 weights, twice that of Adam moments, and the gradients, replicated on every 16 GiB
  # v5e chip: no;
  # sharded over the 8 chips (FSDP), it fits.
  big = ("--config.model.embed=8192", "--config.model.mlp=65536", "--config.train.batch_size=64")
  (too_big,), _ = _compile_cli(tmp_path, "--topology", "v5litepod-8", *big)
  assert not too_big["fits"] and too_big["need_per_chip_bytes"] >= 16 << 30  # XLA: "usage >= 16.00G"
  assert "mesh.shape='(1,-1,1)'" in too_big["advice"]
  (sharded,), _ = _compile_cli(tmp_path, "--topology", "v5litepod-8", *big, "--config.mesh.shape=(1,-1,1)")
  assert sharded["fits"] and sharded["need_parts"]["params"] * 8 == pytest.approx(too_big["need_parts"]["params"], rel=0.01)
  assert sharded["collectives"]["all-gather"]["count"] >= 2


def test_search_finds_the_largest_global_batch_that_fits(tmp_path):
  """Activations of [batch, 512, 1024] fp32 dominate: about 4 MiB a row on one 16 GiB chip."""
  small = ("--config.model.embed=256", "--config.model.mlp=1024", "--config.model.length=512")
  (best,), out = _compile_cli(tmp_path, "--topology", "v5e-1", *small, "--config.train.batch_size=2048",
                              "--search", "batch")
  assert best["fits"] and best["search"] == "batch"
  batch = best["global_batch"]
  assert 2048 < batch < 4096, out.stdout  # 2048 fits, 4096 does not, the answer to within an eighth
  assert f"global batch {batch}: " in out.stdout and "global batch 4096: " in out.stdout
  missed = [int(line.split("global batch ")[1].split(":")[0]) for line in out.stdout.splitlines()
            if "does not fit" in line and "global batch " in line]
  assert missed and min(missed) - batch <= batch // 8
