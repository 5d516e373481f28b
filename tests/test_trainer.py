"""The trainer: config validation, accumulation, non-finite steps, checkpoints, resume, preemption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import engine_toy
from t5video.train import checkpoint
from t5video.train import distributed
from t5video.train import logging as log_lib
from t5video.train import sharding
from t5video.train import trainer

# Independent, heavy tests: xdist may run them on different workers (tests/conftest.py).
XDIST_SPLIT = True

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_device():
  return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "tests"), REPO])
  env.pop("T5VIDEO_DISTRIBUTED", None)
  return env


def _toy_process(workdir, **overrides):
  args = [sys.executable, "-m", "engine_toy", "--workdir", str(workdir)]
  for k, v in overrides.items():
    args += ["--set", f"{k}={json.dumps(v)}"]
  return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=240.0):
  start = time.time()
  while time.time() - start < timeout:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"process ended early (rc {proc.returncode}):\n{proc.stdout.read()[-4000:]}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("timed out waiting for the training process")


# ----------------------------------------------------------------------------- config

def test_validate_config_errors_name_the_key():
  good = engine_toy.load_config()
  trainer.validate_config(good)
  cases = [
      ({"train.num_step": 5}, r"unknown config key train.num_step; did you mean train.num_steps"),
      ({"train.batch_size": "16"}, r"train.batch_size must be of type int"),
      ({"train.batch_size": 0}, r"train.batch_size must be >= 1"),
      ({"train.micro_batches": 3}, r"not divisible by train.micro_batches=3"),
      ({"train.dtype": "float16"}, r"train.dtype must be one of"),
      ({"train.best_mode": "best"}, r"train.best_mode"),
      ({"mesh.shape": (-1, -1, 1)}, r"mesh.shape"),
      ({"optim.schedule": "cosin"}, r"optim.schedule"),
      ({"optim.freeze": "(x"}, r"optim.freeze: invalid regex"),
      ({"sharding.rules": (("embed", "fsdp", 1),)}, r"sharding rule"),
  ]
  for overrides, pattern in cases:
    config = engine_toy.load_config()
    for k, v in overrides.items():
      section, key = k.split(".")
      # Rebuild the section: ConfigDict itself refuses a type change on assignment.
      values = config[section].to_dict()
      values[key] = v
      config[section] = ml_collections.ConfigDict(values)
    with pytest.raises(ValueError, match=pattern):
      trainer.validate_config(config)
  config = engine_toy.load_config()
  values = config.train.to_dict()
  del values["eval_every"]
  config.train = ml_collections.ConfigDict(values)
  with pytest.raises(ValueError, match="train.eval_every is missing"):
    trainer.validate_config(config)


def test_batch_must_divide_over_data_shards():
  config = engine_toy.load_config(**{"train.batch_size": 12, "train.micro_batches": 1})
  with pytest.raises(ValueError, match="divisible by data\\*fsdp=8"):
    trainer.Engine.create(config)


# ----------------------------------------------------------------------------- the step

def test_gradient_accumulation_over_4_micro_batches_equals_one_big_batch():
  results = []
  for micro in (1, 4):
    config = engine_toy.load_config(**{"train.micro_batches": micro, "mesh.shape": (2, 2, 2),
                                       "train.batch_size": 32})
    engine = trainer.Engine.create(config)
    state = engine.init_state()
    it = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=32)
    for _ in range(2):
      state, metrics = engine.train_step(state, engine.global_batch(next(it)))
    results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                    jax.device_get(state["params"])))
  (l1, g1, p1), (l4, g4, p4) = results
  assert abs(l1 - l4) < 1e-5 and abs(g1 - g4) < 1e-5
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_nonfinite_step_is_skipped_and_counted_inside_the_step():
  config = engine_toy.load_config(**{"train.max_nonfinite": 2})
  engine = trainer.Engine.create(config, mesh=_one_device())
  state = engine.init_state()
  it = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=16)
  good = next(it)
  bad = dict(good, x=np.where(np.arange(16)[:, None, None] == 3, np.nan, good["x"]).astype(np.float32))
  before = jax.device_get(state)
  state, m = engine.train_step(state, engine.global_batch(bad))
  after = jax.device_get(state)
  assert not np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before["params"]), jax.tree_util.tree_leaves(after["params"])):
    np.testing.assert_array_equal(a, b)  # bitwise unchanged
  for a, b in zip(jax.tree_util.tree_leaves(before["opt_state"]),
                  jax.tree_util.tree_leaves(after["opt_state"])):
    np.testing.assert_array_equal(a, b)
  assert (int(after["step"]), int(after["nonfinite_streak"]), int(after["nonfinite_total"])) == (1, 1, 1)
  state, m = engine.train_step(state, engine.global_batch(good))  # a good step resets the streak
  assert int(m["skipped"]) == 0 and int(state["nonfinite_streak"]) == 0
  assert int(state["nonfinite_total"]) == 1 and not bool(state["stopped"])
  for _ in range(2):
    state, m = engine.train_step(state, engine.global_batch(bad))
  assert bool(state["stopped"])  # two in a row = max_nonfinite
  frozen = jax.device_get(state["params"])
  state, m = engine.train_step(state, engine.global_batch(good))  # once stopped, nothing moves
  for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(state["params"])):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_freezing_keeps_frozen_params_bitwise_and_without_optimizer_state():
  config = engine_toy.load_config(**{"optim.freeze": r"^(mlp_in|norm)/"})
  engine = trainer.Engine.create(config, mesh=_one_device())
  state = engine.init_state()
  init = jax.device_get(state["params"])
  it = engine.task.train_loader(seed=0, process_index=0, process_count=1, batch_size=16)
  for _ in range(3):
    state, _ = engine.train_step(state, engine.global_batch(next(it)))
  params = jax.device_get(state["params"])
  for name in ("mlp_in", "norm"):
    for a, b in zip(jax.tree_util.tree_leaves(init[name]), jax.tree_util.tree_leaves(params[name])):
      np.testing.assert_array_equal(a, b)
  assert np.abs(params["head"]["kernel"] - init["head"]["kernel"]).max() > 1e-4
  numel = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
  trainable = numel(params["mlp_out"]) + numel(params["head"])
  opt_numel = sum(x.size for x in jax.tree_util.tree_leaves(state["opt_state"]) if x.ndim > 0)
  assert opt_numel == 2 * trainable  # Adam's mu and nu, for trainable params only
  total, n_train = trainer.optim_lib.count_params(params, engine.labels)
  assert n_train == trainable and total == numel(params)


# ----------------------------------------------------------------------------- checkpoints

def test_keep_n_and_best_by_metric(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), max_to_keep=2, best_metric="acc",
                                 best_mode="max", async_save=False)
  state = {"w": jnp.arange(4.0)}
  for step, acc in [(1, 0.1), (2, 0.9), (3, 0.3), (4, None), (5, 0.2)]:
    ckpt.save(step, jax.tree_util.tree_map(lambda x, s=step: x * s, state),
              metrics=None if acc is None else {"acc": acc, "loss": 1.0})
  ckpt.wait()
  assert sorted(ckpt.all_steps()) == [2, 4, 5]
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding.replicated(_one_device()))}
  np.testing.assert_array_equal(ckpt.restore(2, abstract)["w"], np.arange(4.0) * 2)
  with pytest.raises(KeyError, match="best_metric='acc'"):
    ckpt.save(6, state, metrics={"loss": 0.5})
  ckpt.close()


def test_kill_during_checkpoint_write_leaves_previous_restorable(tmp_path):
  script = textwrap.dedent("""
      import os, signal, sys
      import jax, jax.numpy as jnp
      from t5video.train import checkpoint
      ckpt = checkpoint.Checkpointer(sys.argv[1], max_to_keep=3)
      ckpt.save(1, {"w": jnp.full((8, 8), 7.0)})
      ckpt.wait()
      ckpt.save(2, {"w": jnp.ones((64, 1024, 1024))})  # 256 MiB, written in the background
      print("IN_FLIGHT", sorted(os.listdir(sys.argv[1])), flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  directory = str(tmp_path / "ck")
  proc = subprocess.run([sys.executable, "-c", script, directory], env=_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  # The kill hit while step 2 was still a temporary directory.
  assert "2.orbax-checkpoint-tmp" in proc.stdout, proc.stdout
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=3)
  assert ckpt.latest_step() == 1
  abstract = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=sharding.replicated(_one_device()))}
  np.testing.assert_array_equal(ckpt.restore(1, abstract)["w"], np.full((8, 8), 7.0))
  ckpt.close()


