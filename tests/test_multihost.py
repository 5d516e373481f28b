"""Multi-host on one machine: 2 processes x 2 CPU devices form one JAX job (gloo).

Every process runs ``t5video train`` (the CLI's start-up path, which must call
``jax.distributed.initialize`` before anything touches a device) with
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` set,
on the engine's toy task with global batches in one order for any process
count (``data.global_order``). Proven here:

* the 2 x 2 job, its parameters split across both processes (FSDP over 4
  devices), reaches the same losses, step by step, as 1 process x 4 devices,
  and the same evaluation, which each process runs on its share of the
  examples (:mod:`t5video.evaluate.hosts`);
* each process reads its own block of every global batch (disjoint, and their
  union is the batch);
* both processes SIGKILLed after a checkpoint, both restarted: the job resumes
  from that checkpoint and goes on exactly as the uninterrupted run;
* one process SIGKILLed: the other stops with JAX's "another task died" error
  within the heartbeat timeout instead of hanging;
* a staged run (stage 0's ViFi-CLIP, then CaptionT5: the smoke config) ends on
  2 processes, every process agreeing that stage 0 is done; one process killed
  in the second stage, both restarted, it finishes with the losses of 1 process x
  4 devices.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import engine_toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "engine_toy.py")
STEPS = 12
BATCH = 16


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                              "T5VIDEO_DISTRIBUTED"))}
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "tests"), REPO])
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env.update(extra)
  return env


def _train_cmd(workdir: str, *overrides: str, config: str = CONFIG) -> list[str]:
  return [sys.executable, "-m", "t5video.cli", "train", "--config", config, "--workdir", workdir,
          f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=6",
          f"--config.train.batch_size={BATCH}", "--config.data.global_order=True",
          # FSDP over all 4 devices: every parameter is split across the 2 processes.
          "--config.mesh.shape=(1,4,1)", *overrides]


def _start_job(workdir: str, *overrides: str, heartbeat_s: int = 100,
               config: str = CONFIG) -> list[subprocess.Popen]:
  """2 processes x 2 devices on localhost, each logging to <workdir>.process_<i>.log."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), T5VIDEO_HEARTBEAT_TIMEOUT_S=str(heartbeat_s))
    log = open(f"{workdir}.process_{i}.log", "a")
    procs.append(subprocess.Popen(_train_cmd(workdir, *overrides, config=config), cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return procs


def _log(workdir: str, i: int) -> str:
  with open(f"{workdir}.process_{i}.log") as f:
    return f.read()


def _wait_all(procs, workdir: str, timeout: float = 240.0) -> None:
  deadline = time.time() + timeout
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError(f"process {i} did not finish:\n{_log(workdir, i)[-3000:]}")
    assert p.returncode == 0, f"process {i} failed (rc {p.returncode}):\n{_log(workdir, i)[-3000:]}"


def _wait_for(predicate, procs, timeout: float = 240.0) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    for p in procs:
      if p.poll() is not None:
        raise AssertionError(f"a process ended early (rc {p.returncode})")
    time.sleep(0.05)
  for p in procs:
    p.kill()
  raise AssertionError("timed out")


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
  """The same job on 1 process x 4 devices."""
  workdir = str(tmp_path_factory.mktemp("one") / "run")
  out = subprocess.run(_train_cmd(workdir), cwd=REPO, env=_env(4), capture_output=True, text=True,
                       timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = engine_toy.read_metrics(workdir)
  assert sorted(metrics) == list(range(1, STEPS + 1))
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    return metrics, json.load(f)["eval"]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_after_both_are_killed(
    tmp_path, one_process_reference):
  reference, reference_eval = one_process_reference
  workdir = str(tmp_path / "run")
  ids_dir = str(tmp_path / "ids")

  # Slowed by its input so that the kill lands between the checkpoint at step 6 and the end.
  procs = _start_job(workdir, "--config.data.delay_s=0.4", f"--config.data.indices_log={ids_dir}")
  _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "6")), procs)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait(timeout=60)
  before = engine_toy.read_metrics(workdir)
  assert 6 <= max(before) < STEPS, sorted(before)

  # Restarted, both resume from step 6; then the job runs to the end.
  procs = _start_job(workdir)
  _wait_all(procs, workdir)
  assert "resuming from step 6" in _log(workdir, 0)
  after = engine_toy.read_metrics(workdir)
  assert sorted(after) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    # The same global batch in the same order as on 1 process ...
    assert after[step]["batch_fingerprint"] == reference[step]["batch_fingerprint"], step
    # ... and the same loss (the gradient all-reduce crosses processes: summation order may differ).
    np.testing.assert_allclose(after[step]["loss"], reference[step]["loss"], rtol=1e-5, err_msg=step)
  # Evaluation: each process scored its share of the held-out examples (params all-gathered
  # from the FSDP shards), the shares gathered back: the same figures as on 1 process.
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    evaluation = json.load(f)["eval"]
  assert evaluation["num_examples"] == reference_eval["num_examples"] == 32
  np.testing.assert_allclose(evaluation["loss"], reference_eval["loss"], rtol=1e-5)
  assert evaluation["accuracy"] == reference_eval["accuracy"]

  # Each process read its own block of every global batch: disjoint, and the union is the batch.
  reads = []
  for i in range(2):
    with open(os.path.join(ids_dir, f"process_{i}.jsonl")) as f:
      reads.append({r["batch"]: r["indices"] for r in map(json.loads, f)})
  common = sorted(set(reads[0]) & set(reads[1]))
  assert len(common) >= 6
  for k in common:
    a, b = reads[0][k], reads[1][k]
    assert len(a) == len(b) == BATCH // 2 and not set(a) & set(b), k
  # ... and the blocks are the halves of the global batch that 1 process reads (seed 0).
  import grain  # pylint: disable=g-import-not-at-top
  order = grain.MapDataset.range(256).shuffle(seed=0).repeat(None).batch(BATCH, drop_remainder=True)
  for k in common:
    assert reads[0][k] + reads[1][k] == np.asarray(order[k]).tolist(), k


