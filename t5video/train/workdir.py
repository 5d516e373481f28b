"""The files of a run's workdir, named in one place.

A workdir holds everything its run needs and writes::

  config.json           the resolved run config (t5video.config.save_run_config)
  checkpoints/<step>/   Orbax checkpoints: state, data iterator, config
  metrics.jsonl         one record per logged step
  final_metrics.json    written last by a finished run: the marker of "done"
  eval_metrics.json     the latest evaluation's figures
  <stage>/              a stage's own workdir (t5video.train.stages)
  .t5video.lock         held by the process writing the workdir (.t5video.lease on gs://)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time

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


# -----------------------------------------------------------------------------
# One writer at a time
# -----------------------------------------------------------------------------

LOCK = ".t5video.lock"          # a local workdir: an flock on it (the kernel drops it with its holder)
LEASE = ".t5video.lease"        # a bucket workdir: a lease file its holder renews
LEASE_RENEW_S = 30.0
LEASE_STALE_S = 120.0           # a lease not renewed for this long is a dead holder's


class WorkdirBusyError(RuntimeError):
  """Another process is writing the workdir (training or evaluating it)."""


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
          "command": " ".join(sys.argv[:2]) or "python"}


def _busy(workdir: str, what: str, holder: dict) -> WorkdirBusyError:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
  return WorkdirBusyError(
      f"{workdir} is being written by {holder.get('command', 'another t5video process')} (pid "
      f"{holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}): {what} would write the "
      "same files; wait for it to end (or stop it), or use another --workdir")


@contextlib.contextmanager
def writer_lock(workdir: str, what: str):
  """Holds ``workdir`` for one writer while ``what`` (e.g. 'training') runs.

  A second writer is refused with :class:`WorkdirBusyError` naming the holder.
  A local workdir is locked with ``flock`` (released by the kernel when its
  holder dies, however it dies); a ``gs://`` workdir with a lease file renewed
  every 30 s (a lease 2 minutes old is a dead holder's and is taken over). In a
  multi-process job process 0 holds it for all.
  """
  if jax.process_index() != 0:
    yield
    return
  paths.makedirs(workdir)
  if paths.is_remote(workdir):
    with _lease(workdir, what):
      yield
    return
  path = os.path.join(workdir, LOCK)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      try:
        holder = json.loads(f.read() or "{}")
      except json.JSONDecodeError:
        holder = {}
      raise _busy(workdir, what, holder) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_holder()))
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _lease(workdir: str, what: str):
  path = paths.join(workdir, LEASE)
  if paths.exists(path):
    try:
      holder = json.loads(paths.read_text(path))
    except (json.JSONDecodeError, OSError):
      holder = {}
    if time.time() - float(holder.get("renewed", 0)) < LEASE_STALE_S:
      raise _busy(workdir, what, holder)
  mine = _holder()
  stop = threading.Event()

  def renew():
    while True:
      paths.write_text(path, json.dumps({**mine, "renewed": time.time()}))
      if stop.wait(LEASE_RENEW_S):
        return

  renew_thread = threading.Thread(target=renew, daemon=True, name="t5video-lease")
  paths.write_text(path, json.dumps({**mine, "renewed": time.time()}))
  renew_thread.start()
  try:
    yield
  finally:
    stop.set()
    renew_thread.join()
    paths.remove(path)
