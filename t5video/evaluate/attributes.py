"""Per-attribute accuracy of generated captions: which attributes the model gets right.

A caption in a world whose vocabulary is known (the synthetic generator's,
:func:`synthetic_vocabulary`) is parsed into the key object's attributes and
its actions, and each is compared with the clip's truth:

* the key object: the first noun phrase ``[size] colour shape`` (each word
  from its attribute's vocabulary, in that order); a caption without such a
  phrase falls back to the first word of each attribute outside the action
  phrases. An optional attribute left out of the phrase takes its unstated
  value (the generator names ``medium`` only now and then);
* the actions: every action phrase in the caption, in order of appearance
  (``'{...}'`` in a phrase stands for any one word: a direction, a colour).

Metrics (:func:`attribute_accuracy`), fractions of the clips whose truth
defines them:

* ``attribute_<name>_accuracy`` for each object attribute (truth ``None``:
  not scored, e.g. a size that an action changes);
* ``attribute_object_accuracy``: every scored object attribute right at once;
* ``attribute_action_accuracy``: the whole action sequence right, in order;
* ``attribute_<a>_<b>_accuracy`` for each order pair (``left_right``,
  ``up_down``, ``grows_shrinks``, ``appears_disappears``): over the clips
  whose true actions include either, the pair's actions named in the true
  order (a two-event clip "grows then shrinks" needs both, in that order).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

_WORD = r"[\w-]+"
# Word boundaries that keep hyphenated words whole ("polka-dot" holds no "dot").
_LEFT, _RIGHT = r"(?<![\w-])", r"(?![\w-])"


def _phrase_regex(phrase: str) -> str:
  """A phrase as a regex: words separated by any spaces, ``{...}`` = any one word."""
  parts = re.split(r"(\{[^}]*\})", phrase.lower())
  out = []
  for part in parts:
    if part.startswith("{"):
      out.append(_WORD)
    else:
      out.append(r"\s+".join(re.escape(w) for w in part.split(" ")) if part.strip() else
                 (r"\s+" if part else ""))
  return _LEFT + "".join(out) + _RIGHT


def _alternatives(words: Mapping[str, Sequence[str]]) -> str:
  """One regex group body matching any word of any value, longest first."""
  flat = sorted({w.lower() for ws in words.values() for w in ws}, key=len, reverse=True)
  return "|".join(r"\s+".join(re.escape(p) for p in w.split()) for w in flat)


def pair_name(pair: Sequence[str]) -> str:
  """``('moves left', 'moves right')`` -> ``'left_right'`` (the words they do not share)."""
  a, b = (p.split() for p in pair)
  return "_".join(w for w in a if w not in b) + "_" + "_".join(w for w in b if w not in a)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """The words of a world's captions.

  Attributes:
    object: the key object's attributes in the order their words come in a
      noun phrase, each ``{value: words}``, e.g. ``{'size': {...}, 'colour':
      {'red': ('red', 'crimson'), ...}, 'shape': {...}}``.
    actions: ``{action: phrases}``; ``'{...}'`` in a phrase is any one word.
    optional: object attributes a noun phrase may leave out, with the value
      meant then (``{'size': 'medium'}``); others are required in the phrase.
    pairs: pairs of actions told apart only by time order.
  """
  object: Mapping[str, Mapping[str, Sequence[str]]]
  actions: Mapping[str, Sequence[str]]
  optional: Mapping[str, str] = dataclasses.field(default_factory=dict)
  pairs: Sequence[tuple[str, str]] = ()

  def __post_init__(self):
    lookup = {}
    for name, values in self.object.items():
      lookup[name] = {" ".join(w.lower().split()): v for v, ws in values.items() for w in ws}
    noun_phrase, last = _LEFT, len(self.object) - 1
    for i, name in enumerate(self.object):
      group = rf"(?P<a{i}>{_alternatives(self.object[name])}){_RIGHT}" + (r"\s+" if i < last else "")
      noun_phrase += rf"(?:{group})?" if name in self.optional else group
    single = {name: re.compile(_LEFT + rf"(?:{_alternatives(values)})" + _RIGHT)
              for name, values in self.object.items()}
    actions = [(a, re.compile(_phrase_regex(p))) for a, phrases in self.actions.items() for p in phrases]
    object.__setattr__(self, "_lookup", lookup)
    object.__setattr__(self, "_noun_phrase", re.compile(noun_phrase))
    object.__setattr__(self, "_single", single)
    object.__setattr__(self, "_action_res", actions)

  def parse_actions(self, caption: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The actions named in ``caption`` in order, and the character spans naming them."""
    text = caption.lower()
    found = sorted(((m.start(), -(m.end() - m.start()), action) for action, rx in self._action_res
                    for m in rx.finditer(text)))
    actions, spans, end = [], [], -1
    for start, neg_len, action in found:  # leftmost first, the longest at one position
      if start >= end:
        actions.append(action)
        end = start - neg_len
        spans.append((start, end))
    return actions, spans

  def parse(self, caption: str) -> dict[str, Any]:
    """``{<object attribute>: value or None, ..., 'actions': [action, ...]}`` of a caption."""
    text = caption.lower()
    actions, spans = self.parse_actions(text)
    out: dict[str, Any] = {name: None for name in self.object}
    m = self._noun_phrase.search(text)
    if m:
      for i, name in enumerate(self.object):
        word = m.group(f"a{i}")
        out[name] = self._lookup[name][" ".join(word.split())] if word else None
    else:
      for name, rx in self._single.items():
        hit = next((h for h in rx.finditer(text)
                    if not any(s <= h.start() < e for s, e in spans)), None)
        if hit:
          out[name] = self._lookup[name][" ".join(hit.group(0).split())]
    if any(v is not None for v in out.values()):  # an object is named: unstated = the default
      for name, default in self.optional.items():
        if out[name] is None:
          out[name] = default
    out["actions"] = actions
    return out


