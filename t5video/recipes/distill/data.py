"""The distillation recipe's data: the labelled / unlabelled division, alt-text, and the
student's training records.

The training split of ``data`` is divided once (``student.labelled_fraction``,
seeded by ``student.split_seed``; with ``student.unlabelled`` the unlabelled set
is instead the user's own videos, a folder or an annotation file, and the
labelled set that fraction of the training split) and written as generic-layout JSONL files into
``student.data_dir`` (default ``<workdir>/data``), which the teacher, the
pseudo-labelling stage and the student all read:

* ``labelled.jsonl``: the labelled training clips with their captions and QA
  pairs (:func:`qa_pairs`), and every clip of the other splits (the teacher's
  evaluation split among them);
* ``unlabelled.jsonl``: the other training clips without captions, label or
  tags, QA pairs or event annotations (their side information, subtitle and metadata, is kept: a user's
  unlabelled videos have it too): what the teacher pseudo-labels;
* ``alt_text.jsonl``: every training clip with its alt-text as its one caption.

Alt-text: a record's ``alt_text`` field (the generic layout's extra key) when it
has one. Clips of the synthetic world carry none, so one is synthesised in the
honest style of its side information (:mod:`t5video.data.synthetic`): web alt-text
describes a still image, so it never names the action (the part only the video
shows); it names the key object's colour and shape, each right 70% of the time,
sometimes the background (taken from the clip's metadata, itself right about
half the time), and a quarter of the clips get an uninformative one ("image",
"video thumbnail", ...). It is drawn from a generator keyed by the clip's id and
``student.split_seed``, so it is the same whatever else is in the dataset.

Every written path is absolute, so the files load from anywhere with
:func:`t5video.data.layouts.read_generic`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence

import ml_collections
import numpy as np

from t5video.data import layouts
from t5video.data import qa as qa_lib
from t5video.data import synthetic
from t5video.data.records import VideoRecord, fraction_subset
from t5video.train import paths

LABELLED = "labelled.jsonl"
UNLABELLED = "unlabelled.jsonl"
ALT_TEXT = "alt_text.jsonl"
PSEUDO = "annotations.jsonl"  # the pseudo-labelled dataset's annotation file (in pseudo.dir)

_UNINFORMATIVE = ("image", "video thumbnail", "untitled", "screenshot", "stock footage",
                  "img_0042", "clip from our channel", "preview")
_LEADS = ("", "", "a picture of a ", "stock photo of a ", "thumbnail with a ", "image of a ")


def _id_seed(video_id: str) -> int:
  return int(hashlib.md5(video_id.encode("utf-8")).hexdigest()[:15], 16)


def synthesise_alt_text(record: VideoRecord, seed: int) -> str:
  """Noisy alt-text of a synthetic clip (see the module docstring); '' when the record
  carries no ``attributes`` (the generator's truth) to derive it from."""
  attrs = record.extra.get("attributes")
  if not isinstance(attrs, dict) or not attrs.get("shape"):
    return ""
  rng = np.random.default_rng([int(seed), 31, _id_seed(record.video_id)])
  if rng.random() < 0.25:
    return str(rng.choice(_UNINFORMATIVE))
  colour = attrs["colour"] if rng.random() < 0.7 else str(rng.choice(list(synthetic.COLOURS)))
  shape = attrs["shape"] if rng.random() < 0.7 else str(rng.choice(synthetic.SHAPES))
  text = f"{rng.choice(_LEADS)}{colour} {shape}"
  background = (record.metadata or {}).get("background", "")
  if background and rng.random() < 0.5:
    text += f" on a {background} background"
  return text


def alt_text(record: VideoRecord, seed: int) -> str:
  """The record's own ``alt_text`` field, else the synthesised one, else ''."""
  own = record.extra.get("alt_text")
  if isinstance(own, str) and own.strip():
    return own.strip()
  return synthesise_alt_text(record, seed)


# What an unlabelled clip must not carry: annotations that describe what happens in it
# (grounding queries, saliency, the synthetic generator's truth).
ANNOTATION_FIELDS = ("moments", "saliency", "attributes", "qa")


def qa_pairs(record: VideoRecord, seed: int) -> list[dict]:
  """The record's own QA pairs (its ``qa`` field), else questions about the synthetic world's
  events from its ``attributes`` (:func:`t5video.data.qa.synthetic_pairs`), else []."""
  own = record.extra.get("qa")
  if own:
    return qa_lib.check_pairs(own, f"clip {record.video_id}")
  return qa_lib.synthetic_pairs(record.extra.get("attributes"), record.video_id, seed)


def record_row(record: VideoRecord, unlabelled: bool = False, **changes: Any) -> dict[str, Any]:
  """A generic-layout JSONL row of ``record`` (absolute path; ``changes`` replace fields).

  ``unlabelled``: without captions, label, tags and :data:`ANNOTATION_FIELDS`
  (``changes`` may then set captions again, e.g. pseudo-captions).
  """
  r = record.to_json()
  if unlabelled:
    r.update(captions=[], label=None, tags=[], moments=[], saliency=[])
    r["extra"] = {k: v for k, v in r.get("extra", {}).items() if k not in ANNOTATION_FIELDS}
  for key, value in changes.items():  # a VideoRecord field, or an extra key of the row
    if key in r and key != "extra":
      r[key] = value
    else:
      r["extra"] = {**r.get("extra", {}), key: value}
  row: dict[str, Any] = {k: v for k, v in r.get("extra", {}).items()}
  for key in ("video_id", "split", "captions", "label", "tags", "subtitle", "metadata", "start", "end",
              "duration", "moments", "saliency"):
    value = r.get(key)
    if value is not None and value != [] and value != {} and value != "":
      row[key] = value
  row["path"] = os.path.abspath(r["path"])
  row["split"] = r.get("split") or "train"
  return row


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  """Writes ``rows`` as JSONL (atomically: :func:`t5video.train.paths.write_text`)."""
  paths.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def divide(config: ml_collections.ConfigDict, records_fn, out_dir: str) -> dict[str, int]:
  """Writes the labelled / unlabelled / alt-text files into ``out_dir`` once; returns counts.

  ``records_fn(split, allow_empty)`` reads a split of ``config.data``.
  """
  files = [os.path.join(out_dir, n) for n in (LABELLED, UNLABELLED, ALT_TEXT)]
  counts_path = os.path.join(out_dir, "division.json")
  if all(os.path.isfile(f) for f in files + [counts_path]):
    return json.loads(paths.read_text(counts_path))
  s, d = config.student, config.data
  train = list(records_fn(d.train_split, False))
  labelled = fraction_subset(train, float(s.labelled_fraction), int(s.split_seed))
  chosen = {r.video_id for r in labelled}
  if s.unlabelled:  # the user's own unlabelled videos
    unlabelled = read_unlabelled(s.unlabelled)
    clash = sorted({r.video_id for r in unlabelled} & {r.video_id for r in train})[:3]
    if clash:
      raise ValueError(f"student.unlabelled={s.unlabelled!r}: clip ids also in data.train_split, e.g. {clash}")
    train = labelled + unlabelled
  else:
    unlabelled = [r for r in train if r.video_id not in chosen]
  others = [r for split in synthetic.SPLITS if split != d.train_split
            for r in records_fn(split, True)]
  seed = int(s.split_seed)
  os.makedirs(out_dir, exist_ok=True)
  write_jsonl(files[0], [record_row(r, split="train", alt_text=alt_text(r, seed), qa=qa_pairs(r, seed))
                         for r in labelled] + [record_row(r, qa=qa_pairs(r, seed)) for r in others])
  write_jsonl(files[1], [record_row(r, unlabelled=True, split="train", alt_text=alt_text(r, seed))
                         for r in unlabelled])
  alt = [(r, alt_text(r, seed)) for r in train]
  missing = [r.video_id for r, a in alt if not a]
  if "alt_text" in s.sources and missing:
    raise ValueError(f"student.sources has 'alt_text' but {len(missing)} training clips have none "
                     f"(e.g. {missing[:3]}): give each an 'alt_text' field in the annotation file")
  write_jsonl(files[2], [record_row(r, unlabelled=True, split="train", captions=[a], alt_text=a)
                         for r, a in alt if a])
  counts = {"labelled": len(labelled), "unlabelled": len(unlabelled), "other_splits": len(others),
            "alt_text": len(alt) - len(missing), "labelled_fraction": float(s.labelled_fraction),
            "split_seed": seed}
  paths.write_text(counts_path, json.dumps(counts, indent=2))
  return counts


def read_unlabelled(path: str) -> list[VideoRecord]:
  """The unlabelled videos of ``student.unlabelled``: a generic-layout annotation file (every
  row, whatever its split), or a folder (every video file below it, sorted; the id is its path
  relative to the folder without the extension)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    found = []
    for d, _, names in os.walk(path):
      for n in names:
        if n.lower().endswith(layouts.VIDEO_EXTENSIONS):
          full = os.path.join(d, n)
          found.append(VideoRecord(video_id=os.path.splitext(os.path.relpath(full, path))[0], path=full))
    records = sorted(found, key=lambda r: r.video_id)
  elif os.path.isfile(path):
    records = layouts.read_generic(path)
  else:
    raise FileNotFoundError(f"student.unlabelled={path!r}: neither an annotation file nor a folder")
  if not records:
    raise ValueError(f"student.unlabelled={path!r}: no videos")
  for r in records:
    r.split = "train"
  return records


def read(path: str, split: Optional[str] = "train") -> list[VideoRecord]:
  """Records of a written generic-layout file (of ``split``; None: all)."""
  records = layouts.read_generic(path)
  return [r for r in records if split is None or r.split == split]


def student_records(config: ml_collections.ConfigDict) -> list[VideoRecord]:
  """The student's training records: each source of ``student.sources`` in turn, labels dropped.

  A clip in two sources appears once per source (e.g. ``('pseudo', 'alt_text')``: an
  unlabelled clip with its pseudo-captions and again with its alt-text).
  """
  s = config.student
  out: list[VideoRecord] = []
  for source in s.sources:
    if source == "pseudo":
      recs = read(os.path.join(config.pseudo.dir, PSEUDO))
    elif source == "labelled":
      recs = read(os.path.join(s.data_dir, LABELLED))
    else:
      recs = read(os.path.join(s.data_dir, ALT_TEXT))
    for r in recs:
      if r.captions:
        r.label, r.tags = None, []
        r.extra = {**r.extra, "source": source}
        out.append(r)
  return out
