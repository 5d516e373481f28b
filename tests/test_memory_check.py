"""A config too big for the machine stops before anything is allocated, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import engine_toy
from t5video.train import memory
from t5video.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 x 16384 x 131072 fp32 weights = 16 GiB; with Adam's two moments 48 GiB: more than this machine.
HUGE = ("--config.model.embed=16384", "--config.model.mlp=131072")
too_big_here = pytest.mark.skipif(
    (memory.host_available_bytes() or 0) > 40 * memory.GiB,
    reason="this machine has more than 40 GiB free: the 'too big' toy would fit")


def test_compiled_need_counts_arguments_and_temporaries():
  f = jax.jit(lambda x, y: jnp.tanh(x @ y) @ y)
  spec = jax.ShapeDtypeStruct((512, 512), jnp.float32)
  need = memory.compiled_need(f.lower(spec, spec).compile())
  assert need is not None
  assert need.arguments == 2 * 512 * 512 * 4
  assert need.outputs == 512 * 512 * 4
  assert need.total >= need.arguments + need.outputs


@too_big_here
def test_too_big_a_config_stops_before_allocating(tmp_path, monkeypatch):
  monkeypatch.delenv("T5VIDEO_SKIP_MEMORY_CHECK", raising=False)
  config = engine_toy.load_config(**{"model.embed": 16384, "model.mlp": 131072})
  with pytest.raises(memory.DoesNotFitError) as e:
    trainer.train(config, str(tmp_path / "run"))
  message = str(e.value)
  assert "the training step needs" in message and "GiB are free" in message
  assert "lower train.batch_size (now 16)" in message and "raise train.micro_batches" in message
  assert not os.path.isdir(tmp_path / "run" / "checkpoints" / "0")


def test_the_check_speaks_before_the_loader_exists(tmp_path, monkeypatch):
  """Nothing batch-sized is made before the step and the input buffers are known to fit: the
  loader (whose read-ahead of a too-large batch is what the kernel killed) is never built."""
  monkeypatch.delenv("T5VIDEO_SKIP_MEMORY_CHECK", raising=False)

  def no_loader(self, **kw):
    raise AssertionError("train_loader was called before the memory check")

  monkeypatch.setattr(engine_toy.ToyTask, "train_loader", no_loader)
  # The step itself fits; the host buffers of 2 x 8 x 4096 x 4096 fp32 rows (10 GiB) do not fit in 1.
  config = engine_toy.load_config(**{"train.batch_size": 8, "model.length": 4096, "model.embed": 4096})
  monkeypatch.setattr(memory, "available_bytes", lambda devices=None: (1 << 30, 1))
  monkeypatch.setattr(memory, "compiled_need", lambda compiled: memory.Need(1 << 20, 0, 0, 1 << 20))
  with pytest.raises(memory.DoesNotFitError, match=r"the input pipeline's buffers (\d+\.\d+)") as e:
    trainer.train(config, str(tmp_path / "run"))
  assert "1.0 GiB are free" in str(e.value)
  buffers = float(e.value.args[0].split("the input pipeline's buffers ")[1].split(")")[0])
  assert buffers == pytest.approx((2 * 8 + 8) * 4096 * 4096 * 4 / memory.GiB, rel=0.01)


@too_big_here
def test_too_big_a_config_is_one_line_from_the_cli(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]))
  env.pop("T5VIDEO_SKIP_MEMORY_CHECK", None)
  out = subprocess.run(
      [sys.executable, "-m", "t5video.cli", "train", "--config",
       os.path.join(REPO, "tests", "configs", "engine_toy.py"), "--workdir", str(tmp_path / "run"),
       *HUGE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("t5video train: DoesNotFitError: the training step needs"), lines[-5:]
  assert "Traceback" not in out.stderr


def test_fit_checked_compiles_once_per_signature_and_stops_too_big_a_batch(monkeypatch):
  monkeypatch.delenv("T5VIDEO_SKIP_MEMORY_CHECK", raising=False)
  calls = []
  real_check = memory.check_fits

  def counting_check(compiled, config, *, what, **kw):
    calls.append(what)
    return real_check(compiled, config, what=what, **kw)

  monkeypatch.setattr(memory, "check_fits", counting_check)
  f = memory.FitChecked(jax.jit(lambda x, k: x * k, static_argnums=1), {"eval": {"batch_size": 8}},
                        what="the evaluation decoder", static_argnums=(1,))
  x = jnp.ones((8, 4))
  assert float(f(x, 3).sum()) == 96.0 and float(f(x, 3).sum()) == 96.0
  assert float(f(x, 2).sum()) == 64.0  # a new static argument: a new program
  assert calls == ["the evaluation decoder"] * 2
  # 1 GiB of input against 64 MiB free: one line naming the eval batch before anything runs.
  monkeypatch.setattr(memory, "available_bytes", lambda devices=None: (64 << 20, 1))
  big = jax.ShapeDtypeStruct((1 << 14, 1 << 14), jnp.float32)
  with pytest.raises(memory.DoesNotFitError, match=r"the evaluation decoder needs .* lower eval.batch_size \(now 8\)"):
    memory.check_fits(jax.jit(lambda x: x * 2).lower(big).compile(), {"eval": {"batch_size": 8}},
                      what="the evaluation decoder")
  with pytest.raises(memory.DoesNotFitError):
    f(jnp.ones((1 << 12, 1 << 12)), 5)  # 64 MiB in, 64 MiB out: more than is free
