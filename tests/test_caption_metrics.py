"""Caption metrics equal pycocoevalcap's on the same tokenised inputs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from t5video.evaluate import caption_metrics as cm

JAVA = cm.java_tokenizer_available()
needs_java = pytest.mark.skipif(not JAVA, reason="Java or pycocoevalcap's CoreNLP jar missing")

HAND_CORPORA = [
    (  # ordinary captions, several references each
        {"v1": ["a man is playing a guitar", "a person plays the guitar on stage",
                "a man plays an acoustic guitar"],
         "v2": ["a woman is cooking in a kitchen", "someone is cooking food",
                "a lady stirs a pot in the kitchen"],
         "v3": ["two dogs run on the grass", "dogs are running in a park"]},
        {"v1": ["a man is playing the guitar"], "v2": ["a woman cooks food in a kitchen"],
         "v3": ["a dog is running"]},
    ),
    (  # exact matches, a one-word candidate, an empty candidate, repeated words
        {1: ["the cat sat on the mat", "a cat is on a mat"], 2: ["hello world"],
         3: ["a b c d e f g"], 4: ["x y z", "x x y y"], 5: ["red red red car"]},
        {1: ["the cat sat on the mat"], 2: ["hello"], 3: [""], 4: ["x x x x x"],
         5: ["red red red red red car car"]},
    ),
    (  # candidates longer and shorter than every reference
        {"a": ["one two three"], "b": ["four five six seven eight nine ten eleven"]},
        {"a": ["one two three four five six seven eight nine ten"], "b": ["four"]},
    ),
]


def _random_corpus(seed: int, num_videos: int, vocab_size: int):
  rng = random.Random(seed)
  vocab = [f"w{i}" for i in range(vocab_size)]

  def sentence():
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))

  refs = {f"vid{i}": [sentence() for _ in range(rng.randint(1, 5))] for i in range(num_videos)}
  cands = {}
  for key, rs in refs.items():
    if rng.random() < 0.3:  # a near copy of a reference, so high-order n-grams match
      words = rng.choice(rs).split()
      words[rng.randrange(len(words))] = rng.choice(vocab)
      cands[key] = [" ".join(words)]
    else:
      cands[key] = [sentence()]
  return refs, cands


ALL_CORPORA = HAND_CORPORA + [_random_corpus(s, n, v) for s, n, v in
                              [(0, 20, 8), (1, 50, 30), (2, 7, 4), (3, 2, 5)]]


@pytest.mark.parametrize("refs,cands", ALL_CORPORA)
def test_bleu_equals_pycocoevalcap(refs, cands):
  ours, ours_items = cm.bleu(refs, cands)
  theirs, theirs_items = Bleu(4).compute_score(refs, cands, verbose=0)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
  np.testing.assert_allclose(ours_items, theirs_items, rtol=0, atol=1e-9)


@pytest.mark.parametrize("refs,cands", ALL_CORPORA)
def test_cider_d_equals_pycocoevalcap(refs, cands):
  ours, ours_items = cm.cider_d(refs, cands)
  theirs, theirs_items = Cider().compute_score(refs, cands)
  assert abs(ours - theirs) < 1e-9
  np.testing.assert_allclose(ours_items, theirs_items, rtol=0, atol=1e-9)


@pytest.mark.parametrize("refs,cands", ALL_CORPORA)
def test_rouge_l_equals_pycocoevalcap(refs, cands):
  ours, ours_items = cm.rouge_l(refs, cands)
  theirs, theirs_items = Rouge().compute_score(refs, cands)
  assert abs(ours - theirs) < 1e-9
  np.testing.assert_allclose(ours_items, theirs_items, rtol=0, atol=1e-9)


def test_hand_computed_values():
  # ROUGE-L: LCS("a b c d", "a c e") = 2, P = 2/4, R = 2/3, beta = 1.2.
  p, r, b2 = 0.5, 2 / 3, 1.44
  _, scores = cm.rouge_l({0: ["a c e"]}, {0: ["a b c d"]})
  assert scores[0] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-12)
  # BLEU of a candidate equal to its only reference is 1 (up to the smoothing).
  corpus, _ = cm.bleu({0: ["a b c d e"]}, {0: ["a b c d e"]})
  np.testing.assert_allclose(corpus, [1.0] * 4, atol=1e-9)
  # BLEU-1 clips counts: "the the the" against "the cat" has 1 of 3 unigrams
  # right, and the candidate is longer, so no brevity penalty.
  corpus, _ = cm.bleu({0: ["the cat"]}, {0: ["the the the"]})
  assert corpus[0] == pytest.approx(1 / 3, abs=1e-9)
  # CIDEr-D: with one video every n-gram has idf log(1) - log(1) = 0.
  assert cm.cider_d({0: ["a b"]}, {0: ["a b"]})[0] == 0.0
  # Two videos, candidate equal to the single reference: every n-gram occurs in
  # one of two documents, all weights are equal to log 2, cosine 1 for n = 1, 2
  # (a 2-word sentence has no 3- or 4-grams), penalty 1: (1 + 1 + 0 + 0) / 4 * 10.
  score, items = cm.cider_d({0: ["a b"], 1: ["c d"]}, {0: ["a b"], 1: ["c d"]})
  np.testing.assert_allclose(items, [5.0, 5.0], atol=1e-12)


def test_compute_caption_metrics_and_errors():
  refs, cands = HAND_CORPORA[0]
  raw_refs = {k: [r.capitalize() + "." for r in v] for k, v in refs.items()}
  raw_cands = {k: v[0].upper() + "!" for k, v in cands.items()}  # bare strings are accepted
  out = cm.compute_caption_metrics(raw_refs, raw_cands, meteor=False, tokenizer="python")
  assert set(out) == {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"}
  assert out["CIDEr"] == pytest.approx(Cider().compute_score(refs, cands)[0], abs=1e-9)
  assert out["BLEU-4"] == pytest.approx(Bleu(4).compute_score(refs, cands, verbose=0)[0][3],
                                        abs=1e-9)
  assert 0 < out["BLEU-4"] < out["BLEU-1"] <= 1
  with pytest.raises(ValueError, match="same keys"):
    cm.compute_caption_metrics({"a": ["x"]}, {"b": ["x"]}, meteor=False)
  with pytest.raises(ValueError, match=r"cands\['a'\] must be a list holding exactly one"):
    cm.bleu({"a": ["x"]}, {"a": ["x", "y"]})
  with pytest.raises(ValueError, match=r"refs\['a'\] must be a non-empty list"):
    cm.rouge_l({"a": []}, {"a": ["x"]})
  with pytest.raises(ValueError, match="meteor must be"):
    cm.compute_caption_metrics(refs, cands, meteor="yes")


PTB_SENTENCES = [
    "A man is playing a guitar.", "Two dogs' toys are on the floor!",
    "A woman (in red) doesn't like it, right?", 'Hello... world!! "Yes," she said -- ok?',
    "I'm here, you're there, we've, they'll, he'd.", "Isn't it? Can't, won't, shan't.",
    "the man is 5.5 ft. tall. etc. vs. e.g. i.e. Dr. Smith",
    "A & B, 3-4 people, U.K. 1990s '90s o'clock O'Neil",
    "Mr. Smith went to Washington D.C. today.", "The U.S. army is marching; a crowd cheers: loudly",
    "50% of #1 $5.00 @home [x] {y}", "a,b 1,000 10:30 3.5.", "cannot gonna wanna", "",
    "A cartoon character   dances  ", "someone is cooking food in a kitchen - stirring",
    "a girl's hair is being braided by her mother's friend", "a cat 'sits' on a mat",
    "he says: \"let's go!\"", "a boy/girl is running", "kids' show; adults' show",
    "it's a 3-year-old child's toy", "what's up?", "A MAN IS SINGING ON STAGE.",
    "a chef slices onions...and garlic", "a red car drives fast--very fast", "there's a bird",
    "this is plan b.", "he is from the U.S. The end", "vitamin c. it is",
    "A caf\u00e9 with na\u00efve art \u2014 \u201cquoted\u201d text\u2026 ok",
    "don\u2019t it\u2019s \u2018hi\u2019 a\u2013b x \u2013 y",
]


def test_python_tokenizer_known_outputs():
  assert cm.ptb_tokenize_python("A man's dog (brown) doesn't run, e.g. U.S. fast.") == (
      "a man 's dog -lrb- brown -rrb- does n't run e.g. u.s. fast")
  assert cm.ptb_tokenize_python('He said: "I can\'t!" -- 1,000 times...') == (
      "he said i ca n't 1,000 times")
  # A single letter with a period is an initial and keeps it, as in PTB.
  out = cm.tokenize({"k": ["A dog.", "Plan B.", "C"], "j": []}, backend="python")
  assert out == {"k": ["a dog", "plan b.", "c"], "j": []}


@needs_java
def test_python_tokenizer_matches_java_ptb():
  caps = {i: [s] for i, s in enumerate(PTB_SENTENCES)}
  java = cm.tokenize(caps, backend="java")
  python = cm.tokenize(caps, backend="python")
  assert python == java


@needs_java
def test_java_tokenizer_equals_pycocoevalcap():
  caps = {"a": PTB_SENTENCES[:10], "b": PTB_SENTENCES[10:13] + PTB_SENTENCES[14:]}
  theirs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in caps.items()})
  assert cm.tokenize(caps, backend="java") == theirs


@needs_java
def test_raw_captions_pipeline_equals_pycocoevalcap():
  raw_refs = {"v1": ["A man is playing a guitar.", "A person plays the guitar on stage!"],
              "v2": ["Someone's cooking (pasta) in a kitchen.", "A woman cooks food."],
              "v3": ["Two dogs run, on the grass.", "Dogs are running -- in a park."]}
  raw_cands = {"v1": ["A man plays the guitar."], "v2": ["A woman is cooking pasta."],
               "v3": ["A dog's running on grass..."]}
  ptb = PTBTokenizer()
  refs = ptb.tokenize({k: [{"caption": c} for c in v] for k, v in raw_refs.items()})
  cands = ptb.tokenize({k: [{"caption": c} for c in v] for k, v in raw_cands.items()})
  out = cm.compute_caption_metrics(raw_refs, raw_cands, meteor=False, tokenizer="java")
  bleu_scores, _ = Bleu(4).compute_score(refs, cands, verbose=0)
  expected = {"CIDEr": Cider().compute_score(refs, cands)[0],
              "ROUGE-L": Rouge().compute_score(refs, cands)[0],
              **{f"BLEU-{k + 1}": b for k, b in enumerate(bleu_scores)}}
  assert out.keys() == expected.keys()
  for key, value in expected.items():
    assert out[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.slow
@pytest.mark.skipif(not cm.meteor_available(), reason="Java or the METEOR jar missing")
def test_meteor_equals_pycocoevalcap():
  refs, cands = HAND_CORPORA[0]
  refs = {**refs, "v4": ["a b c | d"]}
  cands = {**cands, "v4": ["a b ||| c"]}
  theirs = Meteor()
  try:
    their_score, their_items = theirs.compute_score(refs, cands)
  finally:
    del theirs
  with cm.MeteorScorer() as scorer:
    our_score, our_items = scorer.score(refs, cands)
    # The same process serves a second, different call.
    perfect, _ = scorer.score({0: ["a man is running"]}, {0: ["a man is running"]})
  assert our_score == pytest.approx(their_score, abs=1e-9)
  np.testing.assert_allclose(our_items, their_items, atol=1e-9)
  assert 0 < our_score < perfect <= 1.0


def test_without_java(monkeypatch):
  monkeypatch.setattr(cm, "_java", lambda: None)
  monkeypatch.setattr(cm, "_SHARED_METEOR", None)
  refs, cands = HAND_CORPORA[0]
  assert not cm.meteor_available() and not cm.java_tokenizer_available()
  out = cm.compute_caption_metrics(refs, cands)  # 'auto': Python tokenizer, METEOR left out
  assert "METEOR" not in out and out["CIDEr"] > 0
  with pytest.raises(RuntimeError, match="METEOR needs `java`"):
    cm.compute_caption_metrics(refs, cands, meteor=True)
  with pytest.raises(RuntimeError, match="Java PTB tokenizer needs `java`"):
    cm.tokenize(refs, backend="java")
