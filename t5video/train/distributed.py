"""Multi-host start-up: ``jax.distributed.initialize()`` when the environment asks.

A single process (a laptop, one GPU box, a single-host TPU VM) needs nothing.
A multi-host slice needs every process to join before JAX touches a device.
The decision, first match wins:

1. ``T5VIDEO_DISTRIBUTED=0`` / ``1``: force off / on (auto-detected settings).
2. ``JAX_COORDINATOR_ADDRESS`` (or ``COORDINATOR_ADDRESS``) with
   ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (or ``NUM_PROCESSES`` /
   ``PROCESS_ID``): explicit coordinator, e.g. GPU clusters.
3. A multi-worker Cloud TPU VM (``TPU_WORKER_HOSTNAMES`` lists more than one
   host, or ``MEGASCALE_COORDINATOR_ADDRESS`` is set): JAX auto-detects.
4. SLURM with more than one task (``SLURM_NTASKS`` > 1): JAX auto-detects.

Every device command of the CLI (``train``, ``eval``, ``caption``, ...) calls
:func:`maybe_initialize` first, before anything can touch a device. On CPU
hosts the processes talk through JAX's gloo collectives (selected here unless
``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise), which is how several
processes on one machine form one job. ``T5VIDEO_HEARTBEAT_TIMEOUT_S``
(default 100, JAX's own) bounds how long the survivors wait once a process
has died before they stop with an error.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

import jax
from absl import logging
from jax.experimental import multihost_utils

_initialized = False


def _first(env: Mapping[str, str], *names: str) -> str | None:
  for n in names:
    if env.get(n):
      return env[n]
  return None


def distributed_settings(env: Mapping[str, str] | None = None) -> dict | None:
  """What ``jax.distributed.initialize`` should be called with, or None for no call.

  Returns ``{}`` for auto-detection, or explicit keyword arguments.

  Raises:
    ValueError: an explicit coordinator without process count / id, or bad ints.
  """
  env = os.environ if env is None else env
  force = env.get("T5VIDEO_DISTRIBUTED", "").strip()
  if force == "0":
    return None
  coordinator = _first(env, "JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
  if coordinator:
    num = _first(env, "JAX_NUM_PROCESSES", "NUM_PROCESSES")
    pid = _first(env, "JAX_PROCESS_ID", "PROCESS_ID")
    if num is None or pid is None:
      raise ValueError(
          f"coordinator address {coordinator!r} is set but JAX_NUM_PROCESSES / JAX_PROCESS_ID are not")
    try:
      return {"coordinator_address": coordinator, "num_processes": int(num), "process_id": int(pid)}
    except ValueError as e:
      raise ValueError(f"JAX_NUM_PROCESSES={num!r} / JAX_PROCESS_ID={pid!r} must be integers") from e
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return {}
  try:
    if int(env.get("SLURM_NTASKS", "1")) > 1:
      return {}
  except ValueError:
    pass
  if force == "1":
    return {}
  return None


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
  """Calls ``jax.distributed.initialize`` once if the environment is multi-host.

  Must run before any other JAX call that touches devices. Returns whether
  the distributed runtime is (now) initialised by this module.
  """
  global _initialized
  if _initialized:
    return True
  env = os.environ if env is None else env
  settings = distributed_settings(env)
  if settings is None:
    return False
  if not env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    # Only the CPU client reads it: several CPU processes then share collectives over TCP.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = env.get("T5VIDEO_HEARTBEAT_TIMEOUT_S", "").strip()
  if timeout:
    try:
      settings["heartbeat_timeout_seconds"] = int(timeout)
    except ValueError as e:
      raise ValueError(f"T5VIDEO_HEARTBEAT_TIMEOUT_S={timeout!r} must be an integer") from e
  logging.info("jax.distributed.initialize(%s)", settings or "auto-detect")
  jax.distributed.initialize(**settings)
  _initialized = True
  logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def agree(flag: bool, *, rule: str) -> bool:
  """One answer for every process of the job: ``rule`` 'any' (true where any process's
  ``flag`` is) or 'process_0' (process 0's ``flag``). One process: ``flag`` itself.

  Every process must call it at the same point (it is a collective).
  """
  if rule not in ("any", "process_0"):
    raise ValueError(f"rule must be 'any' or 'process_0', got {rule!r}")
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(int(bool(flag)), np.int32))  # [processes]
  return bool(np.any(flags)) if rule == "any" else bool(flags[0])