@pytest.mark.slow
def test_a_staged_toy_run_ends_on_two_processes_and_resumes_after_one_is_killed(tmp_path, one_process_reference):
  """Stage 'first', then the run itself: every process takes process 0's word that the stage is done
  (before, process 1 could look for the marker before process 0 wrote it, and both hung); one process
  killed in the second stage, both restarted: the run ends with the 1 process x 4 devices losses."""
  reference, _ = one_process_reference
  workdir = str(tmp_path / "run")
  staged = CONFIG + ":staged"
  procs = _start_job(workdir, "--config.data.delay_s=0.4", heartbeat_s=10, config=staged)
  _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "6")), procs)
  assert os.path.isfile(os.path.join(workdir, "first", "final_metrics.json"))
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait(timeout=60)
  procs[0].wait(timeout=120)  # the survivor stops once the heartbeat misses the dead process
  assert procs[0].returncode != 0
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json")), "killed too late"
  procs = _start_job(workdir, config=staged)
  _wait_all(procs, workdir)
  log0 = _log(workdir, 0)
  assert log0.count("stage first:") == 1, "the finished stage trained again"
  assert "resuming from step 6" in log0
  got = engine_toy.read_metrics(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    np.testing.assert_allclose(got[step]["loss"], reference[step]["loss"], rtol=1e-5, err_msg=step)


# The smoke config shortened: stage 0 (ViFi-CLIP) and CaptionT5, each a few steps.
STAGED = [os.path.join(REPO, "configs", "captiont5", "synthetic.py") + ":runlocal",
          "--config.thoughts.clip_stage.num_steps=6", "--config.train.num_steps=12",
          "--config.train.log_every=1", "--config.train.checkpoint_every=6", "--config.eval.max_examples=4"]


def _staged_cmd(workdir: str) -> list[str]:
  return [sys.executable, "-m", "t5video.cli", "train", "--config", STAGED[0], *STAGED[1:],
          "--workdir", workdir]


def _start_staged(workdir: str, heartbeat_s: int = 100) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for i in range(2):
    env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), T5VIDEO_HEARTBEAT_TIMEOUT_S=str(heartbeat_s))
    with open(f"{workdir}.process_{i}.log", "a") as log:
      procs.append(subprocess.Popen(_staged_cmd(workdir), cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
  return procs


@pytest.mark.long
def test_staged_run_ends_on_two_processes_and_resumes_after_one_is_killed(tmp_path):
  reference = str(tmp_path / "one")
  out = subprocess.run(_staged_cmd(reference), cwd=REPO, env=_env(4), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  expected = engine_toy.read_metrics(reference)
  assert sorted(expected) == list(range(1, 13))

  workdir = str(tmp_path / "two")
  procs = _start_staged(workdir, heartbeat_s=10)
  second_stage_checkpoint = os.path.join(workdir, "checkpoints", "6")
  _wait_for(lambda: os.path.isdir(second_stage_checkpoint), procs, timeout=600)
  assert os.path.isfile(os.path.join(workdir, "vificlip", "final_metrics.json"))
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait(timeout=60)
  # The survivor does not hang: it stops once the heartbeat misses the dead process.
  procs[0].wait(timeout=120)
  assert procs[0].returncode != 0
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json")), "killed too late"

  procs = _start_staged(workdir)
  _wait_all(procs, workdir, timeout=600)
  log0 = _log(workdir, 0)  # both starts' output
  assert log0.count("stage vificlip:") == 1, "stage 0 trained again after the restart"
  assert re.search(r"resuming from step (6|12)\b", log0), log0[-3000:]
  got = engine_toy.read_metrics(workdir)
  assert sorted(got) == list(range(1, 13))
  for step in range(1, 13):
    np.testing.assert_allclose(got[step]["loss"], expected[step]["loss"], rtol=2e-4, err_msg=step)
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  with open(os.path.join(reference, "final_metrics.json")) as f:
    final_reference = json.load(f)
  assert final["step"] == final_reference["step"] == 12
  np.testing.assert_allclose(final["loss"], final_reference["loss"], rtol=2e-4)
