"""Temporal-grounding metrics: moment retrieval (MR), highlight detection (HD), TVSum, YouTube.

The numbers equal those of the public evaluation scripts the papers report (checked on a fixture
by ``tests/test_grounding_metrics.py`` against outputs of the scripts themselves):

* ``protocol='moment_detr'``: QVHighlights' official ``standalone_eval/eval.py``
  (jayleicn/moment_detr). Moment lengths are bucketed short (0, 10], middle (10, 30],
  long (30, 150] seconds; ``full`` keeps every window unfiltered. R1 at IoU 0.5:0.05:0.95.
* ``protocol='r2tuning'``: the UniVTG-derived copy R2-Tuning evaluates with
  (``datasets/eval/evaluation.py``): ``long`` is (30, inf), an empty bucket falls back to the
  whole set, R1/R5 at IoU 0.3:0.05:0.95, and mIoU of the top-1 window.

Every protocol also reports ``MR-<range>-mIoU`` and R5 (extra keys; the moment_detr script has
neither). Definitions, as those scripts compute them:

* **R1@t**: the top-1 window of each query is compared with the ground-truth window it overlaps
  most; the hit rate of IoU >= t, in percent. mIoU is the mean of that IoU.
* **MR mAP**: per query, the first ``max_pred_windows`` (10) predicted windows sorted by score
  (stably: ties keep file order) are greedily matched to unmatched ground-truth windows at each
  IoU threshold 0.5:0.05:0.95 (a window takes the unmatched ground truth of highest IoU; on equal
  IoU the later ground-truth window, as the reference's ``argsort()[::-1]`` does for small arrays);
  AP is VOC-2011 interpolated (the area under the monotone precision envelope); mAP is the mean
  over queries, per threshold, then over thresholds.
* **HD** (``HL-min-<Fair|Good|VeryGood>``): a clip is positive for an annotator when that
  annotator's score is >= 2, 3 or 4. Saliency predictions are cut or zero-padded to
  ``int(duration / 2)`` clips. mAP: the mean over queries and annotators of the interpolated AP of
  the predicted clip scores against that annotator's labels (an annotator with no positive clip
  counts 0, one with only positives counts 1). HIT@1: the top-scored clip is a hit when *any*
  annotator marks it positive (the max over annotators).
* **TVSum top-5 mAP** and **YouTube Highlights mAP** follow R2-Tuning's ``TVSum.evaluate`` /
  ``YouTubeHighlights.evaluate`` (from UMT): clips are ranked by predicted saliency; the labels are
  ``score > median`` per annotator (torch's median: the lower middle value) for TVSum, cut to the
  top 5, and ``match > 0`` for YouTube; AP is the trapezoid rule over the ranked list starting
  from precision 1, with recall normalised by the positives *within the list considered*;
  averaged over videos (and TVSum's 20 annotators). Returned as fractions, unrounded.

Scores are in percent rounded to two decimals like the references (``decimals=None`` keeps the
unrounded values). Inputs are the QVHighlights JSONL records: a submission line
``{qid, pred_relevant_windows: [[start, end, score], ...], pred_saliency_scores: [...]}``, a
ground-truth line ``{qid, duration, relevant_windows, relevant_clip_ids, saliency_scores}``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

MR_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))   # 0.5 .. 0.95
HL_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Where the moment_detr script and its UniVTG/R2-Tuning copy differ."""
  name: str
  # (name, low, high): windows with low < length <= high; None = no filtering (``full``).
  length_ranges: tuple[tuple[str, float, float | None], ...]
  r1_thresholds: tuple[float, ...]
  empty_range_uses_all: bool       # an empty bucket: the whole set (True) or NaN metrics (False)


PROTOCOLS = {
    "moment_detr": Protocol(
        "moment_detr",
        (("short", 0, 10), ("middle", 10, 30), ("long", 30, 150), ("full", 0, None)),
        MR_IOU_THRESHOLDS, empty_range_uses_all=False),
    "r2tuning": Protocol(
        "r2tuning",
        (("short", 0, 10), ("middle", 10, 30), ("long", 30, float("inf")), ("full", 0, None)),
        tuple(round(0.3 + 0.05 * i, 2) for i in range(14)), empty_range_uses_all=True),
}


