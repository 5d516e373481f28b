"""Will a compiled program fit? XLA's memory analysis against the memory free here.

Before the first step the trainer compiles the train step from shapes alone
(nothing allocated yet) and asks XLA how much memory one device needs for it:
arguments (the train state and the batch) + outputs - donated buffers +
temporaries (activations, gradients). On an accelerator that is compared with
the device's free memory; on CPU, where every local device lives in host RAM,
the local devices' needs are added up and compared with ``MemAvailable``.

A program that cannot fit stops with one line: how much it needs, how much
there is, and which config keys to lower. ``T5VIDEO_SKIP_MEMORY_CHECK=1``
skips the check (XLA's figure is an estimate).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np

GiB = float(1 << 30)

# Config keys that shrink a step's memory, with the direction to move them.
KNOBS = (
    ("train.batch_size", "lower"),
    ("train.micro_batches", "raise"),
    ("data.num_frames", "lower"),
    ("data.size", "lower"),
    ("model.remat", "set True"),
    ("eval.batch_size", "lower"),
)


class DoesNotFitError(MemoryError):
  """A compiled program needs more memory than this machine has free."""


@dataclasses.dataclass(frozen=True)
class Need:
  """Bytes one device needs for a compiled program (XLA's estimate)."""
  arguments: int
  outputs: int
  aliased: int
  temporaries: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries


def compiled_need(compiled) -> Need | None:
  """XLA's per-device memory estimate of a compiled program (None if unavailable)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if stats is None:
    return None
  return Need(arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
              aliased=int(stats.alias_size_in_bytes), temporaries=int(stats.temp_size_in_bytes))


def host_available_bytes() -> int | None:
  """``MemAvailable`` of /proc/meminfo (None where there is no such file)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def available_bytes(devices: Sequence[Any] | None = None) -> tuple[int | None, int]:
  """(bytes free for one program's share, how many devices share that pool).

  Accelerators: the first local device's ``bytes_limit - bytes_in_use``, for
  one device. CPU: host RAM, shared by all local devices.
  """
  devices = list(devices) if devices is not None else jax.local_devices()
  stats = None
  try:
    stats = devices[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 1
  return host_available_bytes(), len(devices)


def _knobs(config) -> str:
  parts = []
  for key, how in KNOBS:
    node = config
    try:
      for k in key.split("."):
        node = node[k]
    except (KeyError, AttributeError, TypeError):
      continue
    parts.append(f"{how} {key} (now {node})")
  return ", ".join(parts)


def check_fits(compiled, config, *, what: str = "the training step", host_bytes: int = 0,
               host_what: str = "the input pipeline's buffers") -> Need | None:
  """Raises :class:`DoesNotFitError` when ``compiled`` cannot fit in free memory.

  ``host_bytes`` is what the process holds in host RAM besides XLA's buffers
  (e.g. :func:`t5video.data.pipeline.loader_buffer_bytes`): on CPU it shares
  host RAM with the devices' buffers; beside an accelerator it is checked
  against host RAM on its own.

  Returns XLA's per-device estimate (None when the backend gives none or the
  check is skipped).
  """
  if os.environ.get("T5VIDEO_SKIP_MEMORY_CHECK", "") not in ("", "0"):
    return None
  need = compiled_need(compiled)
  free, sharing = available_bytes()
  advice = f"{_knobs(config)} (T5VIDEO_SKIP_MEMORY_CHECK=1 trusts the config anyway)"
  if jax.local_devices()[0].platform == "cpu":  # the devices' buffers and the host's share RAM
    device_bytes = need.total * sharing if need is not None else 0
    if free is not None and device_bytes + host_bytes > free:
      parts = [f"{host_what} {host_bytes / GiB:.2f}"] if host_bytes else []
      if need is not None:
        parts.insert(0, f"{sharing} local device{'s' * (sharing > 1)} x {need.total / GiB:.2f} GiB in host RAM: state and "
                        f"inputs {need.arguments / GiB:.2f}, temporaries {need.temporaries / GiB:.2f}")
      raise DoesNotFitError(f"{what} needs {(device_bytes + host_bytes) / GiB:.1f} GiB "
                            f"({'; '.join(parts)}) but {free / GiB:.1f} GiB are free: {advice}")
    return need
  if need is not None and free is not None and need.total > free:
    raise DoesNotFitError(
        f"{what} needs {need.total / GiB:.1f} GiB per device (state and inputs "
        f"{need.arguments / GiB:.2f}, temporaries {need.temporaries / GiB:.2f}) but "
        f"{free / GiB:.1f} GiB are free: {advice}")
  host_free = host_available_bytes()
  if host_bytes and host_free is not None and host_bytes > host_free:
    raise DoesNotFitError(f"{what}: {host_what} need {host_bytes / GiB:.1f} GiB of host RAM but "
                          f"{host_free / GiB:.1f} GiB are free: {advice}")
  return need


class FitChecked:
  """A jitted function whose program is checked against free memory before it first runs.

  For each new input signature (shapes, dtypes, shardings, static arguments)
  the function is lowered and compiled ahead of time, :func:`check_fits` is
  asked about the compiled program, and that program serves every later call
  with the same signature. Evaluation and ``t5video caption`` wrap their
  jitted encoders and decoders in it, so a batch too large for the machine
  stops with one line before anything is allocated.
  """

  def __init__(self, jitted, config, *, what: str, static_argnums: int | Sequence[int] = ()):
    self.jitted, self.config, self.what = jitted, config, what
    self.static_argnums = ((static_argnums,) if isinstance(static_argnums, int)
                           else tuple(static_argnums))
    self._compiled: dict = {}

  def _signature(self, args) -> tuple:
    dynamic = [a for i, a in enumerate(args) if i not in self.static_argnums]
    leaves, treedef = jax.tree.flatten(dynamic)
    return (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__)),
                            getattr(x, "sharding", None)) for x in leaves),
            tuple(args[i] for i in self.static_argnums))

  def __call__(self, *args):
    key = self._signature(args)
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self.jitted.lower(*args).compile()
      check_fits(compiled, self.config, what=self.what)
      self._compiled[key] = compiled
    return compiled(*[a for i, a in enumerate(args) if i not in self.static_argnums])
