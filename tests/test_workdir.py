"""A workdir's guards: one writer at a time, and damaged checkpoints passed over, never lost."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import engine_toy
from t5video.train import checkpoint as checkpoint_lib
from t5video.train import trainer
from t5video.train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "engine_toy.py")


def _train(workdir, *overrides, wait=True):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]))
  cmd = [sys.executable, "-m", "t5video.cli", "train", "--config", CONFIG, "--workdir", workdir, *overrides]
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_second_writer_is_refused_in_one_line_and_a_killed_one_leaves_no_stuck_lock(tmp_path):
  workdir = str(tmp_path / "run")
  first = _train(workdir, "--config.train.num_steps=200", "--config.data.delay_s=0.2", wait=False)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) and time.time() < deadline:
    assert first.poll() is None, first.stdout.read()
    time.sleep(0.2)
  second = _train(workdir, "--config.train.num_steps=4")
  assert second.returncode == 1
  lines = [l for l in second.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith(f"t5video train: WorkdirBusyError: {workdir} is being written by"), lines
  assert f"pid {first.pid}" in lines[-1] and "Traceback" not in second.stderr
  first.send_signal(signal.SIGKILL)
  first.wait(timeout=60)
  again = _train(workdir, "--config.train.num_steps=4")  # the kernel dropped the dead holder's lock
  assert again.returncode == 0, again.stderr[-2000:]


def _truncate_an_array_file(step_dir: str) -> None:
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_a_damaged_latest_checkpoint_is_passed_over_on_resume_and_restore(tmp_path, capfd):
  config = engine_toy.load_config(**{"train.num_steps": 4, "train.checkpoint_every": 2})
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  _truncate_an_array_file(os.path.join(ckpts, "4"))
  capfd.readouterr()

  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    trainer.Engine.create(config).abstract_state["params"])
  params = checkpoint_lib.restore_params(workdir, abstract)  # eval and caption restore so
  err = capfd.readouterr().err
  assert f"skipped damaged checkpoint {ckpts}/4/state" in err and f"restored {ckpts}/2/state" in err
  assert "Exception ignored in" not in err and err.count("\n") == 1, err
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))

  resumed = engine_toy.load_config(**{"train.num_steps": 6, "train.checkpoint_every": 2})
  result = trainer.train(resumed, workdir)  # resumes from step 2, writes 4 and 6 anew
  err = capfd.readouterr().err
  assert f"skipped damaged checkpoint {ckpts}/4" in err and f"moved to {ckpts}/damaged-4" in err
  assert result["step"] == 6 and not result["preempted"]
  assert sorted(os.listdir(ckpts)) == ["4", "6", "damaged-4"]  # kept, out of the way

  for step in ("4", "6"):
    _truncate_an_array_file(os.path.join(ckpts, step))
  _truncate_an_array_file(os.path.join(ckpts, "damaged-4"))
  with pytest.raises(checkpoint_lib.DamagedCheckpointError, match=f"no checkpoint reads back: {ckpts}/6/state"):
    checkpoint_lib.restore_params(workdir, abstract)


def test_the_lock_file_names_its_holder_only_while_it_is_held(tmp_path):
  workdir = str(tmp_path / "w")
  with workdir_lib.writer_lock(workdir, "training"):
    with open(os.path.join(workdir, workdir_lib.LOCK)) as f:
      assert f'"pid": {os.getpid()}' in f.read()
  with open(os.path.join(workdir, workdir_lib.LOCK)) as f:
    assert f.read() == ""
  with workdir_lib.writer_lock(workdir, "evaluation"):  # free again
    pass
