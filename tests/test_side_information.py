"""Leakage guard: the synthetic world's non-visual side information does not state the answer.

Every non-visual thought a model can read (the metadata fields and the subtitle
line, written as :func:`t5video.data.thoughts.build_thoughts` writes them) is
read by two text-only predictors that never see a pixel:

* a rule: the first colour, shape, size or action word found in the text (with
  the synonyms the captions use), else the training split's most frequent value;
* a model: bag-of-words (unigrams and bigrams) multinomial logistic regression
  in numpy, trained on the train split's thoughts, evaluated on the test split.

On the default (honest) side information both stay near the prior for the action
class and far below what the pixels allow (a ridge classifier on 8 frames' pixel
statistics separates order pairs at >= 85%, ``tests/test_synthetic.py``; colour
and shape are near 100% from pixels, ``docs/results.md``). On the oracle variant
(``side_information='oracle'``, version 3's text) both read the answer off,
which shows that the guard can fail.

No rendering: the text lives in the clip specs, so this runs in seconds.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from t5video.data import synthetic, thoughts

_THOUGHTS = thoughts.ThoughtConfig(sources=("metadata", "subtitle"),
                                   metadata_fields=("objects", "background"))
_NUM_VIDEOS = 1500


def _text(spec: synthetic.ClipSpec) -> str:
  """Every non-visual thought of a clip, in evaluation form (no dropout)."""
  return thoughts.build_thoughts(spec.metadata(), spec.subtitle, _THOUGHTS, rng=None)


def _targets(spec: synthetic.ClipSpec) -> dict[str, str]:
  return {"class": spec.label, "colour": spec.key.colour, "shape": spec.key.shape,
          "size": spec.key.size}


# ---------------------------------------------------------------------------
# The rule: word matching with the captions' own vocabulary.
# ---------------------------------------------------------------------------

def _word_table(field: str) -> list[tuple[str, str]]:
  """(phrase, value) pairs, longest phrase first."""
  if field == "colour":
    pairs = [(w, c) for c, ws in synthetic.COLOUR_WORDS.items() for w in (c, *ws)]
  elif field == "shape":
    pairs = [(w, s) for s, ws in synthetic.SHAPE_WORDS.items() for w in (s, *ws)]
  elif field == "size":
    pairs = [(w, s) for s, ws in synthetic.SIZE_WORDS.items() for w in (s, *ws)]
  else:  # class: single-action classes by the stems of their verbs
    pairs = []
    for name, actions in synthetic.CLASSES:
      if len(actions) == 1:
        for v in synthetic.ACTION_VERBS[actions[0]]:
          stem = v.split(" {")[0]
          pairs.append((stem, name))
      pairs.append((name, name))
  return sorted(set(pairs), key=lambda p: -len(p[0]))


def _rule(text: str, table: list[tuple[str, str]], fallback: str) -> str:
  padded = f" {text.lower()} "
  best, where = fallback, len(padded)
  for phrase, value in table:
    i = padded.find(f" {phrase}")
    if 0 <= i < where:
      best, where = value, i
  return best


# ---------------------------------------------------------------------------
# The model: bag-of-words logistic regression in numpy.
# ---------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
  words = re.findall(r"[a-z]+", text.lower())
  return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


def _featurise(texts, vocab=None):
  if vocab is None:
    counts = collections.Counter(t for text in texts for t in set(_tokens(text)))
    vocab = {t: i for i, t in enumerate(sorted(t for t, c in counts.items() if c >= 3))}
  x = np.zeros((len(texts), len(vocab) + 1), np.float32)
  x[:, -1] = 1.0  # bias
  for i, text in enumerate(texts):
    for t in _tokens(text):
      if t in vocab:
        x[i, vocab[t]] = 1.0
  return x, vocab


def _logistic_regression(x, y, num_classes, l2=1e-3, steps=60, lr=8.0):
  """Multinomial logistic regression by full-batch gradient descent."""
  w = np.zeros((x.shape[1], num_classes), np.float32)
  onehot = np.eye(num_classes, dtype=np.float32)[y]
  for _ in range(steps):
    logits = x @ w  # [n, k]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    grad = x.T @ (p - onehot) / len(x) + l2 * w  # [features, k]
    w -= lr * grad
  return w


def leakage_report(side_information: str, num_videos: int = _NUM_VIDEOS, seed: int = 0
                   ) -> dict[str, dict[str, float]]:
  """Test-split accuracy per target for the prior, the rule and the text-only model."""
  specs = synthetic.sample_specs(num_videos, seed, side_information=side_information)
  train = [s for s in specs if s.split == "train"]
  test = [s for s in specs if s.split == "test"]
  x_train, vocab = _featurise([_text(s) for s in train])
  x_test, _ = _featurise([_text(s) for s in test], vocab)
  report: dict[str, dict[str, float]] = {}
  for field in ("class", "colour", "shape", "size"):
    y_train_s = [_targets(s)[field] for s in train]
    y_test_s = [_targets(s)[field] for s in test]
    values = sorted(set(y_train_s) | set(y_test_s))
    index = {v: i for i, v in enumerate(values)}
    majority = collections.Counter(y_train_s).most_common(1)[0][0]
    table = _word_table(field)
    rule = [_rule(_text(s), table, majority) for s in test]
    w = _logistic_regression(x_train, np.array([index[v] for v in y_train_s]), len(values))
    model = [values[i] for i in (x_test @ w).argmax(1)]
    y = np.array(y_test_s)
    report[field] = {
        "prior": float((y == majority).mean()),
        "rule": float((np.array(rule) == y).mean()),
        "model": float((np.array(model) == y).mean()),
    }
  return report


@pytest.fixture(scope="module")
def honest():
  return leakage_report("honest")


@pytest.fixture(scope="module")
def oracle():
  return leakage_report("oracle")


def test_honest_side_information_does_not_state_the_answer(honest):
  print("honest side information:", honest)
  # The action class: nothing beyond the class prior (the most frequent class).
  for reader in ("rule", "model"):
    assert honest["class"][reader] <= honest["class"]["prior"] + 0.03, honest["class"]
  # The key object: at most a weak hint (chance 1/8 for colour and shape, about
  # 1/3 for size), far below the pixels' near-100%.
  for field, ceiling in (("colour", 0.25), ("shape", 0.25), ("size", 0.42)):
    for reader in ("rule", "model"):
      assert honest[field][reader] <= ceiling, (field, honest[field])


def test_oracle_side_information_leaks(oracle, honest):
  """The guard can fail: the oracle variant's text gives the answer away."""
  print("oracle side information:", oracle)
  assert oracle["class"]["model"] >= oracle["class"]["prior"] + 0.3, oracle["class"]
  assert oracle["class"]["rule"] >= oracle["class"]["prior"] + 0.2, oracle["class"]
  for field in ("colour", "shape"):
    assert oracle[field]["model"] >= 0.9 and oracle[field]["rule"] >= 0.8, (field, oracle[field])
  assert oracle["size"]["model"] >= 0.9, oracle["size"]
  for field in ("class", "colour", "shape", "size"):
    assert oracle[field]["model"] > honest[field]["model"] + 0.25, field


def test_oracle_and_honest_share_pixels_and_captions():
  """Only the side information differs between the two variants of one seed."""
  a = synthetic.sample_specs(40, 5)
  b = synthetic.sample_specs(40, 5, side_information="oracle")
  for x, y in zip(a, b):
    assert (x.captions, x.label, x.key, x.events, x.render_seed, x.tags) == (
        y.captions, y.label, y.key, y.events, y.render_seed, y.tags)
  assert [x.subtitle for x in a] != [y.subtitle for y in b]
  with pytest.raises(ValueError, match="side_information"):
    synthetic.sample_specs(4, 0, side_information="leaky")


def test_honest_text_never_names_the_action_or_the_key_object():
  """No subtitle or metadata field uses a caption verb of the clip's own action together
  with the key object's colour and shape, and none copies a caption."""
  for s in synthetic.sample_specs(600, 1):
    text = _text(s)
    assert f"{s.key.colour} {s.key.shape}" not in s.subtitle
    assert f"{s.key.size} {s.key.colour} {s.key.shape}" not in text
    for cap in s.captions:
      assert cap not in text
