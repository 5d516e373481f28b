"""Video question answering as text: the layout of QA pairs, questions about the synthetic
world's rendered events, the encoder prompt, and answer accuracy.

Layout: a record's QA pairs are the generic layout's ``qa`` key (a row's extra
field, :func:`t5video.data.layouts.read_generic`), a list of::

  {"question": "what does the star do after it grows?", "answer": "shrinks",
   "type": "temporal",                       # optional: temporal, causal, counting, descriptive, ...
   "choices": ["shrinks", "spins", ...]}     # optional: multiple choice (NExT-QA's a0..a4)

Open-ended pairs have no ``choices``. NExT-QA's CSV (``video, question, answer,
qid, type, a0..a4``, the answer an index into a0..a4) maps onto it with
:func:`nextqa_pairs`.

The task is text to text (CaptionT5's ``qa`` task): the encoder reads
``question: <question> options: <a> | <b> | ...`` and then the clip's thoughts;
the decoder writes the answer. A prediction is right when it equals the answer
after :func:`normalize` (lower case, no articles or punctuation); a
multiple-choice answer must equal the right option. Open-ended answers (no
``choices``) are also scored by WUPS at thresholds 0.0 and 0.9, the Wu-Palmer
soft accuracy NExT-QA reports for them (:mod:`t5video.evaluate.wups`):
``qa_wups@0.0`` and ``qa_wups@0.9``.

Synthetic questions (:func:`synthetic_pairs`) come from the generator's truth
(the rows' ``attributes``: the key object's shape, colour, size and its actions
in order), and only the pixels can answer them: what the object does, what it
does after or before an event (two-event clips), how many things happen,
which object does it, and the action as a multiple choice among four.
"""

from __future__ import annotations

import csv
import hashlib
import re
from typing import Any, Optional, Sequence

import numpy as np

PROMPT = "question:"
OPTIONS = "options:"
# (Not "count": metric keys ending in "count" are counts, not metrics; t5video.evaluate.controls.)
TYPES = ("action", "temporal", "counting", "descriptive", "multiple_choice")
_NUMBERS = ("zero", "one", "two", "three", "four")


def check_pairs(pairs: Any, where: str = "") -> list[dict]:
  """``pairs`` validated (a list of dicts with str question and answer); ValueError naming ``where``."""
  if not isinstance(pairs, list):
    raise ValueError(f"{where}: qa must be a list of {{question, answer}}, got {type(pairs).__name__}")
  for i, p in enumerate(pairs):
    if not (isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str)
            and p["question"].strip() and p["answer"].strip()):
      raise ValueError(f"{where}: qa[{i}] needs a non-empty str question and answer, got {p!r:.120}")
    choices = p.get("choices")
    if choices is not None and (not isinstance(choices, list) or p["answer"] not in choices):
      raise ValueError(f"{where}: qa[{i}]: choices must be a list holding the answer, got {choices!r:.120}")
  return pairs


def prompt(pair: dict) -> str:
  """The encoder's text for a QA pair (the thoughts follow it)."""
  text = f"{PROMPT} {pair['question'].strip()}"
  if pair.get("choices"):
    text += f" {OPTIONS} " + " | ".join(c.strip() for c in pair["choices"])
  return text


def normalize(text: str) -> str:
  """Lower case, punctuation and articles removed, spaces collapsed."""
  words = re.sub(r"[^\w\s]", " ", text.lower()).split()
  return " ".join(w for w in words if w not in ("a", "an", "the"))


def is_correct(predicted: str, pair: dict) -> bool:
  return normalize(predicted) == normalize(pair["answer"])


def accuracy(rows: Sequence[dict], prefix: str = "qa_") -> dict[str, float]:
  """``{qa_accuracy, qa_accuracy_<type>..., qa_count}`` (fractions) of rows ``{type, correct}``,
  and ``qa_wups@0.0``, ``qa_wups@0.9`` over the rows that are open-ended (``open`` true) and
  carry ``predicted`` and ``answer`` (where WordNet is installed; :mod:`t5video.evaluate.wups`)."""
  if not rows:
    return {}
  out = {f"{prefix}accuracy": float(np.mean([r["correct"] for r in rows])),
         f"{prefix}count": float(len(rows))}
  for t in sorted({r.get("type") or "" for r in rows} - {""}):
    sel = [r["correct"] for r in rows if r.get("type") == t]
    out[f"{prefix}accuracy_{t}"] = float(np.mean(sel))
  open_ended = [(r["predicted"], r["answer"]) for r in rows if r.get("open") and "predicted" in r and "answer" in r]
  if open_ended:
    from t5video.evaluate import wups  # pylint: disable=g-import-not-at-top
    out.update(wups.maybe_mean_wups(open_ended, prefix))
  return out


def _rng(video_id: str, seed: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), 41, int(hashlib.md5(video_id.encode()).hexdigest()[:15], 16)])


def synthetic_pairs(attributes: Optional[dict], video_id: str, seed: int = 0) -> list[dict]:
  """QA pairs of a synthetic clip from its ``attributes`` (see the module docstring); [] without them."""
  if not isinstance(attributes, dict) or not attributes.get("actions") or not attributes.get("shape"):
    return []
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  rng = _rng(video_id, seed)
  shape, colour, actions = attributes["shape"], attributes["colour"], list(attributes["actions"])
  thing = f"the {shape}"
  pairs = [{"question": f"what does {thing} do?", "answer": " then ".join(actions), "type": "action"},
           {"question": f"how many things happen to {thing}?", "answer": _NUMBERS[len(actions)], "type": "counting"},
           {"question": f"which object {actions[0]}?", "answer": f"{colour} {shape}", "type": "descriptive"}]
  if len(actions) == 2:
    first, second = actions
    pairs += [{"question": f"what does {thing} do after it {first}?", "answer": second, "type": "temporal"},
              {"question": f"what does {thing} do before it {second}?", "answer": first, "type": "temporal"}]
  names = list(synthetic.CLASS_NAMES)
  truth = " then ".join(actions)
  others = [n for n in names if n != truth]
  choices = [truth] + [others[i] for i in rng.choice(len(others), 3, replace=False)]
  choices = [choices[i] for i in rng.permutation(len(choices))]
  pairs.append({"question": f"what happens to {thing}?", "answer": truth, "choices": choices,
                "type": "multiple_choice"})
  return pairs


def nextqa_pairs(csv_path: str) -> dict[str, list[dict]]:
  """NExT-QA's multiple-choice CSV (``video, question, answer, qid, type, a0..a4``) as
  ``{video_id: [pair, ...]}`` in this module's layout."""
  out: dict[str, list[dict]] = {}
  with open(csv_path, newline="", encoding="utf-8") as f:
    for lineno, row in enumerate(csv.DictReader(f), 2):
      try:
        choices = [row[f"a{i}"] for i in range(5)]
        pair = {"question": row["question"].strip().rstrip("?") + "?", "answer": choices[int(row["answer"])],
                "choices": choices, "type": row.get("type") or ""}
      except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"{csv_path}:{lineno}: not a NExT-QA multiple-choice row ({e})") from None
      out.setdefault(str(row["video"]), []).append(pair)
  return out
