"""Classification and tagging metrics, rank classification and multi-view testing.

All accuracies, recalls and F1 scores here are fractions in [0, 1] (multiply
by 100 for the percentages papers print). Class predictions are integer
indices into the class list; ``-1`` means "no class" (a generated answer that
matches no class name) and counts as wrong for the sample's true class.

Two ways a text model classifies:

* **rank classification**: the decoder scores every class name
  (log-likelihood of its tokens, ``[N, C]``); :func:`rank_classification` turns
  the scores into predictions and class probabilities (for top-5 and
  multi-view aggregation);
* **free generation**: the decoder writes an answer; :func:`match_generated`
  normalises it and looks for a class name equal to it.
"""

from __future__ import annotations

import re
import string
from typing import Collection, Iterable, Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------


def _as_labels(labels, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must be 1-D [num_samples], got shape {labels.shape}")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
  return labels.astype(np.int64)


def _check_pair(preds: np.ndarray, labels: np.ndarray, num_classes: int | None) -> int:
  if preds.shape != labels.shape:
    raise ValueError(f"predictions {preds.shape} and labels {labels.shape} differ in shape")
  if labels.size == 0:
    raise ValueError("no samples to score")
  if labels.min() < 0:
    raise ValueError(f"labels must be class indices >= 0, got {labels.min()}")
  if preds.min() < -1:
    raise ValueError(f"predictions must be class indices or -1 (unmatched), got {preds.min()}")
  needed = int(max(labels.max(), preds.max())) + 1
  if num_classes is None:
    return needed
  if needed > num_classes:
    raise ValueError(f"a class index {needed - 1} is out of range for num_classes={num_classes}")
  return num_classes


# ---------------------------------------------------------------------------
# Scores -> accuracy.
# ---------------------------------------------------------------------------


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """Top-k accuracies from class scores.

  A sample counts as correct at k when fewer than k classes score strictly
  higher than its true class (ties resolved in its favour).

  Args:
    scores: ``[N, C]`` logits, log-likelihoods or probabilities.
    labels: ``[N]`` true class indices.
    ks: the k values; k larger than C counts every sample as correct.

  Returns:
    ``{'top1': .., 'top5': ..}`` (keys ``f'top{k}'``).
  """
  scores = np.asarray(scores, dtype=np.float64)
  labels = _as_labels(labels)
  if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
    raise ValueError(f"scores must be [num_samples={labels.shape[0]}, num_classes], "
                     f"got shape {scores.shape}")
  if labels.size == 0:
    raise ValueError("no samples to score")
  if labels.min() < 0 or labels.max() >= scores.shape[1]:
    raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got "
                     f"[{labels.min()}, {labels.max()}]")
  if np.isnan(scores).any():
    raise ValueError("scores contain NaN")
  true = scores[np.arange(len(labels)), labels][:, None]  # [N, 1]
  rank = 1 + np.sum(scores > true, axis=1)  # [N], 1-based
  return {f"top{k}": float(np.mean(rank <= k)) for k in ks}


def confusion_matrix(preds, labels, num_classes: int | None = None) -> np.ndarray:
  """``[C, C + 1]`` counts: row = true class, column = predicted class, last column = unmatched."""
  preds, labels = _as_labels(preds, "predictions"), _as_labels(labels)
  num_classes = _check_pair(preds, labels, num_classes)
  cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
  np.add.at(cm, (labels, np.where(preds < 0, num_classes, preds)), 1)
  return cm


def per_class_recall(preds, labels, num_classes: int | None = None) -> np.ndarray:
  """``[C]`` recall of every class; NaN for classes without test samples."""
  cm = confusion_matrix(preds, labels, num_classes)
  support = cm.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, np.diag(cm[:, :-1]) / np.maximum(support, 1), np.nan)


