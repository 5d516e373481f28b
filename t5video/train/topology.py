"""TPU slices by the names users rent them by, as compile-only devices on this machine.

``slice_devices('v5litepod-8')`` gives the 8 devices of a v5e slice (from
``jax.experimental.topologies`` and libtpu, no TPU needed) laid out as the real
slice is: chips per host, hosts, and one device per chip (a v4's two TensorCores
as one megacore device, as a v4 VM runs them). Names:

* accelerator types, as ``gcloud compute tpus`` takes them: ``v4-32`` and
  ``v5p-16`` count TensorCores (2 per chip), ``v5litepod-8`` (or ``v5e-8``) and
  ``v6e-8`` count chips;
* topology strings: ``v5e:2x4``, ``v4:2x2x4``, ``v5p:2x2x2``, ``v6e:4x4``;
* several slices joined over the data-centre network: ``2xv5litepod-256``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from t5video.train import chips as chips_lib

# family -> (device kind, TensorCores per chip counted in the accelerator-type name)
FAMILIES = {"v4": ("TPU v4", 2), "v5p": ("TPU v5", 2), "v5e": ("TPU v5 lite", 1), "v6e": ("TPU v6 lite", 1)}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
# chips -> topology of the slice shapes Cloud TPU offers
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# vCPUs of the TPU VMs smaller than a full host: v5e 1-chip / 4-chip VMs, v6e likewise
_SMALL_HOST_CORES = {("v5e", 1): 24, ("v5e", 4): 112, ("v6e", 1): 44, ("v6e", 4): 180}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice (or several joined), described and with its compile-only devices."""
  name: str           # as asked for
  family: str         # v4, v5e, v5p, v6e
  topology: str       # e.g. '2x4', '2x2x4'
  slices: int
  devices: tuple      # compile-only jax devices, all slices
  chip: chips_lib.Chip

  @property
  def chips(self) -> int:
    return len(self.devices)

  @property
  def device_kind(self) -> str:
    return self.devices[0].device_kind

  @property
  def hosts(self) -> int:
    return len({(getattr(d, "slice_index", 0), d.process_index) for d in self.devices})

  @property
  def host_cores(self) -> int | None:
    per_slice = self.chips // self.slices
    return _SMALL_HOST_CORES.get((self.family, per_slice), self.chip.host_cores)


def parse(name: str) -> tuple[str, str, int]:
  """``(family, topology, slices)`` of an accelerator type or topology string.

  Raises:
    ValueError: a name that is neither, naming the forms that are.
  """
  spec = name.strip().lower()
  slices = 1
  m = re.fullmatch(r"(\d+)x(v\w+.*)", spec)
  if m:
    slices, spec = int(m.group(1)), m.group(2)
  m = re.fullmatch(r"(v4|v5e|v5p|v6e|v5litepod|v5lite):(\d+(?:x\d+){1,2})", spec)
  if m:
    family = _ALIASES.get(m.group(1), m.group(1))
    return family, m.group(2), slices
  m = re.fullmatch(r"(v4|v5p|v5e|v6e|v5litepod)-(\d+)", spec)
  if not m:
    raise ValueError(f"unknown TPU {name!r}: give an accelerator type (v4-32, v5p-16, v5litepod-8, "
                     f"v6e-8), a topology (v5e:2x4, v4:2x2x4), or N x either for N slices (2xv5litepod-256)")
  family = _ALIASES.get(m.group(1), m.group(1))
  count = int(m.group(2))
  per_chip = FAMILIES[family][1]
  if count % per_chip:
    raise ValueError(f"{name}: {family} accelerator types count TensorCores, {per_chip} per chip")
  chips = count // per_chip
  table = _TORUS_3D if family in ("v4", "v5p") else _TORUS_2D
  if chips not in table:
    raise ValueError(f"{name}: no {family} slice of {chips} chips; {family} slices have "
                     f"{sorted(table)} chips")
  return family, table[chips], slices


def _quiet_libtpu_start() -> None:
  """libtpu asks the (absent) TPU VM metadata for its type and hosts and prints errors when it
  cannot: name one host and a type (they do not constrain the topologies compiled for). Only
  where no TPU is attached (then t5video has set ``JAX_PLATFORMS=cpu``)."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # Compile-only: no chip is claimed, so several processes may hold libtpu at once (by default
  # the second one to load it stops at libtpu's lock file, /tmp/libtpu_lockfile).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")


def slice_devices(name: str) -> Slice:
  """The compile-only devices of the slice ``name`` (see the module docstring)."""
  family, topology, slices = parse(name)
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    _quiet_libtpu_start()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  dims = [int(d) for d in topology.split("x")]
  chips = math.prod(dims)
  kwargs: dict[str, Any] = {}
  if family in ("v5e", "v6e"):  # hosts of 8 chips (2x4); a smaller slice is one host
    kwargs["chips_per_host_bounds"] = (2, 4, 1) if chips >= 8 else tuple(dims + [1] * (3 - len(dims)))
  else:
    kwargs["chip_config_name"] = "megacore"  # one device per chip, as the VM runs them
  if slices > 1:
    kwargs["num_slices"] = slices
  try:
    desc = topologies.get_topology_desc(topology_name=f"{family}:{topology}", platform="tpu", **kwargs)
  except ImportError as e:
    raise RuntimeError("compiling for a TPU needs libtpu: pip install 't5video[tpu]' (or "
                       "'jax[tpu]' at the pinned jax version)") from e
  devices = tuple(desc.devices)
  kind_chip = chips_lib.chip(devices[0].device_kind)
  if kind_chip is None:
    raise ValueError(f"{name}: no published figures for {devices[0].device_kind!r} in chips.CHIPS")
  return Slice(name=name, family=family, topology=topology, slices=slices, devices=devices, chip=kind_chip)