def test_init_from_loads_params_by_regex(tmp_path):
  config = engine_toy.load_config()
  engine = trainer.Engine.create(config, mesh=_one_device())
  source = jax.tree_util.tree_map(lambda x: x + 1.0, engine.init_state())
  ckpt = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ckpt.save(7, source)
  ckpt.close()
  fresh = engine.init_params()
  loaded = checkpoint.load_params_by_regex(fresh, str(tmp_path / "run"), r"^mlp_")
  np.testing.assert_array_equal(loaded["mlp_in"]["kernel"], source["params"]["mlp_in"]["kernel"])
  np.testing.assert_array_equal(loaded["mlp_out"]["bias"], source["params"]["mlp_out"]["bias"])
  np.testing.assert_array_equal(loaded["head"]["kernel"], fresh["head"]["kernel"])
  assert loaded["mlp_in"]["kernel"].sharding == fresh["mlp_in"]["kernel"].sharding
  with pytest.raises(ValueError, match="no saved parameter matches"):
    checkpoint.load_params_by_regex(fresh, str(tmp_path / "run"), r"^decoder/")


# ----------------------------------------------------------------------------- whole runs

def test_nonfinite_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  config = engine_toy.load_config(**{"train.num_steps": 4, "train.checkpoint_every": 4})
  result = trainer.train(config, workdir)
  assert result["step"] == 4 and np.isfinite(result["loss"])
  config = engine_toy.load_config(**{"train.num_steps": 20, "train.checkpoint_every": 5,
                                     "model.loss_scale": float("nan")})
  with pytest.raises(trainer.NonFiniteLossError, match=r"3 steps in a row.*checkpoints/4"):
    trainer.train(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [4]
  ckpt.close()
  records = engine_toy.read_metrics(workdir)
  assert records[7]["skipped"] == 1 and records[7]["nonfinite_total"] == 3
  assert max(records) == 7  # stopped at the third non-finite step in a row


@pytest.mark.slow
def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path):
  # Reference: 20 uninterrupted steps (in this process).
  ref_dir = str(tmp_path / "ref")
  config = engine_toy.load_config()
  result = trainer.train(config, ref_dir)
  assert result["step"] == 20
  reference = engine_toy.read_metrics(ref_dir)
  assert sorted(reference) == list(range(1, 21))
  for name in ("loss", "steps_per_sec", "examples_per_sec", "mfu", "learning_rate"):
    assert name in reference[20], name
  assert reference[20]["loss"] < reference[1]["loss"]
  with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
    assert any("eval/loss" in json.loads(line) for line in f)
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(ref_dir, "tensorboard")))

  # A real process, slowed down by its input, SIGKILLed right after its checkpoint at step 10.
  run_dir = str(tmp_path / "run")
  proc = _toy_process(run_dir, **{"data.delay_s": 0.3})
  _wait_for(lambda: os.path.isdir(os.path.join(run_dir, "checkpoints", "10")), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(engine_toy.read_metrics(run_dir))
  assert 10 <= killed_at < 20, killed_at

  # Restarted, it resumes from step 10 with the same data iterator position.
  result = trainer.train(engine_toy.load_config(), run_dir)
  assert result["step"] == 20
  resumed = engine_toy.read_metrics(run_dir)
  for step in range(11, 21):
    assert resumed[step]["loss"] == reference[step]["loss"], step  # bitwise
    assert resumed[step]["batch_fingerprint"] == reference[step]["batch_fingerprint"], step
  for step in range(1, 11):
    assert resumed[step]["loss"] == reference[step]["loss"], step


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tmp_path):
  run_dir = str(tmp_path / "run")
  proc = _toy_process(run_dir, **{"data.delay_s": 0.2, "train.num_steps": 1000,
                                  "train.checkpoint_every": 0})
  metrics_file = os.path.join(run_dir, "metrics.jsonl")
  _wait_for(lambda: os.path.exists(metrics_file) and sum(1 for _ in open(metrics_file)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-4000:]
  result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
  assert result["preempted"] and 3 <= result["step"] < 1000
  ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints"))
  assert ckpt.all_steps() == [result["step"]]  # only the preemption checkpoint (checkpoint_every=0)
  ckpt.close()


# ----------------------------------------------------------------------------- small pieces

def test_distributed_settings_from_environment():
  assert distributed.distributed_settings({}) is None
  assert distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "a"}) is None
  assert distributed.distributed_settings({"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  assert distributed.distributed_settings({"SLURM_NTASKS": "4"}) == {}
  assert distributed.distributed_settings(
      {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == {
          "coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}
  assert distributed.distributed_settings(
      {"TPU_WORKER_HOSTNAMES": "a,b", "T5VIDEO_DISTRIBUTED": "0"}) is None
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    distributed.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1234"})


def test_peak_flops_table_and_throughput():
  class Dev:
    def __init__(self, kind):
      self.device_kind = kind
  assert log_lib.peak_flops(Dev("TPU v5 lite")) == 197e12
  assert log_lib.peak_flops(Dev("TPU v5p")) == 459e12
  assert log_lib.peak_flops(Dev("NVIDIA H100 80GB HBM3")) == 989e12
  assert log_lib.peak_flops(Dev("NVIDIA A100-SXM4-40GB")) == 312e12
  assert log_lib.peak_flops(Dev("cpu")) is None
  t = log_lib.Throughput(global_batch=8, flops_per_step=1e12, num_devices=4, peak_per_device=1e12)
  t.reset(0)
  time.sleep(0.05)
  m = t.measure(10)
  assert m["examples_per_sec"] == pytest.approx(8 * m["steps_per_sec"])
  assert m["mfu"] == pytest.approx(m["steps_per_sec"] * 1e12 / 4e12)


def test_time_waiting_for_data_is_measured_and_printed(tmp_path, capsys):
  # Each batch "loads" for 0.5 s while the toy step takes milliseconds: the device has finished
  # the queued step long before the next batch comes, so most of the time is waiting.
  config = engine_toy.load_config(**{"data.delay_s": 0.5, "train.num_steps": 6,
                                     "train.checkpoint_every": 0})
  result = trainer.train(config, str(tmp_path / "run"))
  assert 0.5 < result["input_wait_fraction"] <= result["input_host_fraction"] <= 1.0, result
  assert "the device waited for data at most" in capsys.readouterr().out
  records = engine_toy.read_metrics(str(tmp_path / "run"))
  assert all(0.0 <= records[s]["input_wait_fraction"] <= 1.0 for s in range(2, 7))


def test_input_time_overlapped_with_queued_steps_is_not_counted_as_waiting(tmp_path):
  # One device (dispatch is asynchronous there; several fake CPU devices dispatch partly in
  # step), a step of some 6 GFLOP (about 0.1 s on 2 idle cores) against 0.02 s to load a batch:
  # the host loads the next batch while the device runs the queued step.
  overrides = {"data.delay_s": 0.02, "train.num_steps": 8, "train.log_every": 8,
               "train.checkpoint_every": 0, "model.embed": 256, "model.mlp": 2048, "model.length": 64,
               "data.num_examples": 64}
  args = [sys.executable, "-m", "engine_toy", "--workdir", str(tmp_path / "run")]
  for k, v in overrides.items():
    args += ["--set", f"{k}={json.dumps(v)}"]
  env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
  assert result["input_host_fraction"] > 0.005, result
  assert result["input_wait_fraction"] < 0.5 * result["input_host_fraction"], result


def test_throughput_counts_idle_waits_only():
  t = log_lib.Throughput(global_batch=8, flops_per_step=None, num_devices=1, peak_per_device=None)
  t.reset(0)
  t.add_input_time(0.02, device_idle=False)
  t.add_input_time(0.03, device_idle=True)
  time.sleep(0.1)
  m = t.measure(2)
  assert m["input_host_fraction"] == pytest.approx(5 / 3 * m["input_wait_fraction"])
  assert t.total_host == pytest.approx(0.05) and t.total_idle == pytest.approx(0.03)
  assert t.measure(3)["input_wait_fraction"] == 0.0  # a new window starts empty