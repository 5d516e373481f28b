"""R2-Tuning's evaluation: moment retrieval and highlight detection with controls and baselines.

The metrics are those of :mod:`t5video.evaluate.grounding` (equal to moment_detr's standalone
evaluation on a fixture), under the reference's names: ``MR-full-R1@0.5``, ``MR-full-R1@0.7``,
``MR-full-mAP``, ``MR-{short,middle,long}-mAP``, ``MR-full-mIoU``, ``HL-min-VeryGood-mAP``,
``HL-min-VeryGood-Hit1`` (and Fair / Good). Beside them, in the same run (``eval.controls``):

* ``control_text_only_<metric>``: every query scored by the trained model with its video's
  features replaced by those of a blank (mid-grey) video of the same length: what the query
  text and the video's length alone give.
* ``control_other_frames_<metric>``: every query scored against another video's features (a
  seeded derangement of the split's videos, :func:`t5video.evaluate.controls.derangement`),
  its own ground truth kept.
* ``control_text_only_trained_<metric>`` (``'text_only_trained'``): the recipe trained and
  evaluated on blank videos (a stage of the run). It learns the best length-and-text prior,
  which the trained model fed a blank video need not find, so it bounds what no pixels give
  more tightly than the blank-video control.
* ``baseline_centre_<metric>``: one window centred in the video, of the training split's mean
  relative length, and uniform saliency.
* Highlight detection (``eval.highlight_metric``: TVSum, YouTube Highlights): the metric of
  ``HIGHLIGHT_COLUMNS`` instead of the moment and QVHighlights metrics, and
  ``baseline_random_<metric>``, the mean over 20 seeded draws of uniformly random clip scores
  (flat scores would rank the first clips first, which says more about where the videos' events
  are than about chance). TVSum's validation split has one video per category, so the
  other-video control draws its donor from the training split's videos there.

Files: ``<workdir>/eval_metrics.json`` and ``<workdir>/predictions_<split>.jsonl`` (the
model's lines in the QVHighlights submission format).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import jax
import numpy as np

from t5video.evaluate import controls
from t5video.evaluate import grounding
from t5video.recipes.r2tuning import data as data_lib
from t5video.recipes.r2tuning import predict
from t5video.train import paths

TABLE_COLUMNS = (("R1@0.5", "MR-full-R1@0.5"), ("R1@0.7", "MR-full-R1@0.7"),
                 ("mAP", "MR-full-mAP"), ("mIoU", "MR-full-mIoU"),
                 ("HD mAP", "HL-min-VeryGood-mAP"), ("HIT@1", "HL-min-VeryGood-Hit1"))


HIGHLIGHT_COLUMNS = {"tvsum": (("top-5 mAP", "HL-TVSum-top5-mAP"),),
                     "youtube": (("mAP", "HL-YouTube-mAP"),)}


def metrics_of(lines: list[dict], queries: data_lib.QuerySet, config) -> dict[str, float]:
  """The metrics of ``eval.highlight_metric`` ('': moment retrieval and QVHighlights' highlight
  metrics, ``eval.protocol``) of the submission ``lines`` (percent)."""
  kind = config.eval.highlight_metric
  if not kind:
    return grounding.evaluate_grounding(lines, queries.rows, protocol=config.eval.protocol)["brief"]
  fps = float(config.data.fps)
  by_qid = {line["qid"]: line for line in lines}
  preds = [np.asarray(by_qid[r["qid"]]["pred_saliency_scores"]) if by_qid[r["qid"]].get("annotated")
           else data_lib.annotated_clip_scores(r, by_qid[r["qid"]]["pred_saliency_scores"], fps)
           for r in queries.rows]
  scores = [np.asarray(r["clip_scores"], np.float64) for r in queries.rows]
  if kind == "tvsum":
    return {"HL-TVSum-top5-mAP": round(100 * grounding.tvsum_top5_map(preds, scores), 2)}
  # a clip is a highlight when its score is above the middle of the range (YouTube: match > 0)
  match = [s.mean(axis=1) - sum(r["score_range"]) / 2 for s, r in zip(scores, queries.rows)]
  return {"HL-YouTube-mAP": round(100 * grounding.youtube_highlights_map(preds, match), 2)}


def centre_baseline(queries: data_lib.QuerySet, train: data_lib.QuerySet) -> list[dict]:
  """One centred window of the training queries' mean relative length; uniform saliency."""
  rel = [(w[1] - w[0]) / r["duration"] for r in train.rows for w in r.get("relevant_windows") or ()]
  frac = float(np.mean(rel)) if rel else 0.25
  lines = []
  for r in queries.rows:
    d = float(r["duration"])
    lines.append({"qid": r["qid"], "pred_relevant_windows": [[d * (1 - frac) / 2, d * (1 + frac) / 2, 1.0]],
                  "pred_saliency_scores": [1.0] * max(data_lib.num_metric_clips(d), 1)})
  return lines


