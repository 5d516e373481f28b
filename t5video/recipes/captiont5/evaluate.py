"""CaptionT5's evaluation protocol on ``config.data.eval_split``: captions by
greedy or beam search (optionally re-ranked with a video-text CLIP, and
optionally refined in a second pass that reads the first as a "draft"
thought), classes both by free generation and by rank classification (every
class name scored by the decoder), tags by generation; CIDEr-D, BLEU-4,
ROUGE-L (METEOR where Java is present), top-1/top-5, macro-F1, head/tail
recall and tag F1, beside trivial baselines (the most frequent training
caption, the class prior), sample captions, and robustness curves under
frame dropping and pixel noise. Generic metrics and plots: :mod:`t5video.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from t5video.data import decode as decode_lib
from t5video.data import pipeline
from t5video.data import thoughts as thoughts_lib
from t5video.data.records import VideoRecord
from t5video.evaluate import caption_metrics
from t5video.evaluate import classification as cls_metrics
from t5video.evaluate import report
from t5video.recipes.captiont5 import config as cfg
from t5video.train import paths


class EvalMixin:
  """CaptionT5Task's evaluation side."""

  # ---- evaluation -------------------------------------------------------------------
  def _eval_spec(self) -> decode_lib.SamplingSpec:
    return dataclasses.replace(self.spec, mode="uniform")

  def eval_records(self, split: Optional[str] = None) -> list[VideoRecord]:
    split = split or self.config.data.eval_split
    recs = self.records[split]
    n = self.config.eval.max_examples
    return recs[:n] if n else recs

  def _eval_loader(self, records, batch_size, split: Optional[str] = None):
    if self.features_shape:
      split = split or self.config.data.eval_split
      key = self.config.data.features_layer

      def rename(ex):
        ex = dict(ex)
        ex["features"] = ex.pop(key)
        return ex

      return pipeline.make_loader(
          self.feature_source(split), transform=pipeline.PassThrough(), extra_transforms=[rename],
          batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
          shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True)
    return pipeline.make_loader(
        records, transform=pipeline.VideoDecodeTransform(self._eval_spec(), train=False, seed=0,
                                                         decoder=self.frame_cache),
        batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
        shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True,
        read_threads=self.config.data.read_threads)

  def run_eval(self, params, records: Sequence[VideoRecord], *, corrupt=None) -> tuple[dict, list]:
    """Predictions and metrics on ``records``. ``corrupt(batch) -> (frames, frame_mask)``."""
    ev = self.config.eval
    refs, cands, rows = {}, {}, []
    labels, scores, gen_labels, tag_true, tag_pred = [], [], [], [], []
    for batch in self._eval_loader(list(records), ev.batch_size):
      if corrupt is not None:
        batch = dict(batch)
        batch["frames"], batch["frame_mask"] = corrupt(batch)
      pred = self.predict(params, batch)
      for i in range(len(batch["video_id"])):
        if not bool(batch["valid"][i]):
          continue
        vid = batch["video_id"][i]
        row = {"video_id": vid, "path": batch["path"][i]}
        if "caption" in pred and batch["captions"][i]:
          refs[vid], cands[vid] = list(batch["captions"][i]), [pred["caption"][i]]
          row.update(caption=pred["caption"][i], draft=pred["draft"][i],
                     references=list(batch["captions"][i]))
          if "candidates" in pred:
            row.update(model_caption=pred["model_caption"][i], candidates=pred["candidates"][i])
        if "class_scores" in pred and batch["label"][i]:
          labels.append(self.class_names.index(batch["label"][i]))
          scores.append(pred["class_scores"][i])
          gen_labels.append(pred["class_generated"][i])
          row.update(label=batch["label"][i],
                     class_ranked=self.class_names[int(np.argmax(pred["class_scores"][i]))],
                     class_generated=pred["class_generated"][i])
        if "tags" in pred and batch["tags"][i]:
          tag_true.append(set(batch["tags"][i]))
          tag_pred.append(thoughts_lib.parse_tags(pred["tags"][i]))
          row.update(tags=sorted(tag_pred[-1]), tags_true=sorted(tag_true[-1]))
        rows.append(row)
    metrics: dict[str, float] = {}
    if refs:
      metrics.update(caption_metrics.compute_caption_metrics(refs, cands,
                                                             meteor=cfg.meteor_flag(ev.meteor)))
    if labels:
      metrics.update(self._class_metrics(np.asarray(labels), np.stack(scores), gen_labels))
    if tag_true:
      metrics.update({f"tags_{k}": v for k, v in cls_metrics.multilabel_f1(tag_pred, tag_true).items()})
    metrics["num_examples"] = float(len(rows))
    return metrics, rows

  def tail_classes(self) -> list[int]:
    """Indices of the tail classes: the dataset's own head/tail split when it has
    one (the synthetic ``classes.json``), else classes with fewer training clips
    than ``eval.tail_fraction`` x the largest class."""
    path = os.path.join(self.root, "classes.json")
    if paths.exists(path):
      doc = json.loads(paths.read_text(path))
      tail = doc.get("tail") or [c["name"] for c in doc.get("classes", []) if c.get("tail")]
      if tail:
        return [self.class_names.index(c) for c in tail if c in self.class_names]
    counts = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names])
    return [int(i) for i in np.nonzero(counts < self.config.eval.tail_fraction * counts.max())[0]]

  def _class_metrics(self, labels: np.ndarray, scores: np.ndarray, generated: list[str],
                     prefix: str = "") -> dict:
    counts = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names])
    rep = cls_metrics.classification_report(labels, scores=scores, class_counts=counts,
                                            tail_classes=self.tail_classes())
    out = {f"{prefix}{k}": float(rep[k]) for k in
           ("top1", "top5", "macro_f1", "mean_recall", "head_mean_recall", "tail_mean_recall")}
    if generated is not None:
      gen = cls_metrics.match_generated(generated, self.class_names)
      out[f"{prefix}top1_generated"] = float(np.mean(gen == labels))
    return out

  def baselines(self, records: Sequence[VideoRecord]) -> dict[str, float]:
    """Trivial baselines on ``records``: the most frequent training caption for
    every clip; the most frequent training class for every clip (class prior)."""
    out = {}
    refs = {r.video_id: list(r.captions) for r in records if r.captions}
    if refs and self.caption_prior:
      top = self.caption_prior.most_common(1)[0][0]
      m = caption_metrics.compute_caption_metrics(refs, {k: [top] for k in refs}, meteor=False)
      out.update({f"baseline_caption_{k}": v for k, v in m.items()})
    lab = np.asarray([self.class_names.index(r.label) for r in records if r.label])
    if lab.size and self.train_class_counts:
      prior = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names], float)
      out.update(self._class_metrics(lab, np.tile(prior, (len(lab), 1)), None,
                                     prefix="baseline_prior_"))
    return out

  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    records = self.eval_records()
    metrics, rows = self.run_eval(params, records)
    metrics.update(self.baselines(records))
    if jax.process_index() == 0:
      paths.write_text(paths.join(workdir, f"samples_step{step}.jsonl"),
                       "".join(json.dumps(row) + "\n" for row in rows))
      paths.write_text(paths.join(workdir, "eval_metrics.json"), json.dumps(
          {"step": step, "split": self.config.data.eval_split, **metrics}, indent=2))
      print(format_table(metrics, step, self.config.data.eval_split), flush=True)
    return metrics


  def robustness(self, params, *, workdir: str, drop_rates=(0.0, 0.25, 0.5, 0.75),
                 noise_stds=(0.0, 10.0, 25.0, 50.0), seed: int = 0) -> dict[str, Any]:
    """Metric curves under frame dropping and Gaussian pixel noise (std in 0-255 units).

    Dropped frames are zeroed and masked out (at least one frame is kept); the
    same clips and the same random draws are used at every level.
    """
    records = self.eval_records()
    keys = ("CIDEr", "BLEU-4", "top1", "tags_micro_f1")
    curves: dict[str, Any] = {"drop": [], "noise": []}
    for rate in drop_rates:
      rng = np.random.default_rng(seed)

      def drop(batch, rate=rate, rng=rng):
        mask = np.asarray(batch["frame_mask"]).astype(bool).copy()
        b, t = mask.shape
        for i in range(b):
          k = min(int(round(rate * t)), t - 1)
          mask[i, rng.permutation(t)[:k]] = False
        frames = np.asarray(batch["frames"]) * mask[:, :, None, None, None]
        return frames.astype(np.uint8), mask.astype(np.int32)

      m, _ = self.run_eval(params, records, corrupt=drop)
      curves["drop"].append({"rate": rate, **{k: m.get(k) for k in keys}})
    for std in noise_stds:
      rng = np.random.default_rng(seed)

      def noise(batch, std=std, rng=rng):
        frames = np.asarray(batch["frames"], np.float32)
        frames = frames + rng.normal(0.0, std, frames.shape) if std else frames
        return np.clip(frames, 0, 255).astype(np.uint8), np.asarray(batch["frame_mask"], np.int32)

      m, _ = self.run_eval(params, records, corrupt=noise)
      curves["noise"].append({"std": std, **{k: m.get(k) for k in keys}})
    if jax.process_index() == 0:
      paths.write_text(paths.join(workdir, "robustness.json"), json.dumps(curves, indent=2))
      png = os.path.join(paths.local_mirror(workdir), "robustness.png")
      report.plot_robustness(curves, png)
    return curves



