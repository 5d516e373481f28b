"""The student's evaluation: zero-shot retrieval and classification on held-out clips.

ViFi-CLIP's protocols (:func:`t5video.recipes.vificlip.evaluate.run_protocols`)
on ``eval.split``, none of whose clips the student trained on:

* text-to-video and video-to-text retrieval with the clips' own captions:
  ``t2v_R@1``, ``t2v_R@5``, ``t2v_R@10``, ``t2v_MedianR``, ``t2v_MeanR`` and
  the same for ``v2t_`` (CLIP4Clip's definitions, :mod:`t5video.evaluate.retrieval`);
* zero-shot classification over every class of the split, prompts built from
  the bare class names (the student never saw a label): ``zeroshot_top1``,
  ``zeroshot_top5``.

Beside them, in the same run: chance (``baseline_chance_*``: R@K = K / clips,
median rank (clips + 1) / 2, top-1 = 1 / classes), the student scored with
another clip's frames (``control_other_frames_*``, retrieval) and, with
``eval.controls`` holding ``'text_only'``, the same recipe trained on constant
pixels (``control_text_only_*``). Where the run trained its teacher and
pseudo-labels here, their figures come along: ``teacher_*`` (the teacher's
caption metrics on the same split, from its stage's ``final_metrics.json``) and
``pseudo_*`` (clips labelled, clips/s). Where the data root's annotations carry the
synthetic generator's truth for the pseudo-labelled clips, ``pseudo_attribute_<name>_accuracy``
scores every sampled caption against it (:mod:`t5video.evaluate.attributes`, fractions):
what the student is taught, measured on the clips it is taught on.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections

from t5video.recipes.vificlip import evaluate as vificlip_evaluate
from t5video.train import paths
from t5video.train import workdir as workdir_lib

TEACHER_KEYS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR", "control_other_frames_CIDEr", "baseline_caption_CIDEr",
                "qa_accuracy", "control_other_frames_qa_accuracy", "baseline_prior_qa_accuracy")
_EXCLUDE_FROM_CONTROLS = ("control_text_only_teacher_", "control_text_only_pseudo_")


def rename(key: str) -> str:
  """ViFi-CLIP's metric names as this recipe reports them: ``t2v/R@1`` -> ``t2v_R@1``,
  ``novel/top1`` -> ``zeroshot_top1`` (prefixes such as ``control_other_frames_`` kept)."""
  return key.replace("novel/", "zeroshot/").replace("/", "_")


def _stage_metrics(path: str) -> dict:
  if not path or not paths.exists(path):
    return {}
  return json.loads(paths.read_text(path)).get("eval") or {}


def run(task, params, workdir: Optional[str] = None) -> dict[str, float]:
  """Evaluates the student ``task`` with host ``params`` (see the module docstring)."""
  raw = vificlip_evaluate.run_protocols(task, params, workdir=workdir)
  out = {rename(k): float(v) for k, v in raw.items() if not k.startswith(_EXCLUDE_FROM_CONTROLS)}
  for key in ("hm", "base_top1", "base_top5", "base_count"):
    out.pop(key, None)  # no base classes: every class is held out
  if task.novel_classes and "zeroshot_top1" in out:
    out["baseline_chance_zeroshot_top1"] = 100.0 / len(task.novel_classes)
  t = task.config.teacher
  if t.workdir:
    teacher = _stage_metrics(workdir_lib.final_metrics_path(t.workdir))
    out.update({f"teacher_{k}": float(teacher[k]) for k in TEACHER_KEYS if k in teacher})
  p = task.config.pseudo
  if p.dir and paths.exists(os.path.join(p.dir, "manifest.json")):
    manifest = json.loads(paths.read_text(os.path.join(p.dir, "manifest.json")))
    out["pseudo_clips"] = float(manifest["counts"]["labelled"])
    out["pseudo_captions_per_clip"] = float(manifest["sampling"]["num_captions"])
    out["pseudo_clips_per_s"] = float(manifest["throughput"]["clips_per_s"])
    out.update(pseudo_attribute_accuracy(p.dir, task.config.data.root))
  return out


def pseudo_attribute_accuracy(pseudo_dir: str, data_root: str) -> dict[str, float]:
  """``pseudo_attribute_<name>_accuracy`` of every caption in ``pseudo_dir`` against the truth the
  records of ``<data_root>/annotations.jsonl`` carry (the synthetic world's ``attributes``); ``{}``
  where there is none (a user's own videos)."""
  from t5video.data import layouts  # pylint: disable=g-import-not-at-top
  from t5video.evaluate import attributes  # pylint: disable=g-import-not-at-top
  from t5video.recipes.distill import data as data_lib  # pylint: disable=g-import-not-at-top
  source = os.path.join(data_root, "annotations.jsonl") if data_root else ""
  if not (source and os.path.isfile(source) and paths.exists(os.path.join(pseudo_dir, data_lib.PSEUDO))):
    return {}
  truth = {r.video_id: r.extra.get("attributes") for r in layouts.read_generic(source)}
  captions, truths = [], []
  for r in data_lib.read(os.path.join(pseudo_dir, data_lib.PSEUDO), None):
    if truth.get(r.video_id):
      captions += list(r.captions)
      truths += [truth[r.video_id]] * len(r.captions)
  if not captions:
    return {}
  scored = attributes.attribute_accuracy(captions, truths, attributes.synthetic_vocabulary())
  return {f"pseudo_{k}": v for k, v in scored.items()}


_COLUMNS = (("t2v R@1", "t2v_R@1"), ("t2v R@5", "t2v_R@5"), ("t2v R@10", "t2v_R@10"), ("t2v MdR", "t2v_MedianR"),
            ("v2t R@1", "v2t_R@1"), ("v2t R@5", "v2t_R@5"), ("v2t R@10", "v2t_R@10"), ("v2t MdR", "v2t_MedianR"),
            ("ZS top1", "zeroshot_top1"))
_ROWS = (("student", ""), ("control: other clip's frames", "control_other_frames_"),
         ("control: text only", "control_text_only_"), ("chance", "baseline_chance_"))


def format_table(m: dict[str, float], config: ml_collections.ConfigDict) -> str:
  """The metrics of :func:`run` as a table: the student, its controls, chance."""
  lines = [f"distilled student ({'+'.join(config.student.sources)}) on {config.eval.split}: zero-shot retrieval "
           f"(R@K in %, MdR the median rank) and classification ({int(m.get('zeroshot_count', 0))} clips)",
           f"{'':30s} " + " ".join(f"{h:>8s}" for h, _ in _COLUMNS)]
  for label, prefix in _ROWS:
    cells = [f"{m[prefix + k]:8.2f}" if prefix + k in m else " " * 8 for _, k in _COLUMNS]
    if not prefix or any(c.strip() for c in cells):
      lines.append((f"{label:30s} " + " ".join(cells)).rstrip())
  extras = [f"{k}={m[k]:.2f}" for k in sorted(m) if k.startswith(("teacher_", "pseudo_"))]
  if extras:
    lines.append("teacher and pseudo-labels: " + ", ".join(extras))
  return "\n".join(lines)
