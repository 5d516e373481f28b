"""Classification, tagging, rank-classification and multi-view metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from t5video.evaluate import classification as cls

# Eight samples, four classes; -1 is an unmatched free generation.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3])
PREDS = np.array([0, 0, 1, 1, -1, 2, 0, 2])
# Per class (TP, FP, FN): 0 -> (2, 1, 1); 1 -> (1, 1, 1); 2 -> (1, 1, 1); 3 -> (0, 0, 1).
F1 = [4 / 6, 2 / 4, 2 / 4, 0.0]
RECALL = [2 / 3, 1 / 2, 1 / 2, 0.0]


def test_topk_accuracy():
  scores = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.4],   # label 2: rank 4
                     [0.9, 0.0, 0.1, 0.2, 0.3, 0.4],   # label 0: rank 1
                     [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])  # label 5: rank 6
  out = cls.topk_accuracy(scores, [2, 0, 5], ks=(1, 3, 5, 6))
  assert out == pytest.approx({"top1": 1 / 3, "top3": 1 / 3, "top5": 2 / 3, "top6": 1.0})
  with pytest.raises(ValueError, match="labels must lie in"):
    cls.topk_accuracy(scores, [0, 0, 6])


def test_f1_recall_and_macro():
  np.testing.assert_allclose(cls.per_class_f1(PREDS, LABELS), F1)
  np.testing.assert_allclose(cls.per_class_recall(PREDS, LABELS), RECALL)
  assert cls.macro_f1(PREDS, LABELS) == pytest.approx(sum(F1) / 4)
  # A fifth class absent from labels and predictions: ignored by default,
  # counted as 0 with over='all'.
  assert cls.macro_f1(PREDS, LABELS, 5) == pytest.approx(sum(F1) / 4)
  assert cls.macro_f1(PREDS, LABELS, 5, over="all") == pytest.approx(sum(F1) / 5)
  recall5 = cls.per_class_recall(PREDS, LABELS, 5)
  assert math.isnan(recall5[4])
  cm = cls.confusion_matrix(PREDS, LABELS)
  assert cm.shape == (4, 5) and cm[1, 4] == 1 and cm[2, 0] == 1 and cm.sum() == 8
  with pytest.raises(ValueError, match="out of range for num_classes=3"):
    cls.macro_f1(PREDS, LABELS, 3)


def test_head_tail_breakdown():
  counts = [100, 50, 5, 2, 1]  # tail (< 10): classes 2, 3, 4; class 4 has no test sample
  out = cls.head_tail_breakdown(PREDS, LABELS, counts, threshold=10)
  assert out == pytest.approx({
      "head_accuracy": 3 / 5, "tail_accuracy": 1 / 3,
      "head_mean_recall": (2 / 3 + 1 / 2) / 2, "tail_mean_recall": (1 / 2 + 0) / 2,
      "num_head_classes": 2, "num_tail_classes": 3})
  same = cls.head_tail_breakdown(PREDS, LABELS, counts, tail_classes={2, 3, 4})
  assert same == out
  with pytest.raises(ValueError, match="exactly one of"):
    cls.head_tail_breakdown(PREDS, LABELS, counts)


def test_classification_report():
  scores = np.eye(4)[np.array([0, 0, 1, 1, 3, 2, 0, 2])] + 0.1 * np.eye(4)[LABELS]
  out = cls.classification_report(LABELS, scores=scores, predictions=PREDS,
                                  class_counts=[100, 50, 5, 2], tail_threshold=10)
  assert out["accuracy"] == 0.5
  assert out["macro_f1"] == pytest.approx(sum(F1) / 4)
  assert out["mean_recall"] == pytest.approx(sum(RECALL) / 4)
  # Scores rank the true class first for samples 0, 1, 3, 5 and second otherwise.
  assert out["top1"] == pytest.approx(4 / 8) and out["top5"] == 1.0
  assert out["tail_mean_recall"] == pytest.approx(0.25)
  argmax_only = cls.classification_report(LABELS, scores=scores)
  assert argmax_only["accuracy"] == pytest.approx(4 / 8)


def test_rank_classification():
  ll = np.array([[-4.0, -3.0], [-1.0, -5.0]])
  preds, probs = cls.rank_classification(ll)
  assert preds.tolist() == [1, 0]
  np.testing.assert_allclose(probs[0], [1 / (1 + math.e), math.e / (1 + math.e)])
  # Per token, the 4-token class 0 (-1 per token) beats the 2-token class 1 (-1.5).
  preds, _ = cls.rank_classification(ll, class_lengths=[4, 2], length_normalize=True)
  assert preds.tolist() == [0, 0]
  with pytest.raises(ValueError, match="needs class_lengths"):
    cls.rank_classification(ll, length_normalize=True)


def test_free_generation_matching():
  names = ["playing guitar", "Riding_a_bike", "dog"]
  texts = ["Playing the guitar.", "riding bike", "cat", "DOG!", "a dog running"]
  assert cls.match_generated(texts, names).tolist() == [0, 1, -1, 2, -1]
  assert cls.normalize_text("  The  Man-made_Lake! ") == "man made lake"
  with pytest.raises(ValueError, match="normalise to the same text 'dog'"):
    cls.match_generated(["dog"], ["a dog", "dog"])


def test_multi_view_aggregation():
  logits = np.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # one video, two views
  np.testing.assert_allclose(cls.aggregate_views(logits), [[1.25, 0.75]])
  ids, summed = cls.aggregate_views(np.array([[0.0, 0.0], [5.0, 5.0], [math.log(3.0), 0.0]]),
                                    video_ids=["b", "a", "b"])
  assert ids.tolist() == ["a", "b"]
  np.testing.assert_allclose(summed, [[0.5, 0.5], [1.25, 0.75]])
  # Summing per-view probabilities is not summing logits: one over-confident
  # view wins in logit space but not in probability space.
  views = np.array([[[8.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])
  assert np.argmax(views.sum(axis=1)) == 0
  assert np.argmax(cls.aggregate_views(views)) == 1


def test_harmonic_mean():
  assert cls.harmonic_mean(0.8, 0.6) == pytest.approx(0.96 / 1.4)
  assert cls.harmonic_mean(0.0, 0.0) == 0.0
  assert cls.harmonic_mean(0.5, 0.5) == pytest.approx(0.5)


def test_multilabel_f1():
  pred = [{"dog", "grass"}, {"Cat"}, set()]
  true = [{"dog", "park"}, {"cat", "sofa"}, {"the bird"}]
  out = cls.multilabel_f1(pred, true)
  # TP = {dog, cat}, FP = {grass}, FN = {park, sofa, bird}.
  assert out == pytest.approx({"micro_precision": 2 / 3, "micro_recall": 2 / 5,
                               "micro_f1": 0.5, "macro_f1": 2 / 6})
  strict = cls.multilabel_f1(pred, true, normalize=False)
  assert strict["micro_precision"] == pytest.approx(1 / 3)
  with pytest.raises(TypeError, match="bare string"):
    cls.multilabel_f1(["dog"], [{"dog"}])
