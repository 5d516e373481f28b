"""ViFi-CLIP's data: records of a split (rendering synthetic data first), K-shot
sampling, the class list and the per-example transform (label id + one tokenised
caption). The CLIP text tokenizer is :class:`t5video.data.tokenizer.ClipTextTokenizer`.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from t5video.data.records import VideoRecord
from t5video.data.tokenizer import ClipTextTokenizer
from t5video.recipes.vificlip.config import as_dict


def read_records(data: ml_collections.ConfigDict, split: str, allow_empty: bool = False) -> list[VideoRecord]:
  """``data.layout`` records of ``split`` under ``data.root`` (rendering synthetic data first)."""
  if not data.root:
    raise ValueError(f"config.data.root is empty: pass --config.data.root=DIR (the {data.layout} "
                     "dataset folder)")
  if data.get("synthetic") and data.synthetic.get("num_videos", 0):
    from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
    s = data.synthetic
    synthetic.render_dataset(data.root, int(s.num_videos), int(s.seed),
                             sizes=tuple(tuple(x) for x in s.sizes), class_prior=str(s.class_prior),
                             min_seconds=float(s.min_seconds), max_seconds=float(s.max_seconds),
                             backgrounds=tuple(s.backgrounds) if s.get("backgrounds") else None,
                             max_distractors=int(s.get("max_distractors", 2)),
                             overwrite=bool(s.get("overwrite", False)))
  from t5video.data import layouts  # pylint: disable=g-import-not-at-top
  kwargs = as_dict(data.get("layout_kwargs"))
  records = layouts.read_dataset(data.layout, data.root, split, **kwargs)
  if not records and not allow_empty:
    raise ValueError(f"data: layout {data.layout!r} under {data.root!r} has no records in split {split!r}")
  return records


def k_shot(records: Sequence[VideoRecord], k: int, seed: int) -> list[VideoRecord]:
  """``k`` records per class, drawn without replacement with ``seed`` (all of a smaller class)."""
  by_class: dict[str, list[VideoRecord]] = {}
  for r in records:
    by_class.setdefault(r.label, []).append(r)
  rng = np.random.default_rng(seed)
  out = []
  for label in sorted(by_class):
    group = sorted(by_class[label], key=lambda r: r.video_id)
    pick = rng.permutation(len(group))[:k]
    out.extend(group[i] for i in sorted(pick))
  return out


class ExampleTransform:
  """Adds ``label`` (class index, -1 if unknown) and one tokenised caption to an example.

  The caption is drawn from the record's captions with a generator seeded by
  ``(seed, epoch, position)``, so a resumed run draws the same one.
  """

  def __init__(self, class_index: dict[str, int], tokenizer: ClipTextTokenizer, text_len: int,
               seed: int, need_caption: bool):
    self.class_index = dict(class_index)
    self.tokenizer = tokenizer
    self.text_len = text_len
    self.seed = seed
    self.need_caption = need_caption

  def __call__(self, ex: dict) -> dict:
    label = self.class_index.get(ex.get("label") or "", -1)
    ex["label_id"] = np.int32(label)
    valid = bool(ex["valid"]) and (label >= 0 or not self.class_index)
    captions = ex.get("captions") or []
    if self.need_caption:
      if captions:
        rng = np.random.default_rng([self.seed, int(ex["epoch"]), int(ex["position"]), 7])
        caption = captions[int(rng.integers(len(captions)))]
      else:
        caption, valid = "", False
      ids, mask = self.tokenizer([caption], self.text_len)
      ex["caption_ids"], ex["caption_mask"] = ids[0], mask[0]
    ex["valid"] = np.bool_(valid)
    return ex


def train_classes(config: ml_collections.ConfigDict, records_fn) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """``(train_classes, novel_classes)`` of a config; ``records_fn(split)`` reads a split if needed.

  Training classes: ``data.classes``, else those of the training split, minus
  ``data.novel_classes`` (novel classes may be absent from the training split:
  held out is held out). ``novel_classes = ('*',)``: every class of
  ``eval.split`` is novel and none is trained (cross-dataset zero-shot).
  """
  d = config.data
  novel = tuple(d.novel_classes or ())
  if novel == ("*",):
    return (), tuple(sorted({r.label for r in records_fn(config.eval.split) if r.label}))
  if d.classes:
    names = list(d.classes)
  elif config.model.objective == "contrastive" and not any(r.label for r in records_fn(d.train_split)):
    return (), novel
  else:
    names = sorted({r.label for r in records_fn(d.train_split) if r.label})
  return tuple(c for c in names if c not in novel), novel


def tokenizer_texts(config: ml_collections.ConfigDict, records: Sequence[VideoRecord],
                    classes: Sequence[str]) -> list[str]:
  """What a from-scratch SentencePiece model is trained on: captions, class names, prompts."""
  texts = [c for r in records for c in r.captions]
  return texts + list(classes) + [config.model.prompt_template.format(c) for c in classes]
