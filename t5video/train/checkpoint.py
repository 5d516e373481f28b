"""Orbax checkpoints of a run: train state, Grain iterator and config, kept N + best.

Layout of ``WORKDIR/checkpoints/<step>/``:
  ``state/``   the train state (params, optimizer state, step, counters), saved
               sharded with ``StandardSave`` and restored onto any sharding;
  ``data/``    the Grain iterator's state (one file per process), so a resumed
               run sees exactly the batches it would have seen;
  ``config/``  the run's config as JSON, for the record.

Orbax writes each step into a temporary directory and renames it when complete,
so a process killed mid-write leaves the previous checkpoint as the latest. A
complete checkpoint damaged later (a truncated or missing array file) is passed
over: resuming, ``eval`` and ``caption`` restore the newest one that reads back,
saying which they skipped, and stop with one line naming them when none does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as preservation_lib

from t5video.train import optim as optim_lib
from t5video.train import paths


class DamagedCheckpointError(RuntimeError):
  """No checkpoint of a run reads back."""


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split(" See full TensorStore details")[0].split())
  return f"{type(error).__name__}: {text[:200]}{' ...' if len(text) > 200 else ''}"


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Orbax reads arrays in concurrent coroutines; when one fails, the others are dropped and
  Python prints each one's exception as 'Exception ignored in <coroutine>' (a page of
  TensorStore specs). The failure itself is reported; those echoes are not."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    gc.collect()  # finalise the dropped coroutines while their echoes are silenced
    sys.unraisablehook = previous


def _ignore_closed_loop_echoes() -> None:
  """After a failed read, Orbax's abandoned reads may still try to wake their (closed) event loop
  when collected later: a cascade of 'RuntimeError: Event loop is closed' tracebacks. Drop those
  echoes only; every other unraisable exception reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "t5video_closed_loop_filter", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)

  hook.t5video_closed_loop_filter = True
  sys.unraisablehook = hook


def restore_newest_good(candidates: Sequence[tuple[int, str]], restore: Callable[[int], Any], *,
                        what: str, set_aside: Optional[Callable[[int, str], str]] = None) -> tuple[int, Any]:
  """``(step, restore(step))`` of the newest of ``candidates`` (``(step, directory)``, newest
  first) that reads back; each damaged one skipped with a line on stderr (and, with
  ``set_aside(step, directory) -> new path``, moved out of the way of the steps to come).

  Raises:
    DamagedCheckpointError: none reads back (the line names each and its error).
  """
  damaged = []
  for step, directory in candidates:
    try:
      with _quiet_abandoned_reads():
        result = restore(step)
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises plain Exceptions)
      _ignore_closed_loop_echoes()
      moved = f", moved to {set_aside(step, directory)}" if set_aside else ""
      damaged.append(f"{directory} ({_one_line(e)}{moved})")
      continue
    if damaged:
      print(f"t5video: {what}: skipped damaged checkpoint{'s' * (len(damaged) > 1)} {'; '.join(damaged)}; "
            f"restored {directory}", file=sys.stderr, flush=True)
    return step, result
  raise DamagedCheckpointError(f"{what}: no checkpoint reads back: {'; '.join(damaged) or 'none found'}")


class Checkpointer:
  """A ``CheckpointManager`` with the items ``state``, ``data`` and ``config``.

  Keeps the ``max_to_keep`` latest checkpoints, plus (when ``best_metric`` is
  set) the best one by that metric among those saved with metrics.

  Args:
    directory: where the numbered step directories live.
    max_to_keep: how many of the latest checkpoints to keep (>= 1).
    best_metric: name of a metric passed to :meth:`save` ('' = no best tracking).
    best_mode: 'max' or 'min'.
    async_save: write in a background thread (the step loop continues).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, best_metric: str = "",
               best_mode: str = "max", async_save: bool = True):
    if max_to_keep < 1:
      raise ValueError(f"train.max_to_keep must be >= 1, got {max_to_keep}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"train.best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = paths.normalize(directory)
    self.best_metric = best_metric
    policies: list[Any] = [preservation_lib.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
      policies.append(preservation_lib.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=True, best_fn=best_fn, best_mode=best_mode,
        preservation_policy=preservation_lib.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        # Steps left half-written by a killed process are removed on start.
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        })

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The best checkpoint's step by ``best_metric`` (the latest if none tracked)."""
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, *, data_iter=None, config=None,
           metrics: dict[str, float] | None = None, force: bool = True) -> bool:
    """Starts saving ``state`` (and the iterator / config) at ``step``.

    Returns immediately when saving asynchronously; call :meth:`wait` to block.
    ``metrics`` (e.g. eval results) rank the checkpoint for best-keeping; if
    ``best_metric`` is set but missing from a given ``metrics``, that is an error.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(_config_to_json(config))
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
      if self.best_metric and self.best_metric not in metrics:
        raise KeyError(f"train.best_metric={self.best_metric!r} is not among the eval metrics "
                       f"{sorted(metrics)}")
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             metrics=metrics if metrics else None, force=force)

  def restore(self, step: int, abstract_state, *, data_iter=None):
    """Restores the state onto the shardings of ``abstract_state``'s leaves.

    Args:
      step: which checkpoint.
      abstract_state: a tree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``.
      data_iter: if given, its state is set from the checkpoint (in place).

    Returns:
      The restored state.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    return restored.state

  def restore_latest_good(self, abstract_state, *, data_iter=None) -> tuple[int, Any]:
    """``(step, state)`` of the newest checkpoint that reads back (see :func:`restore_newest_good`);
    a damaged one is renamed ``damaged-<step>`` (kept, but no longer a step the run will write)."""
    steps = sorted(self.all_steps(), reverse=True)

    def set_aside(step, directory):
      target = paths.join(self.directory, f"damaged-{step}")
      if paths.exists(target):
        paths.rmtree(target)
      if paths.is_remote(directory):  # buckets have no rename
        paths.copytree(directory, target)
        paths.rmtree(directory)
      else:
        os.replace(directory, target)
      self.manager.reload()
      return target

    return restore_newest_good([(s, paths.join(self.directory, str(s))) for s in steps],
                               lambda s: self.restore(s, abstract_state, data_iter=data_iter),
                               what=f"resuming from {self.directory}", set_aside=set_aside)

  def wait(self) -> None:
    """Blocks until any asynchronous save has finished."""
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True where JAX's preemption sync point says every host should save now."""
    return self.manager.reached_preemption(int(step))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _config_to_json(config) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=repr))