def per_class_f1(preds, labels, num_classes: int | None = None) -> np.ndarray:
  """``[C]`` F1 of every class (``2TP / (2TP + FP + FN)``); NaN where a class
  is neither in the labels nor predicted."""
  cm = confusion_matrix(preds, labels, num_classes)
  tp = np.diag(cm[:, :-1]).astype(np.float64)
  fn = cm.sum(axis=1) - tp
  fp = cm[:, :-1].sum(axis=0) - tp
  denom = 2 * tp + fp + fn
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def macro_f1(preds, labels, num_classes: int | None = None, *,
             over: str = "present") -> float:
  """Macro-averaged F1.

  Args:
    preds: ``[N]`` predicted class indices (-1 = unmatched).
    labels: ``[N]`` true class indices.
    num_classes: C; inferred from the data when None.
    over: ``'present'`` averages over the classes that occur in the labels or
      the predictions (scikit-learn's ``f1_score(average='macro')``);
      ``'all'`` averages over all C classes, counting absent ones as 0.
  """
  f1 = per_class_f1(preds, labels, num_classes)
  if over == "present":
    return float(np.nanmean(f1))
  if over == "all":
    return float(np.mean(np.nan_to_num(f1, nan=0.0)))
  raise ValueError(f"over must be 'present' or 'all', got {over!r}")


def split_head_tail(class_counts, *, threshold: float | None = None,
                    tail_classes: Collection[int] | None = None) -> np.ndarray:
  """``[C]`` bool, True for tail classes.

  Args:
    class_counts: ``[C]`` training-set frequency of every class.
    threshold: classes with fewer than ``threshold`` training samples are tail.
    tail_classes: the tail class indices, given explicitly (instead of
      ``threshold``).
  """
  counts = np.asarray(class_counts)
  if counts.ndim != 1:
    raise ValueError(f"class_counts must be 1-D [num_classes], got shape {counts.shape}")
  if (threshold is None) == (tail_classes is None):
    raise ValueError("give exactly one of threshold and tail_classes")
  if threshold is not None:
    return counts < threshold
  tail = np.zeros(counts.shape[0], dtype=bool)
  idx = np.asarray(sorted(tail_classes), dtype=np.int64)
  if idx.size and (idx.min() < 0 or idx.max() >= counts.shape[0]):
    raise ValueError(f"tail_classes must lie in [0, {counts.shape[0]}), got {idx.tolist()[:10]}")
  tail[idx] = True
  return tail


def head_tail_breakdown(preds, labels, class_counts, *, threshold: float | None = None,
                        tail_classes: Collection[int] | None = None) -> dict[str, float]:
  """Accuracy and mean per-class recall on head and on tail classes.

  Args:
    preds: ``[N]`` predicted class indices (-1 = unmatched).
    labels: ``[N]`` true class indices.
    class_counts: ``[C]`` training frequency of every class (defines C).
    threshold / tail_classes: see :func:`split_head_tail`.

  Returns:
    ``head_accuracy`` / ``tail_accuracy`` (over the test samples of head /
    tail classes), ``head_mean_recall`` / ``tail_mean_recall`` (the mean of the
    per-class recalls of the head / tail classes that have test samples; NaN
    when there are none), ``num_head_classes`` / ``num_tail_classes``.
  """
  preds, labels = _as_labels(preds, "predictions"), _as_labels(labels)
  tail = split_head_tail(class_counts, threshold=threshold, tail_classes=tail_classes)
  num_classes = tail.shape[0]
  recall = per_class_recall(preds, labels, num_classes)
  correct = preds == labels
  out = {}
  for name, mask in (("head", ~tail), ("tail", tail)):
    in_group = mask[labels]
    out[f"{name}_accuracy"] = float(np.mean(correct[in_group])) if in_group.any() else float("nan")
    group_recall = recall[mask]
    group_recall = group_recall[~np.isnan(group_recall)]
    out[f"{name}_mean_recall"] = float(np.mean(group_recall)) if group_recall.size else float("nan")
    out[f"num_{name}_classes"] = int(mask.sum())
  return out


