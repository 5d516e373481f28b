"""Grounding metrics against numbers produced by the reference evaluation scripts themselves.

The fixture (``tests/fixtures/grounding/``, 40 QVHighlights-layout queries with edge cases, 5
TVSum videos, 6 YouTube Highlights videos) and the reference outputs beside it were produced as
that folder's README.md records: moment_detr's ``standalone_eval/eval.py`` run by its own command
line, R2-Tuning's ``vtg_eval`` and its TVSum / YouTube ``evaluate`` methods, and moment_detr's
per-query AP functions unrounded. Our code shares nothing with them.
"""

import json
import math
import os

import numpy as np
import pytest

from t5video.evaluate import grounding

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "grounding")


def _load(name):
  with open(os.path.join(FIX, name)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def qvh():
  return (grounding.load_jsonl(os.path.join(FIX, "qvhighlights_preds.jsonl")),
          grounding.load_jsonl(os.path.join(FIX, "qvhighlights_gt.jsonl")))


def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, prefix + (k,))
  else:
    yield prefix, tree


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@pytest.mark.parametrize("protocol,reference", [
    ("moment_detr", "reference_moment_detr.json"),
    ("r2tuning", "reference_r2tuning_qvhighlights.json"),
])
def test_every_reference_number_matches(qvh, protocol, reference):
  """Every number of the reference's output (brief and detailed, rounded as it rounds) is ours."""
  ref = _load(reference)
  ours = grounding.evaluate_grounding(*qvh, protocol=protocol)
  leaves = list(_leaves(ref))
  assert len(leaves) > 60
  mismatches = [(p, v, _get(ours, p)) for p, v in leaves if abs(_get(ours, p) - v) > 1e-9]
  assert not mismatches, mismatches


def test_headline_keys_and_protocol_difference(qvh):
  ours = grounding.evaluate_grounding(*qvh)
  for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-short-mAP", "MR-middle-mAP",
              "MR-long-mAP", "MR-full-mIoU", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1",
              "HL-min-Good-mAP", "HL-min-Fair-Hit1"):
    assert key in ours["brief"], key
  r2 = grounding.evaluate_grounding(*qvh, protocol="r2tuning")
  # qid 14's 160 s window is 'long' only under R2-Tuning's unbounded range.
  assert ours["brief"]["MR-long-mAP"] != r2["brief"]["MR-long-mAP"]
  assert ours["brief"]["MR-full-mAP"] == r2["brief"]["MR-full-mAP"]


def test_per_query_ap_unrounded(qvh):
  """Per-query MR AP (10 thresholds) and per-annotator HD AP equal moment_detr's to 1e-12."""
  sub, gt = qvh
  ref = _load("reference_moment_detr_per_query.json")
  gt_by_qid = {g["qid"]: g for g in gt}
  for s in sub:
    r = ref[str(s["qid"])]
    g = gt_by_qid[s["qid"]]
    ap = grounding.detection_ap(np.array(g["relevant_windows"], dtype=float),
                                np.array(s["pred_relevant_windows"][:10], dtype=float))
    np.testing.assert_allclose(ap, r["mr_ap"], atol=1e-12, err_msg=f"qid {s['qid']}")
    scores = grounding.clip_scores(g)
    pred = np.zeros(len(scores))
    n = min(len(scores), len(s["pred_saliency_scores"]))
    pred[:n] = s["pred_saliency_scores"][:n]
    for level, thr in grounding.HL_LEVELS:
      for a in range(3):
        ours = grounding.saliency_ap((scores[:, a] >= thr).astype(float), pred)
        assert math.isclose(ours, r["hl_ap"][level][a], abs_tol=1e-12), (s["qid"], level, a)


def test_unrounded_means_round_to_the_reference(qvh):
  raw = grounding.evaluate_grounding(*qvh, decimals=None)
  ref = _load("reference_moment_detr.json")
  assert abs(raw["brief"]["MR-full-mAP"] - ref["brief"]["MR-full-mAP"]) <= 0.005 + 1e-9
  assert raw["brief"]["MR-full-mAP"] != ref["brief"]["MR-full-mAP"]   # really unrounded


def test_tvsum_and_youtube_match_r2tuning():
  ref = _load("reference_r2tuning_saliency.json")
  tv = _load("tvsum.json")
  ours = grounding.tvsum_top5_map([v["saliency"] for v in tv], [v["anno"] for v in tv])
  assert round(ours, 5) == ref["tvsum"]["mAP"]
  yt = _load("youtube.json")
  report = grounding.youtube_highlights_report(
      {d: [(v["saliency"], v["match"]) for v in vids] for d, vids in yt.items()})
  for d in yt:
    assert round(report[f"YouTube-{d}-mAP"], 5) == ref["youtube"][d]["mAP"], d
  assert math.isclose(report["YouTube-mAP"],
                      np.mean([report[f"YouTube-{d}-mAP"] for d in yt]))


def test_hand_computed_small_cases():
  # One query, ground truth [0, 10]; predictions [0, 10] (0.9), [20, 30] (0.8): AP 1 everywhere.
  ap = grounding.detection_ap(np.array([[0, 10]]), np.array([[20, 30, 0.8], [0, 10, 0.9]]))
  np.testing.assert_allclose(ap, 1.0)
  # The miss first: precision 1/2 at recall 1 -> AP 0.5.
  ap = grounding.detection_ap(np.array([[0, 10]]), np.array([[20, 30, 0.9], [0, 10, 0.8]]))
  np.testing.assert_allclose(ap, 0.5)
  # Saliency: labels [1, 0, 1], scores [0.9, 0.8, 0.1]: precisions 1 and 2/3 at the hits -> 5/6.
  assert math.isclose(grounding.saliency_ap(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.1])), 5 / 6)
  # Ties enter together: [1, 0] tied -> one point, precision 1/2.
  assert math.isclose(grounding.saliency_ap(np.array([1, 0]), np.array([0.5, 0.5])), 0.5)
  # Paired IoU uses the hull; disjoint windows have IoU 0.
  np.testing.assert_allclose(grounding.iou_paired(np.array([[0, 10], [0, 5]]),
                                                  np.array([[5, 15], [6, 9]])), [1 / 3, 0])


def test_mismatched_query_ids_are_an_error(qvh):
  sub, gt = qvh
  with pytest.raises(ValueError, match="different query ids"):
    grounding.evaluate_grounding(sub[:-1], gt)
  part = grounding.evaluate_grounding(sub[:-1], gt, match_number=False)
  assert part["brief"]["MR-full-mAP"] > 0
