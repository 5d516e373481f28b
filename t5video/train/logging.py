"""What a run shows: metrics.jsonl, TensorBoard events, a progress bar, MFU.

Only process 0 writes files and draws the bar. ``WORKDIR/metrics.jsonl`` holds
one JSON object per logged step (``step``, ``loss``, the task's metrics,
``learning_rate``, ``steps_per_sec``, ``examples_per_sec``, ``flops_per_sec``,
``mfu``) and one per evaluation (``step`` plus ``eval/...`` keys).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from t5video.train import chips as chips_lib
from t5video.train import paths

def peak_flops(device: jax.Device | None = None) -> float | None:
  """The device's peak dense bf16 FLOP/s (:data:`t5video.train.chips.CHIPS`), or None where
  unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  found = chips_lib.chip(device.device_kind)
  return found.peak_flops if found else None


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (per-device SPMD) program, from XLA cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends have none)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def _jsonable(v: Any):
  if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
    v = np.asarray(v)
    v = v.item() if v.ndim == 0 else v.tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return None if math.isnan(v) else (v > 0 and "inf" or "-inf")
  return v


class MetricsLogger:
  """Writes metrics to ``metrics.jsonl`` and TensorBoard, and draws the progress bar.

  Args:
    workdir: run directory (``metrics.jsonl`` and ``tensorboard/`` go there).
    num_steps: the run's last step (for the bar's ETA).
    initial_step: where this (possibly resumed) run starts.
    enabled: False on processes other than 0.
    progress: draw a tqdm bar (on when stderr is a terminal or forced).
  """

  def __init__(self, workdir: str, *, num_steps: int, initial_step: int = 0,
               enabled: bool = True, progress: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._bar = None
    if not enabled:
      return
    paths.makedirs(workdir)
    self._jsonl = paths.AppendFile(paths.join(workdir, "metrics.jsonl"))
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      tb_dir = os.path.join(paths.local_mirror(workdir), "tensorboard")
      if paths.is_remote(workdir):
        logging.warning("TensorBoard events of %s are written locally to %s", workdir, tb_dir)
      self._tb = SummaryWriter(tb_dir)
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard events")
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=num_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                       mininterval=1.0)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one JSON line and the TensorBoard scalars for ``step``."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def progress(self, step: int, loss: float | None = None, steps_per_sec: float | None = None) -> None:
    """Moves the bar to ``step`` and shows loss and speed (tqdm computes the ETA)."""
    if self._bar is None:
      return
    self._bar.update(int(step) - self._bar.n)
    post = {}
    if loss is not None:
      post["loss"] = f"{loss:.4g}"
    if steps_per_sec is not None:
      post["steps/s"] = f"{steps_per_sec:.3g}"
    if post:
      self._bar.set_postfix(post, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


class Throughput:
  """Steps/s, examples/s, achieved FLOP/s, MFU and the input pipeline's share of the time over
  the last logging window (and over the whole run).

  Two input figures, because dispatch is asynchronous: the host asks for the next batch while
  the device still runs the steps already queued. ``input_wait_fraction`` counts the time the
  device had nothing left to run while the host waited for a batch (an upper bound: a wait
  during which the last queued step finished counts whole); ``input_host_fraction`` counts all
  the host's time in the input pipeline, most of it overlapped with compute.
  """

  def __init__(self, *, global_batch: int, flops_per_step: float | None, num_devices: int,
               peak_per_device: float | None):
    self.global_batch = global_batch
    self.flops_per_step = flops_per_step
    self.num_devices = num_devices
    self.peak = peak_per_device
    self._t = time.perf_counter()
    self._step: int | None = None
    self._idle = 0.0  # seconds the device waited for input in the current window
    self._host = 0.0  # seconds the host spent getting batches in the current window
    # Over every measured window of the run.
    self.total_idle = 0.0
    self.total_host = 0.0
    self.total_time = 0.0

  def add_input_time(self, host_seconds: float, device_idle: bool) -> None:
    """Counts ``host_seconds`` spent getting one batch; ``device_idle``: the device ran out of
    queued steps before the batch was ready (the wait then counts as idle time too)."""
    self._host += host_seconds
    if device_idle:
      self._idle += host_seconds

  def reset(self, step: int) -> None:
    self._t = time.perf_counter()
    self._step = step
    self._idle = self._host = 0.0

  def measure(self, step: int) -> dict[str, float | None]:
    now = time.perf_counter()
    out: dict[str, float | None] = {}
    if self._step is not None and step > self._step and now > self._t:
      sps = (step - self._step) / (now - self._t)
      out["steps_per_sec"] = sps
      out["input_wait_fraction"] = self._idle / (now - self._t)
      out["input_host_fraction"] = self._host / (now - self._t)
      self.total_idle += self._idle
      self.total_host += self._host
      self.total_time += now - self._t
      out["examples_per_sec"] = sps * self.global_batch
      if self.flops_per_step:
        achieved = sps * self.flops_per_step
        out["flops_per_sec"] = achieved
        out["mfu"] = achieved / (self.peak * self.num_devices) if self.peak else None
      else:
        out["mfu"] = None
    self._t, self._step = now, step
    self._idle = self._host = 0.0
    return out
