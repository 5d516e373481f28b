"""The trainer: one readable loop that every recipe runs on.

Read top to bottom: config → mesh → model and optimizer → shard → step (:mod:`t5video.train.step`) →
checkpoint → eval → loop. A recipe supplies a :class:`~t5video.train.task.Task`;
``train(config, workdir)`` does the rest:

* the mesh ``('data', 'fsdp', 'tensor')`` comes from ``config.mesh.shape``;
  logical axes map onto it with ``sharding.DEFAULT_RULES`` overridden by
  ``config.sharding.rules``;
* the state is created already sharded: ``jax.eval_shape`` → logical specs →
  ``NamedSharding`` → ``jax.jit(init, out_shardings=...)``;
* one jitted ``train_step`` with explicit in/out shardings and the state
  donated; micro-batches accumulate gradients in a ``lax.scan``; a non-finite
  loss or gradient skips the update inside the step and is counted;
* Orbax checkpoints hold state, data iterator and config; a run resumes from
  its workdir (resume > ``init_from`` > scratch); SIGTERM saves and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from t5video import config as config_lib
from t5video.data import pipeline as pipeline_lib
from t5video.models import layers
from t5video.train import checkpoint as checkpoint_lib
from t5video.train import distributed
from t5video.train import logging as log_lib
from t5video.train import memory as memory_lib
from t5video.train import optim as optim_lib
from t5video.train import paths
from t5video.train import sharding as sharding_lib
from t5video.train import step as step_lib
from t5video.train import task as task_lib
from t5video.train import workdir as workdir_lib

# Training compute dtypes (float16 has no loss scaling here).
DTYPES = {k: layers.DTYPES[k] for k in ("float32", "bfloat16")}


class NonFiniteLossError(RuntimeError):
  """Raised when ``train.max_nonfinite`` steps in a row had a non-finite loss/gradient."""


# =============================================================================
# Config
# =============================================================================

def default_config() -> ml_collections.ConfigDict:
  """The engine's keys with their defaults; a recipe adds ``model``, ``data``, ``eval``.

  Every key listed here is type-checked by :func:`validate_config`; unknown
  keys in these sections are errors (a misspelt key would otherwise be ignored).
  """
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
  c.sharding = ml_collections.ConfigDict({"rules": ()})
  c.train = ml_collections.ConfigDict({
      "num_steps": 1000,
      "batch_size": 8,
      "micro_batches": 1,
      "log_every": 50,
      "eval_every": 0,
      "checkpoint_every": 500,
      "max_to_keep": 3,
      "best_metric": "",
      "best_mode": "max",
      "max_nonfinite": 10,
      "dtype": "float32",
      "progress": True,
  })
  c.optim = ml_collections.ConfigDict({
      "name": "adamw",
      "learning_rate": 1e-3,
      "schedule": "cosine",
      "warmup_steps": 0,
      "weight_decay": 0.0,
      "clip_norm": 1.0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "param_groups": (),
      "freeze": "",
      "trainable": "",
  })
  c.init_from = ml_collections.ConfigDict({"path": "", "regex": ".*"})
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the engine's part of ``config`` before anything heavy starts.

  Raises:
    ValueError: a missing or unknown key, a wrong type or an out-of-range value;
      the message names the key (``train.batch_size`` ...).
  """
  defaults = default_config()
  for top in ("task", "seed"):
    if top not in config:
      raise ValueError(f"config has no {top!r} key")
  if not isinstance(config.task, str) or not config.task:
    raise ValueError(f"config.task must name a task ({sorted(task_lib.TASKS)} or 'module:Class'), "
                     f"got {config.task!r}")
  if not config_lib.type_ok(config.seed, 0):
    raise ValueError(f"config.seed must be an int, got {config.seed!r}")
  for section in ("mesh", "sharding", "train", "optim", "init_from"):
    if section not in config:
      raise ValueError(f"config has no {section!r} section (start from trainer.default_config())")
    config_lib.check_keys(config[section], defaults[section], prefix=section)
  t = config.train
  for key in ("num_steps", "batch_size", "micro_batches", "log_every", "max_to_keep", "max_nonfinite"):
    if t[key] < 1:
      raise ValueError(f"train.{key} must be >= 1, got {t[key]}")
  for key in ("eval_every", "checkpoint_every"):
    if t[key] < 0:
      raise ValueError(f"train.{key} must be >= 0 (0 = only at the end), got {t[key]}")
  if t.batch_size % t.micro_batches:
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by "
                     f"train.micro_batches={t.micro_batches}")
  if t.best_mode not in ("max", "min"):
    raise ValueError(f"train.best_mode must be 'max' or 'min', got {t.best_mode!r}")
  if t.dtype not in DTYPES:
    raise ValueError(f"train.dtype must be one of {sorted(DTYPES)}, got {t.dtype!r}")
  shape = tuple(config.mesh.shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(
      (not isinstance(s, int)) or s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh.shape must be 3 positive ints (data, fsdp, tensor) with at most one -1, "
                     f"got {shape}")
  sharding_lib.merge_rules(config.sharding.rules)
  optim_lib.OptimConfig.from_config(config.optim).validate()
  if config.init_from.path:
    try:
      re.compile(config.init_from.regex)
    except re.error as e:
      raise ValueError(f"init_from.regex: invalid regex {config.init_from.regex!r}: {e}") from e


# =============================================================================
# Engine: mesh, model, optimizer, sharded state and the jitted step
# =============================================================================

@dataclasses.dataclass
class Engine:
  """Everything the loop needs, built from a validated config.

  Attributes:
    config: the run's config.
    task: the recipe's Task instance.
    mesh: the device mesh.
    rules: logical -> mesh axis rules in force.
    tx, labels, schedule: the optimizer, per-param labels ('frozen' /
      'group_*') and the learning-rate schedule.
    abstract_params_boxed: ``eval_shape`` of ``task.init_params`` (boxes kept).
    state_shardings: NamedShardings of the train state.
    abstract_state: ``ShapeDtypeStruct`` tree of the state, shardings attached.
    batch_shardings: per batch key.
    abstract_batch: ``ShapeDtypeStruct`` of every key of the global batch
      (``task.example_shapes()`` with ``train.batch_size`` rows), shardings attached.
  """
  config: ml_collections.ConfigDict
  task: task_lib.Task
  mesh: jax.sharding.Mesh
  rules: tuple
  tx: optax.GradientTransformation
  labels: Any
  schedule: Callable
  abstract_params_boxed: Any
  state_shardings: dict
  abstract_state: dict
  batch_shardings: dict[str, NamedSharding]
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  _step_fn: Any = None
  _compiled: Any = None

  @classmethod
  def create(cls, config, *, task: task_lib.Task | None = None, mesh=None) -> "Engine":
    """Builds mesh, task, optimizer and shardings (no device memory used yet)."""
    if task is None:
      task = task_lib.get_task(config.task)(config)
    if mesh is None:
      mesh = sharding_lib.make_mesh(config.mesh.shape)
    rules = sharding_lib.merge_rules(config.sharding.rules)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    t = config.train
    if t.batch_size % (dp * t.micro_batches):
      raise ValueError(f"train.batch_size={t.batch_size} must be divisible by data*fsdp={dp} times "
                       f"train.micro_batches={t.micro_batches}")
    if t.batch_size % jax.process_count():
      raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the "
                       f"{jax.process_count()} processes")
    rng = jax.random.PRNGKey(config.seed)  # a host value, outside the mesh (which may be compile-only)
    with _sharding_context(mesh, rules):
      boxed = jax.eval_shape(task.init_params, rng)
      params_abstract = _strip_boxes(boxed)
      param_shardings = sharding_lib.param_shardings(boxed, mesh, rules)
      ocfg = dataclasses.replace(optim_lib.OptimConfig.from_config(config.optim),
                                 trainable=task.trainable())
      tx, labels, schedule = optim_lib.make_optimizer(params_abstract, ocfg, t.num_steps)
      opt_abstract = jax.eval_shape(tx.init, params_abstract)
      opt_shardings = sharding_lib.shardings_like_params(
          opt_abstract, params_abstract, param_shardings, mesh)
      rep = sharding_lib.replicated(mesh)
      scalars = {"step": jnp.int32, "nonfinite_streak": jnp.int32, "nonfinite_total": jnp.int32,
                 "stopped": jnp.bool_}
      state_shardings = {"params": param_shardings, "opt_state": opt_shardings,
                         **{k: rep for k in scalars}}
      abstract = {"params": params_abstract, "opt_state": opt_abstract,
                  **{k: jax.ShapeDtypeStruct((), d) for k, d in scalars.items()}}
      abstract_state = jax.tree_util.tree_map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings)
      spec = task.batch_spec()
      for key, axes in spec.items():
        if not axes or axes[0] != "act_batch":
          raise ValueError(f"{type(task).__name__}.batch_spec()[{key!r}] must start with 'act_batch', "
                           f"got {axes!r}")
      batch_shardings = sharding_lib.batch_shardings(spec, mesh, rules)
      examples = task.example_shapes()
      if set(examples) != set(spec):
        raise ValueError(f"{type(task).__name__}.example_shapes() keys {sorted(examples)} differ from "
                         f"batch_spec() keys {sorted(spec)}")
      abstract_batch = {
          k: jax.ShapeDtypeStruct((t.batch_size,) + tuple(v.shape), v.dtype, sharding=batch_shardings[k])
          for k, v in examples.items()}
    return cls(config=config, task=task, mesh=mesh, rules=rules, tx=tx, labels=labels,
               schedule=schedule, abstract_params_boxed=boxed, state_shardings=state_shardings,
               abstract_state=abstract_state, batch_shardings=batch_shardings,
               abstract_batch=abstract_batch)

  def context(self):
    """The mesh and the logical-axis rules, active while tracing and running."""
    return _sharding_context(self.mesh, self.rules)

  # -- state -------------------------------------------------------------------

  def init_params(self):
    """Fresh params, created directly on their shardings."""
    with self.context():
      init = jax.jit(lambda r: nn.unbox(self.task.init_params(r)),
                     out_shardings=self.state_shardings["params"])
      return init(jax.random.PRNGKey(self.config.seed))

  def place_params(self, params):
    """Moves (possibly host or differently sharded) params onto the run's shardings."""
    with self.context():
      return jax.jit(lambda p: p, out_shardings=self.state_shardings["params"])(params)

  def state_from_params(self, params) -> dict:
    """A step-0 train state around ``params`` (optimizer state built sharded)."""
    with self.context():
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
      rep = sharding_lib.replicated(self.mesh)
      # Separate buffers: the step donates each leaf of the state.
      zero = lambda dtype: jax.device_put(np.zeros((), dtype), rep)  # noqa: E731
      return {"params": params, "opt_state": opt_state, "step": zero(np.int32),
              "nonfinite_streak": zero(np.int32), "nonfinite_total": zero(np.int32),
              "stopped": zero(np.bool_)}

  def init_state(self) -> dict:
    return self.state_from_params(self.init_params())

  # -- data --------------------------------------------------------------------

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's rows (they must match ``abstract_batch``)."""
    spec_keys = set(self.batch_shardings)
    if set(local) != spec_keys:
      raise ValueError(f"batch keys {sorted(local)} differ from batch_spec keys {sorted(spec_keys)}")
    per_process = self.config.train.batch_size // jax.process_count()
    out = {}
    for key, value in local.items():
      value = np.asarray(value)
      want = self.abstract_batch[key]
      if value.shape != (per_process,) + want.shape[1:] or value.dtype != want.dtype:
        raise ValueError(
            f"batch[{key!r}] is {value.dtype}{list(value.shape)} on this process; "
            f"{type(self.task).__name__}.example_shapes() and train.batch_size / process_count say "
            f"{np.dtype(want.dtype)}{[per_process, *want.shape[1:]]}")
      out[key] = jax.make_array_from_process_local_data(self.batch_shardings[key], value, want.shape)
    return out

  def input_buffer_bytes(self) -> int:
    """Host RAM this process's input pipeline holds at most (read-ahead and buffered batches)."""
    example = sum(int(np.prod(v.shape[1:])) * np.dtype(v.dtype).itemsize
                  for v in self.abstract_batch.values())
    data = self.config.get("data") or {}
    return pipeline_lib.loader_buffer_bytes(
        example, self.config.train.batch_size // jax.process_count(),
        worker_count=int(data.get("worker_count", 0) or 0))

  # -- the step ----------------------------------------------------------------

  def _build_step(self):
    config = self.config
    train_step = step_lib.make_train_step(
        self.task.loss_fn, self.tx, self.labels, self.schedule,
        micro_batches=config.train.micro_batches, compute_dtype=DTYPES[config.train.dtype],
        max_nonfinite=config.train.max_nonfinite, seed=config.seed + 1,
        param_shardings=self.state_shardings["params"],
        micro_shardings={k: NamedSharding(self.mesh, PartitionSpec(None, *s.spec))
                         for k, s in self.batch_shardings.items()})
    rep = sharding_lib.replicated(self.mesh)
    return jax.jit(train_step,
                   in_shardings=(self.state_shardings, self.batch_shardings),
                   out_shardings=(self.state_shardings, rep),
                   donate_argnums=(0,))

  @property
  def step_fn(self):
    """The jitted ``train_step(state, batch) -> (state, metrics)`` (state donated)."""
    if self._step_fn is None:
      self._step_fn = self._build_step()
    return self._step_fn

  def lower(self):
    """The step lowered from shapes alone (``abstract_state``, ``abstract_batch``)."""
    with self.context():
      return self.step_fn.lower(self.abstract_state, self.abstract_batch)

  def compile(self):
    """AOT-compiles the step from shapes alone; returns the executable (kept for ``train_step``)."""
    with self.context():
      self._compiled = self.lower().compile()
    return self._compiled

  def train_step(self, state, batch):
    """Runs one step (compiled on first use)."""
    if self._compiled is None:
      self.compile()
    with self.context():
      return self._compiled(state, batch)