def classification_report(labels, *, scores=None, predictions=None, class_counts=None,
                          tail_threshold: float | None = None,
                          tail_classes: Collection[int] | None = None,
                          num_classes: int | None = None) -> dict[str, float]:
  """The classification numbers t5video reports, in one dict.

  Args:
    labels: ``[N]`` true class indices.
    scores: ``[N, C]`` class scores (rank classification, CLIP logits); gives
      ``top1`` / ``top5`` and, when ``predictions`` is None, the argmax
      predictions.
    predictions: ``[N]`` predicted indices (e.g. matched free generations, -1
      unmatched); overrides the argmax of ``scores`` for everything but top-5.
    class_counts: ``[C]`` training frequencies; with ``tail_threshold`` or
      ``tail_classes``, adds :func:`head_tail_breakdown`.
    num_classes: C, when neither scores nor class_counts give it.

  Returns:
    ``accuracy``, ``macro_f1``, ``mean_recall`` (mean per-class recall over
    classes with test samples), ``top1``/``top5`` when scores are given, and the
    head/tail numbers when asked for.
  """
  labels = _as_labels(labels)
  out: dict[str, float] = {}
  if scores is not None:
    scores = np.asarray(scores)
    out.update(topk_accuracy(scores, labels, (1, 5)))
    num_classes = scores.shape[1] if num_classes is None else num_classes
  if predictions is None:
    if scores is None:
      raise ValueError("give scores or predictions")
    predictions = np.argmax(scores, axis=1)
  predictions = _as_labels(predictions, "predictions")
  if class_counts is not None and num_classes is None:
    num_classes = len(class_counts)
  out["accuracy"] = float(np.mean(predictions == labels))
  out["macro_f1"] = macro_f1(predictions, labels, num_classes)
  out["mean_recall"] = float(np.nanmean(per_class_recall(predictions, labels, num_classes)))
  if class_counts is not None and (tail_threshold is not None or tail_classes is not None):
    out.update(head_tail_breakdown(predictions, labels, class_counts, threshold=tail_threshold,
                                   tail_classes=tail_classes))
  return out


# ---------------------------------------------------------------------------
# Rank classification and free generation.
# ---------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = x - np.max(x, axis=axis, keepdims=True)
  e = np.exp(x)
  return e / np.sum(e, axis=axis, keepdims=True)