def _state_dirs(path: str) -> list[tuple[int, str]]:
  """``(step, params-holding PyTree directory)`` below a workdir / manager / step dir, newest
  first (one entry, step -1, for a step or bare PyTree directory)."""
  from etils import epath
  p = epath.Path(paths.normalize(path))
  if not p.is_dir():
    raise FileNotFoundError(f"{path!r} is not a directory (a t5video workdir or checkpoint)")
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  steps = sorted((int(d.name) for d in p.iterdir() if d.name.isdigit() and d.is_dir()), reverse=True)
  if not steps and p.name == "checkpoints":
    raise FileNotFoundError(f"{p}: no finished checkpoint")
  found = [(s, p / str(s)) for s in steps] or [(-1, p)]
  return [(s, str(d / "state") if (d / "state").is_dir() else str(d)) for s, d in found]


def _find_state_dir(path: str) -> str:
  """The newest params-holding PyTree directory below a workdir / manager / step dir."""
  return _state_dirs(path)[0][1]


def restore_params(path: str, abstract_params):
  """The params of the latest checkpoint below ``path``, as host numpy arrays.

  Args:
    path: a t5video workdir, its ``checkpoints/`` dir, one step dir, or a bare
      Orbax PyTree directory (a saved train state's ``params`` subtree is used).
    abstract_params: a tree of ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of
      the unboxed init) giving the structure and dtypes.
  """
  candidates = _state_dirs(path)
  directories = dict(candidates)

  def restore(step):
    directory = directories[step]
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(directory)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_params)
    item = {"params": as_numpy} if isinstance(tree, dict) and "params" in tree else as_numpy
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=item, restore_args=item, partial_restore=True))
    if "params" in item:
      restored = restored["params"]
    return jax.tree_util.tree_map(lambda x, a: np.asarray(x, a.dtype), restored, abstract_params)

  return restore_newest_good(candidates, restore, what=f"restoring {path}")[1]


def load_params_by_regex(params, path: str, regex: str = ".*"):
  """Replaces the leaves of ``params`` whose path matches ``regex`` by saved ones.

  Args:
    params: the (unboxed, possibly sharded) params of the run.
    path: a t5video workdir, its ``checkpoints/`` dir, one step dir, or a bare
      Orbax PyTree directory. A saved train state's ``params`` subtree is used
      when present.
    regex: searched in each '/'-joined param path; unmatched params keep their
      initial values.

  Returns:
    ``params`` with the matched leaves loaded, each on its original sharding.

  Raises:
    ValueError: when nothing matches, or a matched leaf's shape differs.
  """
  directory = _find_state_dir(path)
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(directory)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  prefix: tuple[str, ...] = ()
  if isinstance(tree, dict) and "params" in tree and "opt_state" in tree:
    tree, prefix = tree["params"], ("params",)
  saved = {optim_lib.path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}
  pattern = re.compile(regex)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  wanted = {}
  for p, leaf in leaves:
    name = optim_lib.path_str(p)
    if pattern.search(name) and name in saved:
      if tuple(saved[name].shape) != tuple(leaf.shape):
        raise ValueError(f"init_from {directory}: {name} has shape {tuple(saved[name].shape)} in the "
                         f"checkpoint but {tuple(leaf.shape)} in the model")
      wanted[name] = saved[name]
  if not wanted:
    raise ValueError(f"init_from {directory}: no saved parameter matches regex {regex!r} "
                     f"(saved e.g. {sorted(saved)[:5]})")

  item: dict = {}
  for name in wanted:
    node = item
    parts = prefix + tuple(name.split("/"))
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)
  restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
      item=item, restore_args=item, partial_restore=True))
  flat = {optim_lib.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  out = []
  for p, leaf in leaves:
    name = optim_lib.path_str(p)
    key = "/".join(prefix + (name,))
    if name in wanted:
      value = np.asarray(flat[key]).astype(leaf.dtype)
      out.append(jax.device_put(value, leaf.sharding) if hasattr(leaf, "sharding") else value)
    else:
      out.append(leaf)
  logging.info("init_from %s: loaded %d of %d param arrays (regex %r)", directory, len(wanted),
               len(leaves), regex)
  return jax.tree_util.tree_unflatten(treedef, out)
