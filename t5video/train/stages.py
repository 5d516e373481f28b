"""Multi-stage runs: the stages are data in the config, one driver runs them.

``config.stages`` lists the runs that must finish before the config's own (e.g.
CaptionT5's video-text CLIP, one per fold), each a dict::

  {'name': 'vificlip', 'config': 'configs/vificlip/synthetic.py:mean',
   'workdir': 'vificlip', 'overrides': {'data': {'root': ...}, 'train': {'num_steps': 2000}}}

:func:`train` prepares the run (``Task.prepare`` writes its assets and resolves
the config once), saves ``<workdir>/config.json``, then trains each stage in its
own sub-workdir (own checkpoints, own resume) and finally the config itself in
``workdir``. A stage whose sub-workdir holds ``final_metrics.json`` is done; an
interrupted run started again resumes at the first unfinished stage. Trainers
run one after the other, never one inside another.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from t5video import config as config_lib
from t5video.train import paths
from t5video.train import task as task_lib
from t5video.train import trainer

DONE = "final_metrics.json"  # written by trainer.train when a run ends


def _plain(x) -> Any:
  return x.to_dict() if hasattr(x, "to_dict") else x


def merge(config: ml_collections.ConfigDict, overrides: Mapping) -> None:
  """Sets ``overrides`` (a nested dict) into ``config`` in place; sections merge key by key
  (an empty dict replaces a section)."""
  with config.unlocked():
    for key, value in _plain(overrides).items():
      if (isinstance(value, Mapping) and value and key in config
          and isinstance(config[key], ml_collections.ConfigDict)):
        merge(config[key], value)
      else:
        config[key] = value


def stage_config(stage: Mapping) -> ml_collections.ConfigDict:
  """A stage's config: its file with its overrides."""
  stage = _plain(stage)
  config = config_lib.load_config_file(stage["config"])
  merge(config, stage.get("overrides") or {})
  return config


def is_done(workdir: str) -> bool:
  return paths.exists(paths.join(workdir, DONE))


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The recipe's prepare step (assets, resolved config), then ``workdir/config.json``."""
  config_lib.validate(config)
  config = task_lib.get_task(config.task).prepare(config, workdir)
  config_lib.save_run_config(config, workdir)
  return config


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Prepares and trains ``config`` in ``workdir`` after its stages (see the module docstring).

  Returns:
    ``trainer.train``'s result of the last run started (a preempted stage's
    result, with ``'stage'`` naming it, when the run stopped there).
  """
  workdir = paths.normalize(workdir)
  config = prepare(config, workdir)
  for stage in config.get("stages", ()) or ():
    stage = _plain(stage)
    sub = paths.join(workdir, stage["workdir"])
    if is_done(sub):
      continue
    print(f"stage {stage['name']}: {stage['config']} in {sub}", flush=True)
    result = train(stage_config(stage), sub)
    if result.get("preempted") or not is_done(sub):
      return {**result, "preempted": True, "stage": stage["name"]}
  return trainer.train(config, workdir)
