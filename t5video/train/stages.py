"""Multi-stage runs: the stages are data in the config, one driver runs them.

``config.stages`` lists the runs that must finish before the config's own (e.g.
CaptionT5's video-text CLIP, one per fold), each a dict::

  {'name': 'vificlip', 'config': 'configs/vificlip/synthetic.py:mean',
   'workdir': 'vificlip', 'overrides': {'data': {'root': ...}, 'train': {'num_steps': 2000}}}

:func:`train` prepares the run (``Task.prepare`` writes its assets and resolves
the config once), saves ``<workdir>/config.json``, then trains each stage in its
own sub-workdir (own checkpoints, own resume) and finally the config itself in
``workdir``. A stage whose sub-workdir holds ``final_metrics.json`` is done; an
interrupted run started again resumes at the first unfinished stage. In a
multi-process job every process takes the same decision: process 0 (which
writes the marker) says whether a stage is done, and a stage is preempted when
any process says so, both agreed through JAX's collectives after each stage. Trainers
run one after the other, never one inside another.

A stage whose ``config`` is empty is the run's own resolved config with the
stage's overrides (e.g. the text-only control of :mod:`t5video.evaluate.controls`:
the same recipe with every pixel constant).

A stage that is not a training run (e.g. pseudo-labelling a video set with an
earlier stage's model, :mod:`t5video.recipes.distill.pseudo_label`) names its
function in ``run`` (``'package.module:function'``): the driver calls
``function(stage_config, sub_workdir)`` on every process instead of training,
and the function writes ``final_metrics.json`` into the sub-workdir when it has
finished (an interrupted one is called again and resumes from what it wrote). It
returns a dict (``{'preempted': True}`` stops the run there).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import jax
from jax.experimental import multihost_utils
import ml_collections

from t5video import config as config_lib
from t5video.train import distributed
from t5video.train import paths
from t5video.train import task as task_lib
from t5video.train import trainer
from t5video.train import workdir as workdir_lib



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


def stage_config(stage: Mapping, parent: ml_collections.ConfigDict | None = None
                 ) -> ml_collections.ConfigDict:
  """A stage's config: its file (empty: a copy of ``parent``, the run's own config) with its
  overrides."""
  stage = _plain(stage)
  if stage.get("config"):
    config = config_lib.load_config_file(stage["config"])
  elif parent is not None:
    config = ml_collections.ConfigDict(_plain(parent))
  else:
    raise ValueError(f"stage {stage.get('name')!r} has no config file and no run config to copy")
  merge(config, stage.get("overrides") or {})
  return config


def stage_function(spec: str) -> Callable[[ml_collections.ConfigDict, str], Mapping]:
  """The function a ``run`` stage names (``'package.module:function'``)."""
  module_name, _, name = spec.partition(":")
  fn = getattr(importlib.import_module(module_name), name, None) if name else None
  if not callable(fn):
    raise ValueError(f"stage run {spec!r}: not a 'package.module:function' that exists")
  return fn


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """The recipe's prepare step (assets, resolved config), then ``workdir/config.json``.

  In a multi-process job process 0 prepares first and writes the assets and
  ``config.json``; the others prepare after a barrier, finding the assets
  written (a data root on each host's own disk is still rendered there).
  """
  config_lib.validate(config)
  task_cls = task_lib.get_task(config.task)
  if jax.process_count() == 1:
    config = task_cls.prepare(config, workdir)
    config_lib.save_run_config(config, workdir)
    return config
  if jax.process_index() == 0:
    prepared = task_cls.prepare(config, workdir)
    config_lib.save_run_config(prepared, workdir)
  multihost_utils.sync_global_devices(f"t5video prepare {workdir}")
  if jax.process_index() != 0:
    prepared = task_cls.prepare(config, workdir)
  multihost_utils.sync_global_devices(f"t5video prepared {workdir}")
  return prepared


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Prepares and trains ``config`` in ``workdir`` after its stages (see the module docstring),
  holding the workdir for this one writer (:func:`t5video.train.workdir.writer_lock`).

  Returns:
    ``trainer.train``'s result of the last run started (a preempted stage's
    result, with ``'stage'`` naming it, when the run stopped there).

  Raises:
    WorkdirBusyError: another process is writing ``workdir``.
  """
  workdir = paths.normalize(workdir)
  with workdir_lib.writer_lock(workdir, "training"):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  config = prepare(config, workdir)
  for stage in config.get("stages", ()) or ():
    stage = _plain(stage)
    sub = paths.join(workdir, stage["workdir"])
    if workdir_lib.is_done(sub):
      continue
    print(f"stage {stage['name']}: {stage.get('run') or stage['config'] or 'the run config with its overrides'}"
          f" in {sub}", flush=True)
    if stage.get("run"):
      result = dict(stage_function(stage["run"])(stage_config(stage, parent=config), sub) or {})
    else:
      result = _train(stage_config(stage, parent=config), sub)
    preempted = distributed.agree(bool(result.get("preempted")), rule="any")
    if preempted or not workdir_lib.is_done(sub):
      return {**result, "preempted": True, "stage": stage["name"]}
  return trainer.train(config, workdir)