def attribute_accuracy(captions: Sequence[str], truths: Sequence[Optional[Mapping[str, Any]]],
                       vocab: Vocabulary) -> dict[str, float]:
  """The metrics of the module docstring for ``captions`` against ``truths``.

  Args:
    captions: one generated caption per clip.
    truths: per clip ``{<object attribute>: value or None, 'actions': [...]}``
      (None: the clip has no truth and is skipped).
    vocab: the world's vocabulary.

  Returns:
    ``{'attribute_<name>_accuracy': fraction}``; a metric no clip defines is left out.
  """
  hits: dict[str, list[bool]] = {}

  def add(name, ok):
    hits.setdefault(name, []).append(bool(ok))

  for caption, truth in zip(captions, truths):
    if truth is None:
      continue
    got = vocab.parse(caption)
    scored = [n for n in vocab.object if truth.get(n) is not None]
    for name in scored:
      add(name, got[name] == truth[name])
    if scored:
      add("object", all(got[n] == truth[n] for n in scored))
    true_actions = list(truth.get("actions") or ())
    if true_actions:
      add("action", got["actions"] == true_actions)
    for pair in vocab.pairs:
      want = [a for a in true_actions if a in pair]
      if want:
        add(pair_name(pair), [a for a in got["actions"] if a in pair] == want)
  return {f"attribute_{k}_accuracy": float(sum(v) / len(v)) for k, v in hits.items()}


def synthetic_vocabulary() -> Vocabulary:
  """The synthetic generator's vocabulary (:mod:`t5video.data.synthetic`), its tables as they are."""
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  return Vocabulary(
      object={"size": synthetic.SIZE_WORDS, "colour": synthetic.COLOUR_WORDS,
              "shape": synthetic.SHAPE_WORDS},
      actions=synthetic.ACTION_VERBS,
      optional={"size": synthetic.UNSTATED_SIZE},
      pairs=tuple(p for p in synthetic.ORDER_DEPENDENT_PAIRS
                  if p[0] in synthetic.ACTIONS and p[1] in synthetic.ACTIONS))
