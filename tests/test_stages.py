"""Stages as data: one driver runs config.stages, each in its own sub-workdir, then the run
itself; an interrupted multi-stage run resumes at the unfinished stage."""

from __future__ import annotations

import json
import os

import pytest

from t5video import config as config_lib
from t5video.train import stages
from t5video.train import workdir as workdir_lib
from t5video.train import trainer

TOY = "tests/configs/engine_toy.py"


def _config():
  config = config_lib.load_config_file(TOY)
  config.train.num_steps = 4
  config.train.checkpoint_every = 2
  config.stages = (
      {"name": "first", "config": TOY, "workdir": "stage_first",
       "overrides": {"train": {"num_steps": 3, "checkpoint_every": 3}, "seed": 1}},
      {"name": "second", "config": TOY, "workdir": "stage_second",
       "overrides": {"train": {"num_steps": 5, "checkpoint_every": 5}, "seed": 2}},
  )
  return config


def test_stage_config_merges_overrides_into_its_file():
  stage = _config().stages[1]
  config = stages.stage_config(stage)
  assert config.train.num_steps == 5 and config.train.checkpoint_every == 5 and config.seed == 2
  assert config.train.batch_size == config_lib.load_config_file(TOY).train.batch_size  # untouched keys stay


def test_interrupted_between_stages_resumes_at_the_unfinished_stage(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  calls = []
  real_train = trainer.train

  def interrupted(config, wd):
    calls.append(os.path.basename(wd))
    if wd.endswith("stage_second"):
      raise KeyboardInterrupt  # killed after the first stage finished, before the second started
    return real_train(config, wd)

  monkeypatch.setattr(trainer, "train", interrupted)
  with pytest.raises(KeyboardInterrupt):
    stages.train(_config(), workdir)
  assert calls == ["stage_first", "stage_second"]
  first_done = os.path.join(workdir, "stage_first", workdir_lib.FINAL_METRICS)
  assert json.load(open(first_done))["step"] == 3
  stamp = os.path.getmtime(first_done)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert [s["name"] for s in saved["stages"]] == ["first", "second"]  # the stage list is in config.json

  calls.clear()
  monkeypatch.setattr(trainer, "train", lambda config, wd: (calls.append(os.path.basename(wd)),
                                                             real_train(config, wd))[1])
  result = stages.train(_config(), workdir)
  assert calls == ["stage_second", "run"]  # the finished stage is not trained again
  assert os.path.getmtime(first_done) == stamp
  assert json.load(open(os.path.join(workdir, "stage_second", workdir_lib.FINAL_METRICS)))["step"] == 5
  assert result["step"] == 4 and not result["preempted"]
  stage_cfg = json.load(open(os.path.join(workdir, "stage_second", "config.json")))
  assert stage_cfg["train"]["num_steps"] == 5 and stage_cfg["seed"] == 2  # each stage saves its own config

  calls.clear()
  stages.train(_config(), workdir)  # all done: only the (finished) run itself is visited
  assert calls == ["run"]


def test_a_preempted_stage_stops_the_run_and_names_the_stage(tmp_path, monkeypatch):
  def preempted(config, wd):
    return {"step": 1, "loss": None, "preempted": True, "eval": {}}

  monkeypatch.setattr(trainer, "train", preempted)
  result = stages.train(_config(), str(tmp_path / "run"))
  assert result["preempted"] and result["stage"] == "first"


def test_a_stage_stopped_between_its_last_checkpoint_and_its_marker_ends_when_started_again(tmp_path):
  """Killed after the final checkpoint and before ``final_metrics.json``: the next start has no step
  left to train, evaluates again and writes the marker, so the stage counts as done (not preempted)."""
  config = config_lib.load_config_file(TOY)
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  workdir = str(tmp_path / "stage")
  first = trainer.train(config, workdir)
  marker = workdir_lib.final_metrics_path(workdir)
  os.remove(marker)
  assert not workdir_lib.is_done(workdir)
  again = trainer.train(config, workdir)
  assert workdir_lib.is_done(workdir) and not again["preempted"]
  assert json.load(open(marker))["eval"] == pytest.approx(first["eval"])
  stamp = os.path.getmtime(marker)
  trainer.train(config, workdir)  # a finished run is left as it is
  assert os.path.getmtime(marker) == stamp