def load_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt(x: float, decimals: Optional[int]) -> float:
  # The references format with f"{x:.2f}" (round-half-even on the binary value); so do we.
  return float(x) if decimals is None else float(f"{x:.{decimals}f}")


# --------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------


def iou_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of every window in ``a [n, 2]`` with every window in ``b [m, 2]`` -> ``[n, m]``.

  ``union = |a| + |b| - intersection`` (the AP and best-window paths of the references); two
  empty windows at one point give NaN, as there.
  """
  a = np.asarray(a, dtype=np.float64)[:, :2]
  b = np.asarray(b, dtype=np.float64)[:, :2]
  inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1])
                  - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)   # [n, m]
  union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return inter / union


def iou_paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of ``a[i]`` with ``b[i]`` -> ``[n]``; the union is the hull (R1's path), 0 when empty."""
  a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
  b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
  inter = np.maximum(0, np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]))
  hull = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
  out = np.zeros_like(inter)
  np.divide(inter, hull, out=out, where=hull != 0)
  return out


# --------------------------------------------------------------------------------------------
# Moment retrieval
# --------------------------------------------------------------------------------------------


def detection_ap(gt_windows: np.ndarray, pred_windows: np.ndarray,
                 thresholds: Sequence[float] = MR_IOU_THRESHOLDS) -> np.ndarray:
  """AP of one query's scored windows ``[k, 3]`` against its ground truth ``[m, 2]`` -> ``[T]``."""
  pred = np.asarray(pred_windows, dtype=np.float64).reshape(-1, 3)
  gt = np.asarray(gt_windows, dtype=np.float64).reshape(-1, 2)
  t = len(thresholds)
  if len(pred) == 0:
    return np.zeros(t)
  pred = pred[np.argsort(-pred[:, 2], kind="stable")]
  iou = iou_cross(pred, gt)                                   # [k, m]
  m = gt.shape[0]
  tp = np.zeros((t, len(pred)))
  taken = np.zeros((t, m), dtype=bool)
  for i in range(len(pred)):
    # descending IoU; among equal IoUs the later ground-truth window first
    order = (m - 1 - np.argsort(-iou[i, ::-1], kind="stable")) if m else np.zeros(0, int)
    for ti, thr in enumerate(thresholds):
      for j in order:
        if iou[i, j] < thr:
          break
        if not taken[ti, j]:
          taken[ti, j] = True
          tp[ti, i] = 1
          break
  tp_cum = np.cumsum(tp, axis=1)                              # [T, k]
  fp_cum = np.cumsum(1 - tp, axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    recall = tp_cum / float(m)
  precision = tp_cum / (tp_cum + fp_cum)
  return np.array([_voc_interpolated_ap(precision[ti], recall[ti]) for ti in range(t)])


def _voc_interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
  """Area under the right-to-left running max of precision, sampled where recall changes."""
  p = np.concatenate([[0.0], precision, [0.0]])
  r = np.concatenate([[0.0], recall, [1.0]])
  p = np.maximum.accumulate(p[::-1])[::-1]
  steps = np.nonzero(r[1:] != r[:-1])[0] + 1
  return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def _filter_by_length(submission, ground_truth, low, high, protocol: Protocol):
  if high is None:
    return submission, ground_truth
  gt_in = []
  for g in ground_truth:
    kept = [w for w in g["relevant_windows"] if low < w[1] - w[0] <= high]
    if kept:
      gt_in.append({**g, "relevant_windows": kept})
  qids = {g["qid"] for g in gt_in}
  sub_in = [s for s in submission if s["qid"] in qids]
  if not gt_in and protocol.empty_range_uses_all:
    return submission, ground_truth
  return sub_in, gt_in


def _mr_map(submission, ground_truth, max_pred_windows, decimals):
  gt_by_qid = {}
  for g in ground_truth:
    gt_by_qid.setdefault(g["qid"], []).extend(w[:2] for w in g["relevant_windows"])
  aps = []
  for s in submission:
    windows = s["pred_relevant_windows"]
    if max_pred_windows is not None:
      windows = windows[:max_pred_windows]
    if not windows:
      continue   # the references skip a query without predicted windows
    aps.append(detection_ap(np.array(gt_by_qid.get(s["qid"], []), dtype=np.float64),
                            np.array(windows, dtype=np.float64)))
  per_thr = np.mean(np.array(aps), axis=0) if aps else np.full(len(MR_IOU_THRESHOLDS), np.nan)
  out = {str(t): _fmt(100 * v, decimals) for t, v in zip(MR_IOU_THRESHOLDS, per_thr)}
  out["average"] = _fmt(100 * np.mean(per_thr), decimals)
  return out


def _top1_ious(submission, ground_truth) -> np.ndarray:
  """IoU of each query's top-1 window with its best-overlapping ground-truth window."""
  top1 = {s["qid"]: s["pred_relevant_windows"][0][:2] for s in submission}
  best_gt = {}
  for g in ground_truth:
    windows = g["relevant_windows"]
    j = 0
    if windows:
      j = int(np.argmax(iou_cross(np.array([top1[g["qid"]]]), np.array(windows))[0]))
    best_gt[g["qid"]] = windows[j]
  qids = list(top1)
  return iou_paired(np.array([top1[q] for q in qids], dtype=np.float64),
                    np.array([best_gt[q][:2] for q in qids], dtype=np.float64))


def _top5_ious(submission, ground_truth) -> np.ndarray:
  """R5's IoU: the (prediction among the top 5, ground truth) pair of highest IoU, first found."""
  top5 = {s["qid"]: [w[:2] for w in s["pred_relevant_windows"][:5]] for s in submission}
  pairs = {}
  for g in ground_truth:
    windows, preds = g["relevant_windows"], top5[g["qid"]]
    i = j = 0
    if windows:
      iou = iou_cross(np.array(preds), np.array(windows))       # [<=5, m]
      iou[np.isnan(iou)] = 0
      i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)   # first max in row-major order
    pairs[g["qid"]] = (preds[i], windows[j][:2])
  qids = list(top5)
  return iou_paired(np.array([pairs[q][0] for q in qids], dtype=np.float64),
                    np.array([pairs[q][1] for q in qids], dtype=np.float64))


