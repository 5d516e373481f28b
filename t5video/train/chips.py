"""What each accelerator chip can do: the vendors' published figures, in one table.

Used for MFU (:mod:`t5video.train.logging`: model FLOPs over step time and the
chip's peak) and by ``t5video compile`` (:mod:`t5video.train.aot`: memory per
chip against HBM, roofline step time, collective time, the TPU VM host's cores).

Sources: the Cloud TPU system-architecture pages (v4, v5e, v5p, v6e) and the
NVIDIA datasheets (dense bf16, no sparsity). ``ici_bytes_per_s`` is the chip's
bidirectional inter-chip interconnect bandwidth over all its ports.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

GB = 1e9
GiB = float(1 << 30)


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device's published figures (None where a vendor gives none or it does not apply)."""
  peak_flops: float                      # dense bf16 FLOP/s
  hbm_bytes: Optional[float] = None      # memory per device
  hbm_bytes_per_s: Optional[float] = None
  ici_bytes_per_s: Optional[float] = None
  host_cores: Optional[int] = None       # vCPUs of a full TPU VM host
  chips_per_host: Optional[int] = None   # chips of a full TPU VM host


# Keys are matched as prefixes of ``jax.Device.device_kind`` (case-insensitive), longest first.
CHIPS: dict[str, Chip] = {
    # v4: 275 TFLOP/s, 32 GiB at 1,200 GB/s, ICI 2,400 Gbit/s; a host: 4 chips, 240 vCPUs.
    # One device per chip: a v4 VM runs each chip's two TensorCores as one megacore device.
    "tpu v4": Chip(275e12, 32 * GiB, 1200 * GB, 300 * GB, host_cores=240, chips_per_host=4),
    # v5e: 197 TFLOP/s, 16 GiB at 819 GB/s, ICI 400 GB/s; a host: 8 chips, 224 vCPUs.
    "tpu v5 lite": Chip(197e12, 16 * GiB, 819 * GB, 400 * GB, host_cores=224, chips_per_host=8),
    "tpu v5e": Chip(197e12, 16 * GiB, 819 * GB, 400 * GB, host_cores=224, chips_per_host=8),
    # v5p: 459 TFLOP/s, 95 GiB at 2,765 GB/s, ICI 1,200 GB/s; a host: 4 chips, 208 vCPUs.
    "tpu v5p": Chip(459e12, 95 * GiB, 2765 * GB, 1200 * GB, host_cores=208, chips_per_host=4),
    "tpu v5": Chip(459e12, 95 * GiB, 2765 * GB, 1200 * GB, host_cores=208, chips_per_host=4),
    # v6e (Trillium): 918 TFLOP/s, 32 GiB at 1,638 GB/s, ICI 800 GB/s; a host: 8 chips, 180 vCPUs.
    "tpu v6 lite": Chip(918e12, 32 * GiB, 1638 * GB, 800 * GB, host_cores=180, chips_per_host=8),
    "tpu v6e": Chip(918e12, 32 * GiB, 1638 * GB, 800 * GB, host_cores=180, chips_per_host=8),
    "nvidia h100 pcie": Chip(756e12, 80 * GB, 2000 * GB),
    "nvidia h100": Chip(989e12, 80 * GB, 3350 * GB),  # SXM
    "nvidia h200": Chip(989e12, 141 * GB, 4800 * GB),
    "nvidia a100": Chip(312e12, 80 * GB, 2039 * GB),
}


def chip(device_kind: str) -> Optional[Chip]:
  """The figures of a ``jax.Device.device_kind`` (e.g. 'TPU v5 lite'), or None where unknown."""
  kind = device_kind.lower()
  for key in sorted(CHIPS, key=len, reverse=True):
    if kind.startswith(key):
      return CHIPS[key]
  return None
