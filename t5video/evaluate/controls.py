"""Controls computed beside a model's own numbers, in the same run.

Two controls (``eval.controls`` of a recipe's config), reported as
``control_<name>_<metric>`` next to the model's ``<metric>`` and the
``baseline_*`` keys:

* ``'other_frames'``: the trained model evaluated with each clip's frames
  swapped for another clip's, its own non-visual text (metadata, subtitle)
  kept; whatever is derived from the frames (CLIP concepts, cached features) is
  recomputed from or swapped with them. The donors form a fixed derangement of
  the clips the model's own evaluation could decode (:func:`derangement`, one
  seeded cycle through all of them), so no clip keeps its own frames and
  neighbours in the annotation file (often of one class) are not paired. The
  swap is made on the records before anything is loaded
  (:func:`other_frames_records`: each record takes its donor's ``path``,
  ``start`` and ``end``), so it is the same however the clips are batched or
  shared across processes. A model that reads only text scores exactly its own
  metrics here; the gap is what the pixels of *this* clip add.
* ``'text_only'``: the same recipe trained and evaluated with every pixel
  replaced by a constant (``data.constant_pixels``), so that anything computed
  from frames carries nothing. It is a stage of the run (the mechanism): the
  recipe's ``prepare`` appends :func:`text_only_stage` to ``config.stages``,
  whose ``config`` is empty, meaning the run's own resolved config
  (:func:`t5video.train.stages.stage_config`), with ``data.constant_pixels``
  on, no stages and no controls of its own; the stage driver trains and
  evaluates it in ``<workdir>/control_text_only`` before the run itself, and
  the run's evaluation reads that stage's ``final_metrics.json["eval"]``
  (:func:`text_only_metrics`), so its table, ``eval_metrics.json`` and
  ``final_metrics.json`` carry them. It costs a second training run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Sequence

import numpy as np

from t5video.data.records import VideoRecord
from t5video.train import paths
from t5video.train import workdir as workdir_lib

CONTROLS = ("other_frames", "text_only")
TEXT_ONLY_STAGE = "control_text_only"  # the stage's name and sub-workdir
# Pixel value of data.constant_pixels (mid-grey).
CONSTANT_PIXEL = 128

# Keys that are not the model's own metrics (never prefixed again).
_NOT_MODEL = ("baseline_", "control_", "num_examples")


def check(controls: Sequence[str]) -> None:
  """Raises ValueError naming an unknown control."""
  for c in controls:
    if c not in CONTROLS:
      raise ValueError(f"eval.controls: unknown control {c!r}; known: {CONTROLS}")


def derangement(n: int, seed: int = 0) -> np.ndarray:
  """``donor[i] != i`` for every ``i`` (``n >= 2``): one seeded random cycle through ``0..n-1``.

  Returns an empty array for ``n < 2`` (no derangement exists for one clip).
  """
  if n < 2:
    return np.zeros((0,), np.int64)
  order = np.random.default_rng(seed).permutation(n)
  donor = np.empty(n, np.int64)
  donor[order] = np.roll(order, -1)  # order[k] takes the frames of order[k + 1]
  return donor


def other_frames_records(records: Sequence[VideoRecord], seed: int = 0) -> list[VideoRecord]:
  """Each record with the video (``path``, ``start``, ``end``) of its :func:`derangement` donor;
  its id, captions, label, tags, metadata and subtitle kept. ``extra['frames_of']`` names the donor.
  Empty for fewer than two records."""
  donor = derangement(len(records), seed)
  out = []
  for r, j in zip(records, donor):
    d = records[int(j)]
    out.append(dataclasses.replace(r, path=d.path, start=d.start, end=d.end,
                                   extra={**r.extra, "frames_of": d.video_id}))
  return out


def model_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
  """The model's own metrics of an evaluation (no baselines, controls or counts)."""
  return {k: v for k, v in metrics.items()
          if not k.startswith(_NOT_MODEL) and not k.endswith("count") and isinstance(v, (int, float))}


def prefixed(name: str, metrics: Mapping[str, float]) -> dict[str, float]:
  """``control_<name>_<metric>`` for the model's own metrics."""
  return {f"control_{name}_{k}": float(v) for k, v in model_metrics(metrics).items()}


def text_only_stage(overrides: Optional[Mapping] = None) -> dict:
  """The ``'text_only'`` control as a stage entry (:mod:`t5video.train.stages`).

  ``config`` is empty: the run's own config, with ``data.constant_pixels``
  on, no stages, no controls and the recipe's ``overrides`` (nested dicts).
  """
  base = {"stages": (), "data": {"constant_pixels": True}, "eval": {"controls": ()}}
  for key, value in dict(overrides or {}).items():
    base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
  return {"name": TEXT_ONLY_STAGE, "config": "", "workdir": TEXT_ONLY_STAGE, "overrides": base}


def text_only_metrics(workdir: Optional[str]) -> dict[str, float]:
  """``control_text_only_<metric>`` from the stage's ``final_metrics.json`` (empty when it has none)."""
  if not workdir:
    return {}
  path = workdir_lib.final_metrics_path(paths.join(workdir, TEXT_ONLY_STAGE))
  if not paths.exists(path):
    return {}
  return prefixed("text_only", json.loads(paths.read_text(path)).get("eval") or {})