def rank_classification(log_likelihoods, class_lengths=None, *,
                        length_normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Predictions from the decoder's score of every class name.

  Args:
    log_likelihoods: ``[N, C]`` summed token log-probabilities of every class
      name given each input.
    class_lengths: ``[C]`` number of target tokens of every class name (with
      EOS), needed for ``length_normalize``.
    length_normalize: divide every score by its class name's length first, so
      long names are not penalised for their length.

  Returns:
    ``(predictions [N], probabilities [N, C])``: the argmax class, and the
    softmax over classes of the (normalised) scores, usable for top-5 and
    for multi-view aggregation.
  """
  ll = np.asarray(log_likelihoods, dtype=np.float64)
  if ll.ndim != 2:
    raise ValueError(f"log_likelihoods must be [num_samples, num_classes], got shape {ll.shape}")
  if np.isnan(ll).any():
    raise ValueError("log_likelihoods contain NaN")
  if length_normalize:
    if class_lengths is None:
      raise ValueError("length_normalize=True needs class_lengths")
    lengths = np.asarray(class_lengths, dtype=np.float64)
    if lengths.shape != (ll.shape[1],) or (lengths <= 0).any():
      raise ValueError(f"class_lengths must be [{ll.shape[1]}] positive counts, got {lengths}")
    ll = ll / lengths[None, :]  # [N, C]
  return np.argmax(ll, axis=1), _softmax(ll, axis=1)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})


def normalize_text(text: str) -> str:
  """Lower-cases, turns punctuation (``_`` and ``-`` included) into spaces,
  drops the articles a/an/the and collapses whitespace (SQuAD-style answer
  normalisation), so "Playing_guitar." and "playing the guitar" both become
  "playing guitar"."""
  text = text.lower().translate(_PUNCT_TABLE)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def match_generated(texts: Iterable[str], class_names: Sequence[str]) -> np.ndarray:
  """Maps generated answers to class indices by exact match after normalisation.

  Args:
    texts: the decoded answers.
    class_names: the class list.

  Returns:
    ``[N]`` int64 class indices, -1 where the answer matches no class name.
  """
  index: dict[str, int] = {}
  for i, name in enumerate(class_names):
    key = normalize_text(name)
    if not key:
      raise ValueError(f"class name {i} ({name!r}) is empty after normalisation")
    if key in index:
      raise ValueError(f"class names {index[key]} ({class_names[index[key]]!r}) and {i} "
                       f"({name!r}) normalise to the same text {key!r}")
    index[key] = i
  return np.asarray([index.get(normalize_text(t), -1) for t in texts], dtype=np.int64)


# ---------------------------------------------------------------------------
# Multi-view testing and base-to-novel.
# ---------------------------------------------------------------------------


def aggregate_views(logits, video_ids=None):
  """Multi-view testing: a softmax over classes per view, summed over views.

  Args:
    logits: ``[N, V, C]`` (V views of each of N videos), or ``[M, C]`` with
      ``video_ids``.
    video_ids: ``[M]`` the video of every row of a 2-D ``logits``.

  Returns:
    ``[N, C]`` summed probabilities for 3-D input; for 2-D input the pair
    ``(unique video ids [U] sorted, summed probabilities [U, C])``.
  """
  logits = np.asarray(logits, dtype=np.float64)
  if video_ids is None:
    if logits.ndim != 3:
      raise ValueError(f"logits must be [videos, views, classes] without video_ids, got "
                       f"shape {logits.shape}")
    return _softmax(logits, axis=-1).sum(axis=1)  # [N, C]
  if logits.ndim != 2:
    raise ValueError(f"with video_ids, logits must be [views, classes], got shape {logits.shape}")
  video_ids = np.asarray(video_ids)
  if video_ids.shape != (logits.shape[0],):
    raise ValueError(f"video_ids must have shape ({logits.shape[0]},), got {video_ids.shape}")
  unique, inverse = np.unique(video_ids, return_inverse=True)
  summed = np.zeros((unique.shape[0], logits.shape[1]))
  np.add.at(summed, inverse, _softmax(logits, axis=-1))
  return unique, summed


def harmonic_mean(base: float, novel: float) -> float:
  """Base-to-novel harmonic mean ``2 b n / (b + n)`` (0 when both are 0)."""
  if base < 0 or novel < 0:
    raise ValueError(f"accuracies must be non-negative, got base={base}, novel={novel}")
  return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


# ---------------------------------------------------------------------------
# Multi-label tags.
# ---------------------------------------------------------------------------


def multilabel_f1(predicted: Sequence[Collection[str]], true: Sequence[Collection[str]], *,
                  normalize: bool = True) -> dict[str, float]:
  """Micro and macro F1 of predicted tag sets against true tag sets.

  Args:
    predicted: one collection of tag strings per sample.
    true: one collection of tag strings per sample.
    normalize: compare tags after :func:`normalize_text`.

  Returns:
    ``micro_precision``, ``micro_recall``, ``micro_f1`` (from TP/FP/FN summed
    over all samples and tags) and ``macro_f1`` (the mean F1 over every tag
    that occurs in the true or predicted sets; scikit-learn's convention).
  """
  if isinstance(predicted, Mapping) or isinstance(true, Mapping):
    raise TypeError("predicted and true must be sequences of tag sets, aligned by sample")
  if len(predicted) != len(true):
    raise ValueError(f"{len(predicted)} predicted tag sets for {len(true)} true ones")
  if not true:
    raise ValueError("no samples to score")
  norm = normalize_text if normalize else (lambda s: s)
  tp: dict[str, int] = {}
  fp: dict[str, int] = {}
  fn: dict[str, int] = {}
  for i, (p, t) in enumerate(zip(predicted, true)):
    if isinstance(p, str) or isinstance(t, str):
      raise TypeError(f"sample {i}: tags must be a collection of strings, not a bare string")
    ps = {norm(x) for x in p} - {""}
    ts = {norm(x) for x in t} - {""}
    for tag in ps & ts:
      tp[tag] = tp.get(tag, 0) + 1
    for tag in ps - ts:
      fp[tag] = fp.get(tag, 0) + 1
    for tag in ts - ps:
      fn[tag] = fn.get(tag, 0) + 1
  total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
  precision = total_tp / (total_tp + total_fp) if total_tp + total_fp else 0.0
  recall = total_tp / (total_tp + total_fn) if total_tp + total_fn else 0.0
  micro = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  tags = set(tp) | set(fp) | set(fn)
  per_tag = [2 * tp.get(g, 0) / (2 * tp.get(g, 0) + fp.get(g, 0) + fn.get(g, 0)) for g in tags]
  return {"micro_precision": precision, "micro_recall": recall, "micro_f1": micro,
          "macro_f1": float(np.mean(per_tag)) if per_tag else 0.0}
