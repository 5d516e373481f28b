"""The one record type every dataset reader returns.

Readers for the public layouts (MSR-VTT, VATEX, Kinetics CSV, QVHighlights,
a generic CSV/JSONL folder) and the synthetic dataset all produce
:class:`VideoRecord`s, so the pipelines downstream never see a layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass
class Moment:
  """A temporal event inside a video: ``[start, end]`` seconds and its query."""
  start: float
  end: float
  query: str = ""


@dataclasses.dataclass
class VideoRecord:
  """One annotated video (or one annotated window of a video).

  Attributes:
    video_id: a key unique within the dataset.
    path: the video file on local disk.
    split: 'train', 'val', 'test' (or the layout's own split name).
    captions: reference captions (may be empty).
    label: the class name, if the dataset has classes.
    tags: multi-label tags.
    metadata: free-form annotation text usable as "thoughts" (object inventory,
      background, title, ...), as ``{field: text}``.
    subtitle: a subtitle / ASR line.
    start, end: the annotated window in seconds (None: the whole video).
    duration: the video's duration in seconds when the layout gives it.
    moments: temporal events with natural-language queries (grounding).
    saliency: saliency scores, one per ``extra['saliency_clip_s']`` seconds
      (default 1 s; QVHighlights' reader uses its 2-second clips), if any.
    extra: anything else a layout carries, kept for the user.
  """
  video_id: str
  path: str
  split: str = "train"
  captions: list[str] = dataclasses.field(default_factory=list)
  label: Optional[str] = None
  tags: list[str] = dataclasses.field(default_factory=list)
  metadata: dict[str, str] = dataclasses.field(default_factory=dict)
  subtitle: str = ""
  start: Optional[float] = None
  end: Optional[float] = None
  duration: Optional[float] = None
  moments: list[Moment] = dataclasses.field(default_factory=list)
  saliency: list[float] = dataclasses.field(default_factory=list)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "VideoRecord":
    d = dict(d)
    d["moments"] = [Moment(**m) for m in d.get("moments", [])]
    return cls(**d)


def fraction_subset(records: list, fraction: float, seed: int) -> list:
  """A seeded subset of ``max(1, round(fraction * n))`` records, in their order (all when >= 1).

  Every recipe draws the same subset for the same records and seed, so a
  model stage trained on ``data.train_fraction`` sees the clips the next one does.
  """
  if fraction >= 1.0:
    return list(records)
  rng = np.random.default_rng(seed)
  keep = sorted(rng.permutation(len(records))[: max(1, int(round(fraction * len(records))))])
  return [records[i] for i in keep]


def fold_of(video_id: str, num_folds: int) -> int:
  """A stable fold index in ``[0, num_folds)`` for a video id (md5 of the id).

  Used to cross-fit a model stage: a model trained without fold ``k`` labels
  the clips of fold ``k``, so no clip is labelled by a model that saw it.
  """
  return int(hashlib.md5(video_id.encode("utf-8")).hexdigest(), 16) % int(num_folds)
