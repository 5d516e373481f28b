"""Retrieval metrics on hand-computed similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest

from t5video.evaluate.retrieval import ranks_of_targets, retrieval_metrics


def _sort_based_ranks(sim):
  """An independent statement of CLIP4Clip's rule: position of the diagonal
  entry in the row sorted descending, 1-based (valid without ties)."""
  order = np.argsort(-sim, axis=1)  # [texts, videos] column indices, best first
  return 1 + np.argmax(order == np.arange(sim.shape[0])[:, None], axis=1)


def test_square_matrix_hand_computed():
  sim = np.array([[0.9, 0.1, 0.3],
                  [0.8, 0.5, 0.2],
                  [0.1, 0.7, 0.6]])
  out = retrieval_metrics(sim)
  # Text ranks 1, 2, 2 (rows); video ranks 1, 2, 1 (columns).
  assert out["text_to_video"] == pytest.approx(
      {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MedianR": 2.0, "MeanR": 5 / 3})
  assert out["video_to_text"] == pytest.approx(
      {"R@1": 200 / 3, "R@5": 100.0, "R@10": 100.0, "MedianR": 1.0, "MeanR": 4 / 3})


def test_random_matrices_match_sorting_definition():
  rng = np.random.default_rng(0)
  for n in (1, 7, 40):
    sim = rng.normal(size=(n, n))
    np.testing.assert_array_equal(ranks_of_targets(sim, np.arange(n)), _sort_based_ranks(sim))
    np.testing.assert_array_equal(ranks_of_targets(sim.T, np.arange(n)), _sort_based_ranks(sim.T))
    ranks = _sort_based_ranks(sim)
    out = retrieval_metrics(sim)["text_to_video"]
    assert out["R@5"] == pytest.approx(100 * np.mean(ranks <= 5))
    assert out["MedianR"] == np.median(ranks)


def test_r_at_10_and_perfect_retrieval():
  n = 20
  sim = np.eye(n)
  assert retrieval_metrics(sim)["text_to_video"] == pytest.approx(
      {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "MedianR": 1.0, "MeanR": 1.0})
  # Every text prefers the next 7 videos over its own: all ranks 8.
  sim = np.zeros((n, n))
  for i in range(n):
    sim[i, i] = 0.5
    for j in range(1, 8):
      sim[i, (i + j) % n] = 1.0
  out = retrieval_metrics(sim)["text_to_video"]
  assert out == pytest.approx({"R@1": 0.0, "R@5": 0.0, "R@10": 100.0, "MedianR": 8.0,
                               "MeanR": 8.0})


def test_multiple_captions_per_video():
  owner = np.array([0, 0, 1, 2, 2])
  sim = np.array([[0.9, 0.55, 0.1],    # t0 (video 0): rank 1
                  [0.3, 0.6, 0.1],     # t1 (video 0): rank 2
                  [0.4, 0.5, 0.45],    # t2 (video 1): rank 1
                  [0.2, 0.3, 0.1],     # t3 (video 2): rank 3
                  [0.1, 0.2, 0.35]])   # t4 (video 2): rank 1
  out = retrieval_metrics(sim, owner)
  assert out["text_to_video"] == pytest.approx(
      {"R@1": 60.0, "R@5": 100.0, "R@10": 100.0, "MedianR": 1.0, "MeanR": 1.6})
  # Caption groups scored by their best caption: g0 = [.9, .6, .1],
  # g1 = [.4, .5, .45], g2 = [.2, .3, .35] (scores against videos 0, 1, 2).
  # Video 0 ranks g0 first; video 1 sees .6 (g0) > .5 (g1): rank 2; video 2
  # sees .45 (g1) > .35 (g2): rank 2.
  assert out["video_to_text"] == pytest.approx(
      {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MedianR": 2.0, "MeanR": 5 / 3})
  # Over individual captions, video 1 is beaten by both captions of video 0: rank 3.
  any_cap = retrieval_metrics(sim, owner, video_to_text_mode="any_caption")["video_to_text"]
  assert any_cap == pytest.approx(
      {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MedianR": 2.0, "MeanR": 2.0})


def test_ties_and_errors():
  sim = np.array([[1.0, 1.0], [0.0, 1.0]])
  assert ranks_of_targets(sim, [0, 1]).tolist() == [1, 1]
  assert ranks_of_targets(sim, [0, 1], ties="pessimistic").tolist() == [2, 1]
  with pytest.raises(ValueError, match="needs text_to_video"):
    retrieval_metrics(np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"videos \[1\] have no caption"):
    retrieval_metrics(np.zeros((2, 2)), [0, 0])
  with pytest.raises(ValueError, match="NaN"):
    retrieval_metrics(np.array([[np.nan]]))
  with pytest.raises(ValueError, match="video_to_text_mode"):
    retrieval_metrics(np.eye(2), video_to_text_mode="mean")
