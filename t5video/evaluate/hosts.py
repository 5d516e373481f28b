"""Evaluation shared out across the processes of a multi-host job.

Every process evaluates its own share of the examples on its own devices and
the results are gathered back, in the original order, on every process:

  params = hosts.local_params(state_params)   # a copy on this process's first device
  mine = hosts.share(records)                 # records[process_index::process_count]
  outputs = [predict(params, r) for r in mine]
  outputs = hosts.gather(outputs)             # every process: all outputs, in order

(``per_process`` gathers lists of any length, e.g. results keyed by id when
some examples may drop out.)

With one process these are no-ops (``share`` returns the list itself). Params
replicated over the mesh (data parallelism) are read from this process's own
devices without any communication; params sharded across processes (FSDP or
tensor axes spanning hosts) are all-gathered once per evaluation.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def share(items: Sequence[T]) -> list[T]:
  """This process's share of ``items``: every ``process_count``-th, from ``process_index``."""
  return list(items[jax.process_index()::jax.process_count()])


def per_process(local: Sequence[Any]) -> list[list[Any]]:
  """Every process's list, in process order (lists may differ in length)."""
  if jax.process_count() == 1:
    return [list(local)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  blob = np.frombuffer(pickle.dumps(list(local)), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([blob.size], np.int64))  # [processes, 1]
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:blob.size] = blob
  blobs = multihost_utils.process_allgather(padded)  # [processes, max_size]
  return [pickle.loads(blobs[p, :int(sizes[p, 0])].tobytes()) for p in range(len(sizes))]


def gather(local: Sequence[Any]) -> list[Any]:
  """Inverse of :func:`share`: every process gets all items in their original order.

  ``local`` is this process's results for ``share(items)``, one per item, any
  picklable objects (arrays, dicts, strings).
  """
  parts = per_process(local)
  count = len(parts)
  out: list[Any] = [None] * sum(len(p) for p in parts)
  for p, part in enumerate(parts):
    if len(out[p::count]) != len(part):
      raise ValueError(f"process {p} returned {len(part)} results for its share of {len(out)} items")
    out[p::count] = part
  return out


def _local_leaf(x):
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return x
  device = jax.local_devices()[0]
  if x.is_fully_replicated:
    return jax.device_put(x.addressable_data(0), device)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)


def local_params(params):
  """``params`` as arrays this process alone can compute with (see the module docstring)."""
  if jax.process_count() == 1:
    return params
  return jax.tree_util.tree_map(_local_leaf, params)
