"""The files of a run's workdir, named in one place.

A workdir holds everything its run needs and writes::

  config.json           the resolved run config (t5video.config.save_run_config)
  checkpoints/<step>/   Orbax checkpoints: state, data iterator, config
  metrics.jsonl         one record per logged step
  final_metrics.json    written last by a finished run: the marker of "done"
  eval_metrics.json     the latest evaluation's figures
  <stage>/              a stage's own workdir (t5video.train.stages)
"""

from __future__ import annotations

import jax

from t5video.train import distributed
from t5video.train import paths

FINAL_METRICS = "final_metrics.json"  # written by the trainer (or a stage function) when a run ends


def final_metrics_path(workdir: str) -> str:
  return paths.join(workdir, FINAL_METRICS)


def is_done(workdir: str) -> bool:
  """Whether the run in ``workdir`` has finished, as every process agrees.

  Process 0 writes the marker and decides; in a multi-process job its answer is
  broadcast (a collective: every process calls this at the same point), so no
  process acts on a file that another has not written yet or that its own disk
  does not hold.
  """
  done = paths.exists(final_metrics_path(workdir)) if jax.process_index() == 0 else False
  return distributed.agree(done, rule="process_0")
