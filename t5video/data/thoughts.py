"""Thoughts: the text that goes into the T5 encoder beside the visual tokens.

A thought is a short, labelled piece of text about the video:

* ``concepts``: the top-k entries of a concept vocabulary, chosen by a
  video-text CLIP's similarity to the frames (CLIP-guided thought sampling);
* ``metadata``: annotation fields such as the object inventory or background;
* ``subtitle``: a subtitle / ASR line;
* ``draft``: a draft caption (the model's own first pass, or in training a
  corrupted reference) that a second pass refines.

Concepts come from the frames (a *visual* thought: swap the frames and they
change); metadata, subtitles and drafts are *non-visual*. Non-visual thoughts
must behave like real side information: partial, noisy, often about something
else, never the answer. The synthetic world's metadata and subtitles do so by
default (``t5video.data.synthetic``, ``side_information='honest'``; the leakage
guard is ``tests/test_side_information.py``). A draft made by
:func:`corrupt_caption` from a reference caption is an *oracle* draft: it carries
most of the reference's words, so a model trained on it learns to copy its
draft; an honest draft is the model's own first pass (or an earlier
checkpoint's), as at test time.

Each source can be switched off (ablation) and, in training, dropped at random
per example (thought dropout) so the model also works with none.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

TASK_PROMPTS = {
    "caption": "caption:",
    "classify": "classify:",
    "tags": "tags:",
}
SOURCES = ("concepts", "metadata", "subtitle", "draft")
# Thoughts computed from the frames (recompute them when the frames change) and
# those that are not (text that comes with the video, or the model's own draft).
VISUAL_SOURCES = ("concepts",)
NON_VISUAL_SOURCES = ("metadata", "subtitle", "draft")


@dataclasses.dataclass(frozen=True)
class ThoughtConfig:
  """Which thought sources are used, and how they are dropped in training.

  Attributes:
    sources: the enabled sources, in the order they are written.
    dropout: per-source probability of dropping it from a training example.
    drop_all: probability of dropping every thought of a training example.
    top_k: how many concepts a concept thought lists.
    metadata_fields: which ``record.metadata`` keys a metadata thought writes.
    draft_corruption: in training, the share of a reference's words replaced or
      dropped to make a "draft" (when no model draft is at hand).
    max_chars: each thought is cut to this many characters.
  """
  sources: tuple[str, ...] = ("concepts", "metadata", "subtitle")
  dropout: float = 0.2
  drop_all: float = 0.1
  top_k: int = 5
  metadata_fields: tuple[str, ...] = ("objects", "background")
  draft_corruption: float = 0.3
  max_chars: int = 160

  def __post_init__(self):
    bad = [s for s in self.sources if s not in SOURCES]
    if bad:
      raise ValueError(f"unknown thought sources {bad}; choose from {SOURCES}")


def corrupt_caption(text: str, rate: float, vocabulary: Sequence[str], rng: np.random.Generator) -> str:
  """An *oracle* draft: each word of a reference is kept, dropped or swapped for a
  vocabulary word.

  It leaks the reference (about 70% of its words at ``rate=0.3``), so it is not a
  draft a model could have written; use it only as the oracle control. An honest
  draft is the model's own first-pass caption.
  """
  words = text.split()
  out = []
  for w in words:
    u = rng.random()
    if u < rate / 2:
      continue
    if u < rate and vocabulary:
      out.append(vocabulary[int(rng.integers(len(vocabulary)))])
    else:
      out.append(w)
  return " ".join(out) if out else text


def build_thoughts(metadata: Mapping[str, str], subtitle: str, cfg: ThoughtConfig, *,
                   concepts: Optional[Sequence[str]] = None, draft: Optional[str] = None,
                   rng: Optional[np.random.Generator] = None) -> str:
  """Writes the thought text of one example.

  Args:
    metadata: the video's metadata fields (``VideoRecord.metadata``).
    subtitle: its subtitle / ASR line ('' if none).
    cfg: the thought configuration.
    concepts: CLIP-selected concepts, best first (None: no concept thought).
    draft: a draft caption (None: no draft thought).
    rng: given in training: thought dropout applies; None in evaluation.
  """
  if rng is not None and rng.random() < cfg.drop_all:
    return ""
  parts = []
  for source in cfg.sources:
    if rng is not None and rng.random() < cfg.dropout:
      continue
    text = ""
    if source == "concepts" and concepts:
      text = "concepts: " + ", ".join(list(concepts)[: cfg.top_k])
    elif source == "metadata":
      fields = [f"{k}: {metadata[k]}" for k in cfg.metadata_fields if metadata.get(k)]
      text = "; ".join(fields)
    elif source == "subtitle" and subtitle:
      text = "subtitle: " + subtitle
    elif source == "draft" and draft:
      text = "draft: " + draft
    if text:
      parts.append(text[: cfg.max_chars])
  return " | ".join(parts)


def encoder_text(task: str, thoughts: str) -> str:
  """The encoder's text input: the task prompt, then the thoughts."""
  if task not in TASK_PROMPTS:
    raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_PROMPTS)}")
  return f"{TASK_PROMPTS[task]} {thoughts}".strip()


def tags_text(tags: Sequence[str]) -> str:
  """Tags as the decoder's target: sorted and comma-joined (order-free metric)."""
  return ", ".join(sorted(dict.fromkeys(t.strip() for t in tags if t.strip())))


def parse_tags(text: str) -> set[str]:
  return {t.strip() for t in text.split(",") if t.strip()}
