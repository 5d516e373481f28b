"""CLIP-guided concept sampling (t5video/recipes/captiont5/concepts.py): training draws k
distinct concepts with probability softmax(similarity / T); evaluation takes the top k."""

from __future__ import annotations

import numpy as np
import pytest

from t5video.recipes.captiont5 import concepts as concepts_lib

VOCAB = [f"c{i}" for i in range(6)]
SIMS = np.asarray([0.30, 0.10, 0.25, 0.05, 0.20, 0.15])


def test_top_concepts_best_first_ties_in_vocabulary_order():
  assert concepts_lib.top_concepts(VOCAB, SIMS, 3) == ["c0", "c2", "c4"]
  assert concepts_lib.top_concepts(["a", "b", "c"], np.zeros(3), 2) == ["a", "b"]


def test_sampled_concepts_are_distinct_best_first_and_reproducible():
  for seed in range(50):
    got = concepts_lib.sample_concepts(VOCAB, SIMS, 3, 0.1, np.random.default_rng(seed))
    assert len(set(got)) == 3 and set(got) <= set(VOCAB)
    order = [SIMS[VOCAB.index(c)] for c in got]
    assert order == sorted(order, reverse=True)
    assert got == concepts_lib.sample_concepts(VOCAB, SIMS, 3, 0.1, np.random.default_rng(seed))
  assert concepts_lib.sample_concepts(VOCAB, SIMS, 10, 0.1, np.random.default_rng(0)) == \
      concepts_lib.top_concepts(VOCAB, SIMS, 6)  # k above the vocabulary: all of it


def test_a_cold_draw_is_the_top_k():
  for seed in range(20):
    assert concepts_lib.sample_concepts(VOCAB, SIMS, 3, 1e-4, np.random.default_rng(seed)) == ["c0", "c2", "c4"]


def test_first_draw_follows_the_softmax():
  """With k = 1 the draw is one sample of softmax(sims / T): frequencies within 5 sigma."""
  t, n = 0.05, 20000
  p = np.exp(SIMS / t) / np.exp(SIMS / t).sum()
  rng = np.random.default_rng(0)
  counts = np.zeros(len(VOCAB))
  for _ in range(n):
    counts[VOCAB.index(concepts_lib.sample_concepts(VOCAB, SIMS, 1, t, rng)[0])] += 1
  sigma = np.sqrt(n * p * (1 - p))
  assert np.all(np.abs(counts - n * p) < 5 * sigma + 1), (counts, n * p)


def test_bad_arguments_say_which():
  with pytest.raises(ValueError, match="concept_temperature"):
    concepts_lib.sample_concepts(VOCAB, SIMS, 2, 0.0, np.random.default_rng(0))
  with pytest.raises(ValueError, match="one per concept"):
    concepts_lib.sample_concepts(VOCAB, SIMS[:3], 2, 0.1, np.random.default_rng(0))


def test_config_rejects_an_unknown_concept_draw():
  from t5video import config as config_lib
  from t5video.recipes.captiont5 import config as cfg
  c = config_lib.load_config_file("configs/captiont5/synthetic.py:runlocal")
  cfg.validate(c)
  with c.unlocked():
    c.thoughts.concept_train = "argmax"
  with pytest.raises(ValueError, match="thoughts.concept_train"):
    cfg.validate(c)