def format_table(m: dict[str, float], step: int, split: str) -> str:
  """The summary table printed after each evaluation."""
  def f(key, scale=100.0):
    return f"{scale * m[key]:7.2f}" if key in m else "      -"
  lines = [
      f"evaluation at step {step} on {split} ({int(m.get('num_examples', 0))} clips)",
      f"{'':22s} {'CIDEr':>7s} {'BLEU-4':>7s} {'ROUGE-L':>7s} {'top-1':>7s} {'macroF1':>7s} {'tail-R':>7s} {'tagF1':>7s}",
      f"{'CaptionT5':22s} {f('CIDEr')} {f('BLEU-4')} {f('ROUGE-L')} {f('top1')} {f('macro_f1')} {f('tail_mean_recall')} {f('tags_micro_f1')}",
      f"{'most frequent caption':22s} {f('baseline_caption_CIDEr')} {f('baseline_caption_BLEU-4')} {f('baseline_caption_ROUGE-L')}",
      f"{'class prior':22s} {'':7s} {'':7s} {'':7s} {f('baseline_prior_top1')} {f('baseline_prior_macro_f1')} {f('baseline_prior_tail_mean_recall')}",
      "(all numbers x100; CIDEr-D as pycocoevalcap reports it, x100)",
  ]
  return "\n".join(lines)
