"""ViFi-CLIP's evaluation protocols (``config.eval.protocols``) on ``eval.split``:

* ``'closed'``: top-1 / top-5 over the training classes (fully supervised /
  K-shot), with multi-view testing (``eval.num_clips`` temporal views x
  ``eval.num_crops`` spatial crops, softmax per view, summed);
* ``'zero_shot'``: top-1 over held-out classes (``data.novel_classes``) with
  bare class names as prompts, and base / novel / harmonic mean accuracy
  (ViFi-CLIP's base-to-novel protocol, each over its own classes);
* ``'retrieval'``: text-to-video and video-to-text R@1/5/10, MdR, MnR
  (:mod:`t5video.evaluate.retrieval`).

Generic metrics live in :mod:`t5video.evaluate`; this module only picks the
clips and classes of each protocol.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_collections
import numpy as np

from t5video.evaluate import classification as cls_metrics
from t5video.evaluate import retrieval
from t5video.recipes.vificlip import predict
from t5video.recipes.vificlip.task import ViFiCLIPTask


def topk_percent(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
  """``{prefix/top1, prefix/top5, prefix/count}``, accuracies in percent."""
  acc = cls_metrics.topk_accuracy(scores, labels, ks=(1, 5))
  return {f"{prefix}/top1": 100.0 * acc["top1"], f"{prefix}/top5": 100.0 * acc["top5"],
          f"{prefix}/count": float(len(labels))}


def run_protocols(task: ViFiCLIPTask, params) -> dict[str, float]:
  """Runs ``eval.protocols`` on ``eval.split`` with host ``params``; returns the metrics."""
  P = task.predictor  # noqa: N806
  e = task.config.eval
  records = task.records(e.split)
  if e.max_videos:
    records = records[: int(e.max_videos)]
  emb, ok = P.embed_records(params, records)
  out: dict[str, float] = {}
  template = task.config.model.prompt_template
  if "closed" in e.protocols and task.train_classes:
    idx = [i for i, r in enumerate(records) if ok[i] and r.label in task.class_index]
    if idx:
      scores = P.class_scores(params, emb[idx], task.train_classes, template)
      labels = np.array([task.class_index[records[i].label] for i in idx])
      out.update(topk_percent(scores, labels, "closed"))
  if "zero_shot" in e.protocols and task.novel_classes:
    zs_template = e.zero_shot_template or template
    novel_idx = {c: i for i, c in enumerate(task.novel_classes)}
    # Novel classes were never trained on: their clips in other splits count too.
    extra = [r for sp in e.novel_extra_splits for r in task.records(sp, allow_empty=True)
             if r.label in novel_idx]
    if extra:
      extra_emb, extra_ok = P.embed_records(params, extra)
    else:
      extra_emb, extra_ok = emb[:0], ok[:0]
    nov = [r for r in records if r.label in novel_idx] + extra
    nov_emb = np.concatenate([emb[[i for i, r in enumerate(records) if r.label in novel_idx]], extra_emb])
    nov_ok = np.concatenate([ok[[i for i, r in enumerate(records) if r.label in novel_idx]], extra_ok])
    if nov and nov_ok.any():
      scores = P.class_scores(params, nov_emb[nov_ok], task.novel_classes, zs_template)
      labels = np.array([novel_idx[r.label] for r, good in zip(nov, nov_ok) if good])
      out.update(topk_percent(scores, labels, "novel"))
      base_idx = [i for i, r in enumerate(records) if ok[i] and r.label in task.class_index]
      if base_idx:
        bscores = P.class_scores(params, emb[base_idx], task.train_classes, zs_template)
        blabels = np.array([task.class_index[records[i].label] for i in base_idx])
        out.update(topk_percent(bscores, blabels, "base"))
        out["hm"] = cls_metrics.harmonic_mean(out["base/top1"], out["novel/top1"])
  if "retrieval" in e.protocols:
    idx = [i for i, r in enumerate(records) if ok[i] and r.captions]
    if idx:
      texts, owner = [], []
      for j, i in enumerate(idx):
        for c in records[i].captions[: int(e.captions_per_video) or None]:
          texts.append(c)
          owner.append(j)
      # Retrieval uses the first view (one clip, centre crop), as CLIP4Clip does.
      video = emb[idx, 0]
      text = P.embed_texts(params, texts)
      sim = text @ video.T  # [texts, videos]
      res = retrieval.retrieval_metrics(sim, np.asarray(owner, np.int64))
      for direction, name in (("text_to_video", "t2v"), ("video_to_text", "v2t")):
        for k, v in res[direction].items():
          out[f"{name}/{k}"] = float(v)
  return out


def evaluate(workdir: str, split: Optional[str] = None, protocols: Optional[Sequence[str]] = None,
             config: Optional[ml_collections.ConfigDict] = None) -> dict[str, float]:
  """Evaluates the latest checkpoint of ``workdir`` (for ``t5video eval``).

  Args:
    workdir: a finished ViFi-CLIP training workdir.
    split: overrides ``eval.split``.
    protocols: overrides ``eval.protocols``.
    config: another recipe config whose ``data`` and ``eval`` sections (and
      prompt template) replace the run's, e.g. ``hmdb51.py:zeroshot`` to test a
      K400 run zero-shot on HMDB51; the model and tokenizer stay the run's.
  """
  task, params = predict.restore(workdir)
  if config is not None:
    merged = ml_collections.ConfigDict(task.config.to_dict())
    merged.data = ml_collections.ConfigDict(config.data.to_dict())
    merged.data.num_frames = config.data.num_frames
    merged.eval = ml_collections.ConfigDict(config.eval.to_dict())
    merged.model.prompt_template = config.model.prompt_template
    if merged.model.temporal == "spacetime" and config.data.num_frames != task.config.data.num_frames:
      raise ValueError(f"a space-time model takes {task.config.data.num_frames} frames; the config asks "
                       f"for {config.data.num_frames}")
    task = ViFiCLIPTask(merged, tokenizer_path=task.tokenizer.path)
  with task.config.unlocked():
    if split:
      task.config.eval.split = split
    if protocols:
      task.config.eval.protocols = list(protocols)
  return run_protocols(task, params)