def _recall_at(ious: np.ndarray, thresholds, decimals):
  with np.errstate(invalid="ignore"):
    return {str(t): _fmt(100 * np.mean(ious >= t) if len(ious) else np.nan, decimals)
            for t in thresholds}


def moment_retrieval_metrics(submission: Sequence[Mapping], ground_truth: Sequence[Mapping],
                             protocol: str = "moment_detr", max_pred_windows: Optional[int] = 10,
                             decimals: Optional[int] = 2) -> dict[str, dict]:
  """``{range: {'MR-mAP': {thr: ..., 'average': ...}, 'MR-R1': {...}, 'MR-R5': {...},
  'MR-mIoU': ...}}`` for range in short / middle / long / full."""
  proto = PROTOCOLS[protocol]
  out = {}
  for name, low, high in proto.length_ranges:
    sub, gt = _filter_by_length(submission, ground_truth, low, high, proto)
    r1 = _top1_ious(sub, gt)
    out[name] = {
        "MR-mAP": _mr_map(sub, gt, max_pred_windows, decimals),
        "MR-R1": _recall_at(r1, proto.r1_thresholds, decimals),
        "MR-R5": _recall_at(_top5_ious(sub, gt), proto.r1_thresholds, decimals),
        "MR-mIoU": _fmt(100 * np.mean(r1) if len(r1) else np.nan, decimals),
    }
  return out


# --------------------------------------------------------------------------------------------
# Highlight detection (QVHighlights saliency)
# --------------------------------------------------------------------------------------------


def clip_scores(gt: Mapping, clip_length: float = 2.0) -> np.ndarray:
  """Annotator scores of every clip of the video, 0 outside ``relevant_clip_ids`` -> ``[clips, A]``."""
  scores = np.asarray(gt["saliency_scores"], dtype=np.float64)        # [relevant, A]
  full = np.zeros((int(gt["duration"] / clip_length), scores.shape[1]))
  full[np.asarray(gt["relevant_clip_ids"], dtype=np.int64)] = scores
  return full