def _strip_boxes(tree):
  """Removes ``nn.Partitioned`` boxes without applying their constraints (for abstract trees)."""
  return jax.tree_util.tree_map(
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


@contextlib.contextmanager
def _sharding_context(mesh, rules):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# =============================================================================
# Checkpoint, eval and the loop
# =============================================================================

class _Preemption:
  """Turns SIGTERM into a flag the loop polls (installed from the main thread only)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("signal %d received: checkpointing at the current step and exiting", signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _preempted(preemption: _Preemption, ckpt: checkpoint_lib.Checkpointer, step: int, *,
               check_all: bool) -> bool:
  """Whether to save and stop now; every process must agree (the save is collective).

  One process: its own SIGTERM flag. Several: JAX's preemption sync point (set
  up by ``jax.distributed.initialize`` on TPU) every step, and on ``check_all``
  steps also whether any process saw SIGTERM (a cheap host all-gather).
  """
  if jax.process_count() == 1:
    return preemption.requested
  if ckpt.reached_preemption(step):
    return True
  return check_all and distributed.agree(preemption.requested, rule="any")


def _fetch(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config.task`` in ``workdir`` (resuming if it holds a checkpoint).

  Returns:
    ``{'step', 'loss', 'preempted', 'nonfinite_total', 'eval': {...}}`` of the
    last step run, also written to ``<workdir>/final_metrics.json`` when the
    run ends (not when preempted, nor when there was nothing left to run).

  Raises:
    ValueError: an invalid config (before anything heavy).
    NonFiniteLossError: ``train.max_nonfinite`` non-finite steps in a row; the
      checkpoints already written are kept and no new one is written.
  """
  # ---- config and processes --------------------------------------------------
  validate_config(config)
  distributed.maybe_initialize()
  workdir = paths.normalize(workdir)  # local: absolute; gs://...: as given
  paths.makedirs(workdir)
  t = config.train
  is_main = jax.process_index() == 0

  # ---- mesh, model, optimizer, shardings -------------------------------------
  engine = Engine.create(config)
  # Recipes that keep run-specific files (e.g. a ViFi-CLIP stage, caches) read it.
  engine.task.workdir = workdir
  logging.info("mesh %s over %d devices (%s)", dict(engine.mesh.shape), jax.device_count(),
               jax.devices()[0].device_kind)
  total, trainable = optim_lib.count_params(engine.abstract_state["params"], engine.labels)
  msg = (f"parameters: {total:,} total, {trainable:,} trainable "
         f"({100.0 * trainable / max(total, 1):.2f}%)")
  logging.info(msg)
  if is_main:
    print(msg, flush=True)

  # ---- memory: compile the step from shapes, stop early if it cannot fit ----
  # Before the loader exists: nothing batch-sized is allocated, on host or device, until the step
  # and the input pipeline's buffers are known to fit.
  compiled = engine.compile()
  need = memory_lib.check_fits(compiled, config, what="the training step",
                               host_bytes=engine.input_buffer_bytes())
  if need is not None:
    logging.info("training step: %.2f GiB per device (XLA's estimate)", need.total / memory_lib.GiB)

  # ---- data ------------------------------------------------------------------
  loader = engine.task.train_loader(
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
      batch_size=t.batch_size // jax.process_count())
  data_iter = loader if hasattr(loader, "get_state") else iter(loader)
  if not hasattr(data_iter, "get_state"):
    raise TypeError(f"{type(engine.task).__name__}.train_loader must return a Grain iterator with "
                    f"get_state/set_state, got {type(data_iter).__name__}")

  # ---- state: resume > init_from > scratch ----------------------------------
  ckpt = checkpoint_lib.Checkpointer(
      paths.join(workdir, "checkpoints"), max_to_keep=t.max_to_keep,
      best_metric=t.best_metric, best_mode=t.best_mode)
  latest = ckpt.latest_step()
  if latest is not None:
    with engine.context():  # the newest checkpoint that reads back (a damaged one is skipped)
      latest, state = ckpt.restore_latest_good(engine.abstract_state, data_iter=data_iter)
    logging.info("resuming from %s/checkpoints/%d", workdir, latest)
    if is_main:
      print(f"resuming from step {latest}", flush=True)
  elif engine.task.has_pretrained(config.init_from):
    logging.info("initialising from pretrained weights (init_from.path %r, regex %r)",
                 config.init_from.path, config.init_from.regex)
    # Outside the mesh context: converters trace the source model (eval_shape) without it.
    params = engine.task.load_pretrained(engine.init_params(), config.init_from)
    state = engine.state_from_params(engine.place_params(params))
  else:
    state = engine.init_state()
  step = int(jax.device_get(state["step"]))

  # ---- metrics ---------------------------------------------------------------
  logger = log_lib.MetricsLogger(workdir, num_steps=t.num_steps, initial_step=step,
                                 enabled=is_main, progress=t.progress)
  result: dict[str, Any] = {"step": step, "loss": None, "preempted": False, "eval": {}}
  eval_metrics: dict[str, float] = {}

  def save(at_step, metrics=None):
    ckpt.save(at_step, state, data_iter=data_iter, config=config, metrics=metrics)

  def check_finite(host):
    if bool(host["stopped"]):
      raise NonFiniteLossError(
          f"{t.max_nonfinite} steps in a row had a non-finite loss or gradient (last at step "
          f"{int(host['step'])}; {int(host['nonfinite_total'])} in total); updates were skipped and "
          f"no checkpoint was written after it: the last good checkpoint is "
          f"{workdir}/checkpoints/{ckpt.latest_step()}")

  final_path = workdir_lib.final_metrics_path(workdir)
  if step >= t.num_steps and not workdir_lib.is_done(workdir):
    # Stopped after its last checkpoint and before its marker: evaluate again so the run ends.
    result["eval"] = dict(engine.task.evaluate(state["params"], step=step, workdir=workdir) or {})

  # ---- the loop --------------------------------------------------------------
  try:
    with _Preemption() as preemption:
      throughput = None
      window: dict[str, Any] | None = None
      window_n = 0
      pending_save = False
      while step < t.num_steps:
        # Dispatch is asynchronous: while the host gets the next batch, the device may still be
        # running queued steps. It idles on input only if the last dispatched step is done.
        queued = state["step"]
        idle_before = queued.is_ready()
        waited = time.perf_counter()
        batch = engine.global_batch(next(data_iter))
        waited = time.perf_counter() - waited
        if throughput is not None:
          throughput.add_input_time(waited, idle_before or queued.is_ready())
        else:
          per_example = engine.task.flops_per_example()
          flops = (per_example * t.batch_size if per_example
                   else (log_lib.compiled_flops(compiled) or 0) * jax.device_count())
          throughput = log_lib.Throughput(
              global_batch=t.batch_size, flops_per_step=flops or None,
              num_devices=jax.device_count(), peak_per_device=log_lib.peak_flops())
          throughput.reset(step)
        state, metrics = engine.train_step(state, batch)
        step += 1
        # Sum on device (no host sync) until the next log line.
        window = metrics if window is None else jax.tree_util.tree_map(jnp.add, window, metrics)
        window_n += 1

        last = step == t.num_steps
        if step % t.log_every == 0 or last:
          host = _fetch({"m": window, "stopped": state["stopped"], "step": state["step"],
                         "nonfinite_total": state["nonfinite_total"]})
          record = {k: (float(v) / window_n if k not in ("skipped",) else int(v))
                    for k, v in host["m"].items()}
          record["nonfinite_total"] = int(host["nonfinite_total"])
          record.update(throughput.measure(step))
          logger.write(step, record)
          logger.progress(step, record["loss"], record.get("steps_per_sec"))
          result.update(step=step, loss=record["loss"], nonfinite_total=record["nonfinite_total"])
          window, window_n = None, 0
          check_finite(host)

        ran_eval = False
        if (t.eval_every and step % t.eval_every == 0) or last:
          eval_metrics = engine.task.evaluate(state["params"], step=step, workdir=workdir) or {}
          ran_eval = bool(eval_metrics)
          if ran_eval:
            logger.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
            result["eval"] = dict(eval_metrics)
          throughput.reset(step)

        preempted = _preempted(preemption, ckpt, step, check_all=step % t.log_every == 0)
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or last:
          pending_save = True
        if ran_eval and t.best_metric:
          pending_save = True  # so that the best checkpoint can be kept
        if pending_save or preempted:
          host = _fetch({"stopped": state["stopped"], "step": state["step"],
                         "nonfinite_total": state["nonfinite_total"],
                         "nonfinite_streak": state["nonfinite_streak"]})
          check_finite(host)
          if int(host["nonfinite_streak"]) and not (preempted or last):
            # Every regular checkpoint ends on a finite step; retry after the next step.
            logging.warning("step %d was non-finite: checkpoint deferred", step)
          else:
            save(step, eval_metrics if ran_eval else None)
            pending_save = False
        if preempted:
          ckpt.wait()
          logging.warning("preempted: checkpoint written at step %d; exiting", step)
          if is_main:
            print(f"preempted: checkpoint written at step {step}", flush=True)
          result.update(step=step, preempted=True)
          break
    if throughput is not None and throughput.total_time > 0:
      result["input_wait_fraction"] = throughput.total_idle / throughput.total_time
      result["input_host_fraction"] = throughput.total_host / throughput.total_time
      if is_main:
        print(f"input pipeline: the device waited for data at most "
              f"{100 * result['input_wait_fraction']:.1f}% of the training time "
              f"({throughput.total_idle:.1f} s of {throughput.total_time:.1f} s); the host spent "
              f"{100 * result['input_host_fraction']:.1f}% getting batches, overlapped with compute "
              f"where the device had steps queued", flush=True)
  finally:
    ckpt.close()
    logger.close()
    del data_iter, loader
    gc.collect()
  if is_main and not result["preempted"] and (result["loss"] is not None or result["eval"]):
    # The marker of a finished run (a stage of a larger recipe checks it before training again).
    paths.write_text(final_path, json.dumps(result, indent=2, default=float))
  return result