def training_donor_source(task, queries: data_lib.QuerySet) -> data_lib.QuerySource:
  """The other-video control of a one-video split: each query keeps its own text features and is
  scored against a training video's features (seeded draw)."""
  c = task.config
  train = data_lib.read_queries(c.data, c.data.train_split)
  donor = np.random.default_rng(int(c.seed)).integers(0, len(train.videos), len(queries))
  feats = dataclasses.replace(task.features(queries), video_dir=task.features(train).video_dir)
  return data_lib.QuerySource(queries, feats, task.towers.vision_layers, c, donor=donor)


def random_saliency(queries: data_lib.QuerySet, seed: int) -> list[dict]:
  """Uniformly random scores drawn per annotated clip (the lines are marked ``annotated``:
  :func:`metrics_of` takes them as they are, without mapping sampled clips)."""
  rng = np.random.default_rng([seed, 7])
  return [{"qid": r["qid"], "pred_saliency_scores": rng.random(len(r["clip_scores"])).tolist(),
           "annotated": True} for r in queries.rows]


def run(task, params, *, split: Optional[str] = None, workdir: Optional[str] = None) -> dict[str, float]:
  """Evaluates ``params`` on ``split`` (default ``eval.split``); prints the table, writes the files."""
  c = task.config
  split = split or c.eval.split
  queries = data_lib.read_queries(c.data, split, int(c.eval.max_queries))
  lines = predict.predict_source(task, params, task.source(queries))
  out: dict[str, float] = dict(metrics_of(lines, queries, c))
  out["num_queries"] = len(queries)
  wanted = tuple(c.eval.controls)
  if "text_only" in wanted and not c.data.constant_pixels:
    blank = predict.predict_source(task, params, task.source(queries, blank=True))
    out.update(controls.prefixed("text_only", metrics_of(blank, queries, c)))
  if "other_frames" in wanted and len(queries.videos) >= 2:
    donor = controls.derangement(len(queries.videos), seed=int(c.seed))[queries.video_index]
    other = predict.predict_source(task, params, task.source(queries, donor=donor))
    out.update(controls.prefixed("other_frames", metrics_of(other, queries, c)))
  elif "other_frames" in wanted:   # a one-video split: donors from the training split
    other = predict.predict_source(task, params, training_donor_source(task, queries))
    out.update(controls.prefixed("other_frames", metrics_of(other, queries, c)))
  if "text_only_trained" in wanted:
    out.update({k.replace("control_text_only_", "control_text_only_trained_", 1): v
                for k, v in controls.text_only_metrics(workdir).items()})
  if c.eval.baselines and c.eval.highlight_metric:
    draws = [metrics_of(random_saliency(queries, seed), queries, c) for seed in range(20)]
    out.update({f"baseline_random_{k}": round(float(np.mean([d[k] for d in draws])), 2)
                for k in draws[0]})
  elif c.eval.baselines:
    train = data_lib.read_queries(c.data, c.data.train_split)
    base = metrics_of(centre_baseline(queries, train), queries, c)
    out.update({f"baseline_centre_{k}": v for k, v in base.items()})
  if jax.process_index() == 0:
    print(format_table(out, split, c.model.head, c.eval.highlight_metric), flush=True)
    if workdir:
      paths.write_text(paths.join(workdir, f"predictions_{split}.jsonl"),
                       "".join(json.dumps(line) + "\n" for line in lines))
      paths.write_text(paths.join(workdir, "eval_metrics.json"),
                       json.dumps(out, indent=2, default=float))
  return out


def format_table(m: dict[str, float], split: str, head: str = "r2", highlight_metric: str = "") -> str:
  """The model, its controls and the baseline in one table (percent)."""
  columns = HIGHLIGHT_COLUMNS.get(highlight_metric, TABLE_COLUMNS)
  rows = ((f"R2-Tuning ({head})", ""),
          ("control: blank video (text only)", "control_text_only_"),
          ("control: trained on blank videos", "control_text_only_trained_"),
          ("control: another video's features", "control_other_frames_"),
          ("baseline: centre window, flat saliency", "baseline_centre_"),
          ("baseline: random clip scores (20 draws)", "baseline_random_"))
  what = {"tvsum": "TVSum highlights", "youtube": "YouTube highlights"}.get(
      highlight_metric, "MR full, HD at VeryGood")
  lines = [f"temporal grounding on {split} ({int(m.get('num_queries', 0))} queries; {what}; %)",
           f"{'':40s} " + " ".join(f"{h:>9s}" for h, _ in columns)]
  for label, prefix in rows:
    cells = [m.get(prefix + key) for _, key in columns]
    if prefix and all(v is None for v in cells):
      continue
    lines.append(f"{label:40s} " + " ".join(f"{v:9.2f}" if v is not None else " " * 9 for v in cells))
  return "\n".join(lines)