def saliency_ap(labels: np.ndarray, scores: np.ndarray) -> float:
  """Interpolated AP of clip scores against 0/1 labels (the references' ``get_ap``).

  All-negative labels give 0, all-positive 1. Otherwise the precision-recall points are taken
  at every distinct score (ties enter together), down to the first point of full recall; each
  point's precision is replaced by the best precision at that or higher recall, and AP is the
  mean of those values over the points where recall grows.
  """
  labels = np.asarray(labels, dtype=np.float64)
  scores = np.asarray(scores, dtype=np.float64)
  if len(set(labels.tolist())) == 1:
    return 0.0 if labels[0] == 0 else 1.0
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], labels[order]
  last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]     # end of each score group
  tps = np.cumsum(y)[last_of_tie]
  precision = tps / (last_of_tie + 1)
  stop = int(np.searchsorted(tps, tps[-1]))                      # first point of full recall
  tps, precision = tps[:stop + 1], precision[:stop + 1]
  envelope = np.maximum.accumulate(precision[::-1])[::-1]        # best precision at >= recall
  grows = np.diff(np.r_[0.0, tps]) != 0
  return float(np.mean(envelope[grows]))


def highlight_metrics(submission: Sequence[Mapping], ground_truth: Sequence[Mapping],
                      clip_length: float = 2.0, decimals: Optional[int] = 2) -> dict[str, dict]:
  """``{'HL-min-<level>': {'HL-mAP': ..., 'HL-Hit1': ...}}`` for Fair (>=2), Good (>=3), VeryGood (>=4)."""
  gt_scores = {g["qid"]: clip_scores(g, clip_length) for g in ground_truth}
  out = {}
  for level, min_score in HL_LEVELS:
    hits, aps = [], []
    for s in submission:
      positive = (gt_scores[s["qid"]] >= min_score).astype(np.float64)  # [clips, A]
      pred = np.asarray(s["pred_saliency_scores"], dtype=np.float64)
      top = int(np.argmax(pred))
      hits.append(positive[top].max() if top < len(positive) else 0.0)
      aligned = np.zeros(len(positive))
      n = min(len(pred), len(positive))
      aligned[:n] = pred[:n]
      aps.extend(saliency_ap(positive[:, a], aligned) for a in range(positive.shape[1]))
    out[f"HL-min-{level}"] = {"HL-mAP": _fmt(100 * np.mean(aps), decimals),
                              "HL-Hit1": _fmt(100 * np.mean(hits), decimals)}
  return out


# --------------------------------------------------------------------------------------------
# Both, in the references' layout
# --------------------------------------------------------------------------------------------


