"""ViFi-CLIP's evaluation protocols (``config.eval.protocols``) on ``eval.split``:

* ``'closed'``: top-1 / top-5 over the training classes (fully supervised /
  K-shot), with multi-view testing (``eval.num_clips`` temporal views x
  ``eval.num_crops`` spatial crops, softmax per view, summed);
* ``'zero_shot'``: top-1 over held-out classes (``data.novel_classes``) with
  bare class names as prompts, and base / novel / harmonic mean accuracy
  (ViFi-CLIP's base-to-novel protocol, each over its own classes);
* ``'retrieval'``: text-to-video and video-to-text R@1/5/10, MdR, MnR
  (:mod:`t5video.evaluate.retrieval`).

Beside them: trivial baselines (the class prior, chance retrieval) and the
controls of ``eval.controls`` (:mod:`t5video.evaluate.controls`: each clip
scored with another clip's frames; the same recipe trained on constant
pixels). Each process embeds its share of the clips; the embeddings are
gathered before any metric is computed.

Generic metrics live in :mod:`t5video.evaluate`; this module only picks the
clips and classes of each protocol.
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import ml_collections
import numpy as np

from t5video.evaluate import classification as cls_metrics
from t5video.evaluate import controls
from t5video.evaluate import hosts
from t5video.evaluate import retrieval
from t5video.models import vificlip as vifi
from t5video.recipes.vificlip import predict
from t5video.recipes.vificlip.task import ViFiCLIPTask


def topk_percent(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
  """``{prefix/top1, prefix/top5, prefix/count}``, accuracies in percent."""
  acc = cls_metrics.topk_accuracy(scores, labels, ks=(1, 5))
  return {f"{prefix}/top1": 100.0 * acc["top1"], f"{prefix}/top5": 100.0 * acc["top5"],
          f"{prefix}/count": float(len(labels))}


def embed_shared(task: ViFiCLIPTask, params, records: Sequence) -> tuple[np.ndarray, np.ndarray]:
  """:meth:`Predictor.embed_records` of ``records``, each process embedding its share
  (:mod:`t5video.evaluate.hosts`); every process gets all of them, in order."""
  emb, ok = task.predictor.embed_records(params, hosts.share(list(records)))
  pairs = hosts.gather(list(zip(emb, ok)))
  if not pairs:
    return emb[:0], ok[:0]
  return np.stack([e for e, _ in pairs]), np.asarray([o for _, o in pairs], bool)


def protocol_metrics(task: ViFiCLIPTask, params, records: Sequence, emb: np.ndarray, ok: np.ndarray,
                     protocols: Sequence[str]) -> dict[str, float]:
  """``protocols`` on ``records`` whose view embeddings ``[N, V, P]`` are ``emb`` (decoded: ``ok``)."""
  P = task.predictor  # noqa: N806
  e = task.config.eval
  out: dict[str, float] = {}
  template = task.config.model.prompt_template
  if "closed" in protocols and task.train_classes:
    idx = [i for i, r in enumerate(records) if ok[i] and r.label in task.class_index]
    if idx:
      scores = P.class_scores(params, emb[idx], task.train_classes, template)
      labels = np.array([task.class_index[records[i].label] for i in idx])
      out.update(topk_percent(scores, labels, "closed"))
  if "zero_shot" in protocols and task.novel_classes:
    zs_template = e.zero_shot_template or template
    novel_idx = {c: i for i, c in enumerate(task.novel_classes)}
    # Novel classes were never trained on: their clips in other splits count too.
    extra = [r for sp in e.novel_extra_splits for r in task.records(sp, allow_empty=True)
             if r.label in novel_idx]
    if extra:
      extra_emb, extra_ok = embed_shared(task, params, extra)
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
  if "retrieval" in protocols:
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
      # Ties (videos that embed alike, as on constant pixels) rank at random, not first.
      res = retrieval.retrieval_metrics(sim, np.asarray(owner, np.int64), ties="random")
      for direction, name in (("text_to_video", "t2v"), ("video_to_text", "v2t")):
        for k, v in res[direction].items():
          out[f"{name}/{k}"] = float(v)
  return out


def baselines(task: ViFiCLIPTask, records: Sequence, ok: np.ndarray) -> dict[str, float]:
  """Trivial baselines on the clips the model was scored on: the class prior for ``'closed'``
  (training classes ranked by their number of training clips, ties by class order) and chance
  for ``'retrieval'`` (R@K = K / videos, median rank (videos + 1) / 2)."""
  e = task.config.eval
  out: dict[str, float] = {}
  if "closed" in e.protocols and task.train_classes:
    labels = np.array([task.class_index[r.label] for r, good in zip(records, ok)
                       if good and r.label in task.class_index])
    if labels.size:
      counts = collections.Counter(r.label for r in task.train_records())
      prior = np.array([counts.get(c, 0) for c in task.train_classes], np.float64)
      prior -= 1e-3 * np.arange(len(prior))  # a strict order: ties would count in its favour
      out.update({f"baseline_prior_{k}": v for k, v in
                  topk_percent(np.tile(prior, (labels.size, 1)), labels, "closed").items()})
  if "retrieval" in e.protocols:
    n = sum(1 for r, good in zip(records, ok) if good and r.captions)
    if n:
      for name in ("t2v", "v2t"):
        out.update({f"baseline_chance_{name}/R@{k}": 100.0 * min(k, n) / n for k in (1, 5, 10)})
        out[f"baseline_chance_{name}/MedianR"] = (n + 1) / 2
  return out


def run_protocols(task: ViFiCLIPTask, params, workdir: Optional[str] = None) -> dict[str, float]:
  """Runs ``eval.protocols`` on ``eval.split`` with host ``params``; returns the metrics, the
  baselines and the controls of ``eval.controls`` (:mod:`t5video.evaluate.controls`).

  The other-frames control gives clip ``i`` the embeddings of its donor: the video embedding
  is a function of the frames alone (no per-clip text enters it), so this equals embedding
  the swapped frames, at no cost. It runs the ``'closed'`` and ``'retrieval'`` protocols.
  """
  e = task.config.eval
  records = task.records(e.split)
  if e.max_videos:
    records = records[: int(e.max_videos)]
  emb, ok = embed_shared(task, params, records)
  out = protocol_metrics(task, params, records, emb, ok, e.protocols)
  out.update(baselines(task, records, ok))
  if "other_frames" in e.controls:
    valid = np.nonzero(ok)[0]
    donor = controls.derangement(len(valid))
    if donor.size:
      swapped = emb.copy()
      swapped[valid] = emb[valid[donor]]
      kept = [p for p in e.protocols if p in ("closed", "retrieval")]
      out.update(controls.prefixed("other_frames", protocol_metrics(task, params, records, swapped, ok, kept)))
  if "text_only" in e.controls:
    out.update(controls.text_only_metrics(workdir))
  return out


_TABLE_COLUMNS = (("closed@1", "closed/top1"), ("closed@5", "closed/top5"), ("novel@1", "novel/top1"),
                  ("HM", "hm"), ("t2v R@1", "t2v/R@1"), ("t2v R@5", "t2v/R@5"), ("t2v MdR", "t2v/MedianR"),
                  ("v2t R@1", "v2t/R@1"), ("v2t R@5", "v2t/R@5"), ("v2t MdR", "v2t/MedianR"))
_TABLE_ROWS = (("ViFi-CLIP", ("",)), ("control: other clip's frames", ("control_other_frames_",)),
               ("control: text only", ("control_text_only_",)),
               ("class prior / chance", ("baseline_prior_", "baseline_chance_")))


def format_table(m: dict[str, float], split: str) -> str:
  """The metrics of :func:`run_protocols` as a table: the model, its controls, the baselines."""
  lines = [f"ViFi-CLIP on {split} ({int(m.get('closed/count', 0))} clips in the closed set; "
           "accuracies and R@K in %, MdR the median rank)",
           f"{'':28s} " + " ".join(f"{head:>8s}" for head, _ in _TABLE_COLUMNS)]
  for label, prefixes in _TABLE_ROWS:
    cells = []
    for _, key in _TABLE_COLUMNS:
      value = next((m[p + key] for p in prefixes if p + key in m), None)
      cells.append(f"{value:8.2f}" if value is not None else " " * 8)
    if prefixes == ("",) or any(c.strip() for c in cells):
      lines.append((f"{label:28s} " + " ".join(cells)).rstrip())
  return "\n".join(lines)


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
    if merged.model.temporal in vifi.FIXED_FRAME_MODES and config.data.num_frames != task.config.data.num_frames:
      raise ValueError(f"a {merged.model.temporal} model takes {task.config.data.num_frames} frames; the config asks "
                       f"for {config.data.num_frames}")
    task = ViFiCLIPTask(merged, tokenizer_path=task.tokenizer.path)
  with task.config.unlocked():
    if split:
      task.config.eval.split = split
    if protocols:
      task.config.eval.protocols = list(protocols)
  return run_protocols(task, params, workdir=workdir)
