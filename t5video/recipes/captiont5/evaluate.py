"""CaptionT5's evaluation protocol on ``config.data.eval_split``: captions by
greedy or beam search (optionally re-ranked with a video-text CLIP, and
optionally refined in a second pass that reads the first as a "draft"
thought), classes both by free generation and by rank classification (every
class name scored by the decoder), tags by generation; CIDEr-D, BLEU-4,
ROUGE-L (METEOR where Java is present), top-1/top-5, macro-F1, head/tail
recall and tag F1, beside trivial baselines (the most frequent training
caption, the class prior) and the controls of ``eval.controls`` (the model fed
other clips' frames; the same recipe trained on constant pixels:
:mod:`t5video.evaluate.controls`), the per-attribute accuracy of the captions
where the data knows the truth (:mod:`t5video.evaluate.attributes`), sample
captions, and robustness curves under frame dropping and pixel noise.

Multi-host: each process predicts its share of the clips and the rows are
gathered before any metric is computed (:meth:`EvalMixin.run_eval`). Generic
metrics and plots: :mod:`t5video.evaluate`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from t5video.data import decode as decode_lib
from t5video.data import pipeline
from t5video.data import qa as qa_lib
from t5video.data import thoughts as thoughts_lib
from t5video.data.records import VideoRecord
from t5video.evaluate import attributes
from t5video.evaluate import caption_metrics
from t5video.evaluate import classification as cls_metrics
from t5video.evaluate import controls as controls_lib
from t5video.evaluate import hosts
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
          FeatureView(self.feature_source(split), records, key), transform=pipeline.PassThrough(),
          extra_transforms=[rename, *self.frame_transforms()],
          batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
          shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True)
    return pipeline.make_loader(
        records, transform=pipeline.VideoDecodeTransform(self._eval_spec(), train=False, seed=0,
                                                         decoder=self.frame_cache),
        batch_size=batch_size, seed=0, shuffle=False, num_epochs=1, shard_index=0,
        shard_count=1, worker_count=0, drop_remainder=False, pad_to_batch=True,
        read_threads=self.config.data.read_threads, extra_transforms=self.frame_transforms())

  def run_eval(self, params, records: Sequence[VideoRecord], *, corrupt=None) -> tuple[dict, list]:
    """Predictions and metrics on ``records``. ``corrupt(batch) -> (frames, frame_mask)``.

    Each process predicts its share of the records (:mod:`t5video.evaluate.hosts`);
    the rows are gathered on every process, put back in the order of ``records``,
    and the metrics computed from them alone (:meth:`metrics_from_rows`).
    """
    records = list(records)
    mine = self.eval_rows(hosts.local_params(params), hosts.share(records), corrupt=corrupt)
    order: dict[str, int] = {}
    for i, r in enumerate(records):
      order.setdefault(r.video_id, i)
    rows = sorted((row for part in hosts.per_process(mine) for row in part),
                  key=lambda row: order.get(row["video_id"], len(records)))
    return (self.metrics_from_rows(rows),
            [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows])

  def eval_rows(self, params, records: Sequence[VideoRecord], *, corrupt=None) -> list[dict]:
    """One row per clip of ``records`` that decoded: its predictions and what the metrics
    need (keys starting with ``_`` are not written to the samples file)."""
    ev = self.config.eval
    truth = {r.video_id: r.extra.get("attributes") for r in records}
    qa = ({r.video_id: r.extra["qa"] for r in records if r.extra.get("qa")}
          if cfg.evaluates_qa(self.config) else {})
    rows: list[dict] = []
    if not records:  # a process with no share (fewer clips than processes)
      return rows
    for batch in self._eval_loader(list(records), ev.batch_size):
      if corrupt is not None:
        batch = dict(batch)
        batch["frames"], batch["frame_mask"] = corrupt(batch)
      pred = self.predict(params, batch)
      pairs = [qa.get(v, []) if bool(ok) else [] for v, ok in zip(batch["video_id"], batch["valid"])]
      answers = self.answer_questions(params, batch, pairs) if any(pairs) else [[] for _ in pairs]
      for i in range(len(batch["video_id"])):
        if not bool(batch["valid"][i]):
          continue
        vid = batch["video_id"][i]
        row = {"video_id": vid, "path": batch["path"][i]}
        if pairs[i]:
          row["qa"] = [{"question": p["question"], "answer": p["answer"], "predicted": a,
                        "type": p.get("type", ""), "correct": qa_lib.is_correct(a, p),
                        "open": not p.get("choices")}
                       for p, a in zip(pairs[i], answers[i])]
        if "caption" in pred and batch["captions"][i]:
          row.update(caption=pred["caption"][i], draft=pred["draft"][i],
                     references=list(batch["captions"][i]))
          if "candidates" in pred:
            row.update(model_caption=pred["model_caption"][i], candidates=pred["candidates"][i])
          if "concepts" in pred:  # the concept thought this clip's frames got
            row["concepts"] = list(pred["concepts"][i] or [])
          if truth.get(vid):
            row["attributes_true"] = truth[vid]
        if "class_scores" in pred and batch["label"][i]:
          row.update(label=batch["label"][i],
                     class_ranked=self.class_names[int(np.argmax(pred["class_scores"][i]))],
                     class_generated=pred["class_generated"][i],
                     _class_scores=np.asarray(pred["class_scores"][i]))
        if "tags" in pred and batch["tags"][i]:
          row.update(tags=sorted(thoughts_lib.parse_tags(pred["tags"][i])),
                     tags_true=sorted(set(batch["tags"][i])))
        rows.append(row)
    return rows

  def metrics_from_rows(self, rows: Sequence[dict]) -> dict:
    """Caption metrics, classification and tag metrics of :meth:`eval_rows`' rows, and the
    per-attribute accuracy of the captions where the records carry the truth (the synthetic
    generator's ``attributes``; :mod:`t5video.evaluate.attributes`)."""
    metrics: dict[str, float] = {}
    captioned = [r for r in rows if "caption" in r]
    if captioned:
      metrics.update(caption_metrics.compute_caption_metrics(
          {r["video_id"]: r["references"] for r in captioned},
          {r["video_id"]: [r["caption"]] for r in captioned}, meteor=cfg.meteor_flag(self.config.eval.meteor)))
      known = [r for r in captioned if r.get("attributes_true")]
      if known:
        metrics.update(attributes.attribute_accuracy(
            [r["caption"] for r in known], [r["attributes_true"] for r in known],
            attributes.synthetic_vocabulary()))
    labelled = [r for r in rows if "label" in r]
    if labelled:
      labels = np.asarray([self.class_names.index(r["label"]) for r in labelled])
      scores = np.stack([r["_class_scores"] for r in labelled])  # [N, C] summed log-likelihoods
      metrics.update(self._class_metrics(labels, scores, [r["class_generated"] for r in labelled]))
      # The same ranking with each class name's score divided by its length in tokens (EOS included),
      # so that a long name ("grows then shrinks") is not out-ranked for being long.
      _, normalised = cls_metrics.rank_classification(scores, self.class_name_lengths(), length_normalize=True)
      metrics.update(self._class_metrics(labels, normalised, None, prefix="length_normalised_"))
    tagged = [r for r in rows if "tags_true" in r]
    if tagged:
      metrics.update({f"tags_{k}": v for k, v in cls_metrics.multilabel_f1(
          [set(r["tags"]) for r in tagged], [set(r["tags_true"]) for r in tagged]).items()})
    metrics.update(qa_lib.accuracy([q for r in rows for q in r.get("qa", ())]))
    metrics["num_examples"] = float(len(rows))
    return metrics

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

  def class_name_lengths(self) -> np.ndarray:
    """``[C]`` target tokens of every class name as rank classification scores it (EOS included)."""
    _, mask = self.tokenizer.encode_batch(self.class_names, self.config.text.max_target_len)
    return np.maximum(np.asarray(mask).sum(-1), 1).astype(np.float64)

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
    every clip (with the attributes it names, where the records carry the truth);
    the most frequent training class for every clip (class prior)."""
    out = {}
    refs = {r.video_id: list(r.captions) for r in records if r.captions}
    if refs and self.caption_prior:
      top = self.caption_prior.most_common(1)[0][0]
      m = caption_metrics.compute_caption_metrics(refs, {k: [top] for k in refs}, meteor=False)
      truths = [r.extra["attributes"] for r in records if r.captions and r.extra.get("attributes")]
      if truths:
        m.update(attributes.attribute_accuracy([top] * len(truths), truths, attributes.synthetic_vocabulary()))
      out.update({f"baseline_caption_{k}": v for k, v in m.items()})
    if cfg.evaluates_qa(self.config):
      out.update(self.qa_baseline(records))
    lab = np.asarray([self.class_names.index(r.label) for r in records if r.label])
    if lab.size and self.train_class_counts:
      prior = np.asarray([self.train_class_counts.get(c, 0) for c in self.class_names], float)
      out.update(self._class_metrics(lab, np.tile(prior, (len(lab), 1)), None,
                                     prefix="baseline_prior_"))
    return out

  def qa_baseline(self, records: Sequence[VideoRecord]) -> dict[str, float]:
    """``baseline_prior_qa_*``: every question answered with the training answer most frequent
    for its type (for a multiple-choice question, the option most frequent among training
    answers), reading neither the frames nor the question's words."""
    counts: dict[str, collections.Counter] = {}
    for pairs in self.qa_pairs(self.config.data.train_split).values():
      for p in pairs:
        counts.setdefault(p.get("type", ""), collections.Counter())[qa_lib.normalize(p["answer"])] += 1
    overall = collections.Counter()
    for c in counts.values():
      overall.update(c)
    rows = []
    for r in records:
      for p in r.extra.get("qa") or ():
        prior = counts.get(p.get("type", ""), overall)
        if p.get("choices"):
          guess = max(p["choices"], key=lambda c: (prior.get(qa_lib.normalize(c), 0), -p["choices"].index(c)))
        else:
          guess = prior.most_common(1)[0][0] if prior else ""
        rows.append({"type": p.get("type", ""), "correct": qa_lib.is_correct(guess, p), "predicted": guess,
                     "answer": p["answer"], "open": not p.get("choices")})
    return {k: v for k, v in qa_lib.accuracy(rows, prefix="baseline_prior_qa_").items() if not k.endswith("count")}

  def controls(self, params, records: Sequence[VideoRecord], rows: Sequence[dict],
               workdir: Optional[str]) -> dict[str, float]:
    """``eval.controls`` (:mod:`t5video.evaluate.controls`): the model fed other clips' frames
    (a derangement of the clips its own evaluation decoded, ``rows``), and the text-only
    stage's metrics when it has run."""
    out: dict[str, float] = {}
    ev = self.config.eval
    if "other_frames" in ev.controls:
      decoded = {row["video_id"] for row in rows}
      swapped = controls_lib.other_frames_records([r for r in records if r.video_id in decoded])
      if swapped:
        metrics, _ = self.run_eval(params, swapped)
        out.update(controls_lib.prefixed("other_frames", metrics))
    if "text_only" in ev.controls:
      out.update(controls_lib.text_only_metrics(workdir))
    return out

  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    records = self.eval_records()
    metrics, rows = self.run_eval(params, records)
    metrics.update(self.baselines(records))
    metrics.update(self.controls(params, records, rows, workdir))
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



_TABLE_ROWS = (("CaptionT5", ""),
               ("control: other clip's frames", "control_other_frames_"),
               ("control: text only", "control_text_only_"),
               ("most frequent caption", "baseline_caption_"),
               ("class prior", "baseline_prior_"))
_TABLE_COLUMNS = (("CIDEr", "CIDEr"), ("BLEU-4", "BLEU-4"), ("ROUGE-L", "ROUGE-L"), ("top-1", "top1"),
                  ("macroF1", "macro_f1"), ("tail-R", "tail_mean_recall"), ("tagF1", "tags_micro_f1"))
_ATTRIBUTE_FIRST = ("object", "shape", "colour", "size", "action")  # then the order pairs


def format_table(m: dict[str, float], step: int, split: str) -> str:
  """The summary table printed after each evaluation: the model, its controls and the
  trivial baselines, then the attributes its captions get right (when the data has them)."""
  def row(label, prefix, columns):
    cells = [f"{100.0 * m[prefix + key]:{max(7, len(head))}.2f}" if prefix + key in m
             else " " * max(7, len(head)) for head, key in columns]
    return f"{label:28s} " + " ".join(cells)

  def table(columns):
    out = [f"{'':28s} " + " ".join(f"{head:>7s}" for head, _ in columns)]
    out += [row(label, prefix, columns).rstrip() for label, prefix in _TABLE_ROWS
            if not prefix or any(prefix + key in m for _, key in columns)]
    return out

  lines = [f"evaluation at step {step} on {split} ({int(m.get('num_examples', 0))} clips)"]
  lines += table(_TABLE_COLUMNS)
  names = [k[len("attribute_"):-len("_accuracy")] for k in m
           if k.startswith("attribute_") and k.endswith("_accuracy")]
  if names:
    names = [n for n in _ATTRIBUTE_FIRST if n in names] + [n for n in names if n not in _ATTRIBUTE_FIRST]
    lines.append("attributes the captions name correctly (the key object; actions in order; each "
                 "order pair over the clips that hold it)")
    lines += table([(n.replace("_", "/"), f"attribute_{n}_accuracy") for n in names])
  qa_keys = sorted(k for k in m if k.startswith("qa_accuracy"))
  if qa_keys:
    wups_keys = [(k[len("qa_"):].replace("wups@0.", "WUPS@."), k) for k in sorted(m) if k.startswith("qa_wups@")]
    lines.append(f"video question answering: exact-match accuracy ({int(m.get('qa_count', 0))} questions; "
                 "the prior answers each type's most frequent training answer)"
                 + ("; WUPS over the open-ended ones" if wups_keys else ""))
    lines += table([(k[len("qa_accuracy_"):][:7] or "all", k) for k in qa_keys] + wups_keys)
  lines.append("(all numbers x100; CIDEr-D as pycocoevalcap reports it, x100)")
  return "\n".join(lines)


class FeatureView:
  """Cached features (a :class:`t5video.data.features.FeatureSource`) of ``records``, in their
  order; a record whose ``extra['frames_of']`` names another clip (the other-frames control)
  takes that clip's features, frame mask and validity."""

  VISUAL = ("timestamps", "frame_mask", "valid", "failure")

  def __init__(self, source, records: Sequence[VideoRecord], layer: str):
    index = {v: i for i, v in enumerate(source.video_ids)}
    self.source, self.layer = source, layer
    self.rows = [(index[r.video_id], index[r.extra.get("frames_of", r.video_id)]) for r in records]

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> dict:
    own, donor = self.rows[int(i)]
    item = dict(self.source[own])
    if donor != own:
      other = self.source[donor]
      item.update({k: other[k] for k in (self.layer,) + self.VISUAL if k in other})
    return item