def evaluate_grounding(submission: Sequence[Mapping], ground_truth: Sequence[Mapping],
                       protocol: str = "moment_detr", match_number: bool = True,
                       decimals: Optional[int] = 2) -> dict[str, Any]:
  """MR and HD metrics as the reference scripts lay them out, plus ``'brief'``: the flat dict of
  headline numbers (``MR-full-R1@0.5``, ``MR-full-mAP``, ``HL-min-VeryGood-mAP``, ...) that goes
  into ``final_metrics.json["eval"]``.

  Moment metrics are computed when the first submission line has ``pred_relevant_windows``,
  highlight metrics when it has ``pred_saliency_scores`` (and the ground truth has
  ``saliency_scores``). ``match_number``: require the same query ids on both sides (else keep
  the shared ones).
  """
  pred_q, gt_q = {s["qid"] for s in submission}, {g["qid"] for g in ground_truth}
  if match_number and pred_q != gt_q:
    raise ValueError(f"submission and ground truth have different query ids: "
                     f"{len(pred_q - gt_q)} only predicted, {len(gt_q - pred_q)} only annotated "
                     f"(pass match_number=False to evaluate the shared ones)")
  shared = pred_q & gt_q
  submission = [s for s in submission if s["qid"] in shared]
  ground_truth = [g for g in ground_truth if g["qid"] in shared]
  if not submission:
    raise ValueError("no query to evaluate")
  detailed: dict[str, Any] = {}
  brief: dict[str, float] = {}
  if "pred_relevant_windows" in submission[0]:
    mr = moment_retrieval_metrics(submission, ground_truth, protocol, decimals=decimals)
    detailed.update(mr)
    brief.update({
        "MR-full-mAP": mr["full"]["MR-mAP"]["average"],
        "MR-full-mAP@0.5": mr["full"]["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": mr["full"]["MR-mAP"]["0.75"],
        "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
        "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
        "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
        "MR-full-mIoU": mr["full"]["MR-mIoU"],
        "MR-full-R1@0.5": mr["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": mr["full"]["MR-R1"]["0.7"],
    })
    if "0.3" in mr["full"]["MR-R1"]:
      brief["MR-full-R1@0.3"] = mr["full"]["MR-R1"]["0.3"]
      for name in ("short", "middle", "long"):
        brief[f"MR-{name}-mIoU"] = mr[name]["MR-mIoU"]
      for t in ("0.3", "0.5", "0.7"):
        brief[f"MR-full-R5@{t}"] = mr["full"]["MR-R5"][t]
    brief = dict(sorted(brief.items()))
  if "pred_saliency_scores" in submission[0] and "saliency_scores" in ground_truth[0]:
    hl = highlight_metrics(submission, ground_truth, decimals=decimals)
    detailed.update(hl)
    for level, _ in HL_LEVELS:
      brief[f"HL-min-{level}-mAP"] = hl[f"HL-min-{level}"]["HL-mAP"]
      brief[f"HL-min-{level}-Hit1"] = hl[f"HL-min-{level}"]["HL-Hit1"]
  return {"brief": brief, **dict(sorted(detailed.items()))}


# --------------------------------------------------------------------------------------------
# TVSum and YouTube Highlights
# --------------------------------------------------------------------------------------------


def _ranked_list_ap(labels: Sequence[float]) -> float:
  """Trapezoid AP over a ranked 0/1 list, recall normalised by the list's own positives."""
  labels = np.asarray(labels, dtype=np.float64)
  total = labels.sum()
  if total == 0:
    return 0.0
  hits = np.cumsum(labels)
  recall = np.r_[0.0, hits / total]
  precision = np.r_[1.0, hits / np.arange(1, len(labels) + 1)]
  return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def _lower_median(x: np.ndarray) -> float:
  return float(np.sort(x)[(len(x) - 1) // 2])


def tvsum_top5_map(saliency: Sequence[Sequence[float]], annotations: Sequence[np.ndarray],
                   k: int = 5) -> float:
  """TVSum top-k mAP (fraction): per annotator, the mean over videos of the AP of the top-k clips.

  Args:
    saliency: per video, the predicted score of every clip ``[clips]``.
    annotations: per video, the importance scores ``[clips, annotators]`` (TVSum: 20, 1..5).
  """
  num_annotators = np.asarray(annotations[0]).shape[1]
  per_annotator = []
  for a in range(num_annotators):
    aps = []
    for pred, anno in zip(saliency, annotations):
      col = np.asarray(anno, dtype=np.float64)[:, a]
      positive = (col > _lower_median(col)).astype(np.float64)
      order = np.argsort(-np.asarray(pred, dtype=np.float64), kind="stable")
      aps.append(_ranked_list_ap(positive[order][:k]))
    per_annotator.append(np.mean(aps))
  return float(np.mean(per_annotator))


def youtube_highlights_map(saliency: Sequence[Sequence[float]],
                           match: Sequence[Sequence[float]]) -> float:
  """YouTube Highlights mAP (fraction) of one domain: clips with ``match > 0`` are highlights."""
  aps = []
  for pred, m in zip(saliency, match):
    positive = (np.asarray(m, dtype=np.float64) > 0).astype(np.float64)
    order = np.argsort(-np.asarray(pred, dtype=np.float64), kind="stable")
    aps.append(_ranked_list_ap(positive[order]))
  return float(np.mean(aps))


def youtube_highlights_report(domains: Mapping[str, Iterable[tuple[Sequence[float], Sequence[float]]]]
                              ) -> dict[str, float]:
  """``{'YouTube-<domain>-mAP': ..., 'YouTube-mAP': mean over domains}`` from
  ``{domain: [(saliency, match), ...]}``."""
  out = {}
  for domain, videos in domains.items():
    videos = list(videos)
    out[f"YouTube-{domain}-mAP"] = youtube_highlights_map([v[0] for v in videos],
                                                          [v[1] for v in videos])
  out["YouTube-mAP"] = float(np.mean(list(out.values())))
  return out
