"""``t5video report --workdir DIR``: PNG plots of a run.

* ``report_curves.png``: training loss (and per-task losses), learning rate and
  throughput against the step, from ``metrics.jsonl``; evaluation metrics as
  markers when they ran.
* ``report_classes.png``: per-class recall of the last evaluation (rank
  classification), classes ordered by training frequency, tail classes marked.
* ``report_samples.png``: sample clips — frames beside the generated and the
  reference captions — from the last ``samples_step*.jsonl``.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import textwrap

import numpy as np


def _read_jsonl(path: str) -> list[dict]:
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from e
  return rows


def _last_samples(workdir: str) -> str | None:
  files = glob.glob(os.path.join(workdir, "samples_step*.jsonl"))
  if not files:
    return None
  return max(files, key=lambda p: int(re.search(r"samples_step(-?\d+)", p).group(1)))


def plot_curves(workdir: str, out: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no metrics.jsonl; is {workdir!r} a t5video workdir?")
  rows = _read_jsonl(path)
  train = [r for r in rows if "loss" in r]
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  steps = [r["step"] for r in train]
  axes[0].plot(steps, [r["loss"] for r in train], label="loss", lw=2)
  for k in sorted({k for r in train for k in r if k.startswith("loss_")}):
    axes[0].plot(steps, [r.get(k, np.nan) for r in train], label=k, lw=1, alpha=0.7)
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_title("training loss")
  axes[0].legend(fontsize=8)
  if any("learning_rate" in r for r in train):
    axes[1].plot(steps, [r.get("learning_rate", np.nan) for r in train])
  axes[1].set_title("learning rate")
  axes[1].set_xlabel("step")
  if any("examples_per_sec" in r for r in train):
    axes[2].plot(steps, [r.get("examples_per_sec", np.nan) for r in train])
  axes[2].set_title("examples / s")
  axes[2].set_xlabel("step")
  if evals:
    ax = axes[0].twinx()
    for key in ("eval/CIDEr", "eval/top1", "eval/tags_micro_f1"):
      pts = [(r["step"], r[key]) for r in evals if key in r]
      if pts:
        ax.plot(*zip(*pts), "o--", label=key)
    ax.set_ylabel("eval")
    ax.legend(fontsize=8, loc="center right")
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out


def plot_classes(workdir: str, out: str) -> str | None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  samples = _last_samples(workdir)
  if samples is None:
    return None
  rows = [r for r in _read_jsonl(samples) if "label" in r and "class_ranked" in r]
  if not rows:
    return None
  per = collections.defaultdict(lambda: [0, 0])
  for r in rows:
    per[r["label"]][1] += 1
    per[r["label"]][0] += int(r["class_ranked"] == r["label"])
  counts, tail = {}, set()
  config_path = os.path.join(workdir, "config.json")
  if os.path.isfile(config_path):
    with open(config_path) as f:
      root = json.load(f).get("data", {}).get("root", "")
    classes_json = os.path.join(os.path.abspath(root), "classes.json") if root else ""
    if classes_json and os.path.isfile(classes_json):
      with open(classes_json) as f:
        doc = json.load(f)
      counts = {c["name"]: c["count"] for c in doc.get("classes", [])}
      tail = set(doc.get("tail", []))
  names = sorted(per, key=lambda c: -counts.get(c, per[c][1]))
  recall = [per[c][0] / per[c][1] for c in names]
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
  colors = ["tab:orange" if c in tail else "tab:blue" for c in names]
  ax.bar(range(len(names)), recall, color=colors)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([f"{c} ({per[c][1]})" for c in names], rotation=60, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("recall")
  ax.set_title("per-class recall (rank classification); orange = tail classes; (n test clips)")
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out


def plot_samples(workdir: str, out: str, num: int = 4, frames: int = 4) -> str | None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from t5video.data import decode
  samples = _last_samples(workdir)
  if samples is None:
    return None
  rows = [r for r in _read_jsonl(samples) if r.get("caption") is not None][:num]
  if not rows:
    return None
  spec = decode.SamplingSpec(num_frames=frames, size=96)
  fig, axes = plt.subplots(len(rows), frames + 1, figsize=(3 * (frames + 2), 2.4 * len(rows)),
                           gridspec_kw={"width_ratios": [1] * frames + [2.5]}, squeeze=False)
  for i, r in enumerate(rows):
    try:
      clip, _ = decode.decode_clip(r["path"], spec)
    except (decode.VideoDecodeError, ValueError):
      clip = np.zeros((frames, 96, 96, 3), np.uint8)
    for j in range(frames):
      axes[i, j].imshow(clip[j])
      axes[i, j].axis("off")
    text = (f"generated: {r['caption']}\n"
            + "".join(f"ref: {ref}\n" for ref in r.get("references", [])[:2])
            + (f"class: {r.get('class_ranked')} (true: {r.get('label')})" if r.get("label") else ""))
    axes[i, frames].text(0, 0.5, "\n".join(textwrap.fill(line, 60) for line in text.splitlines()),
                         va="center", fontsize=8)
    axes[i, frames].axis("off")
  fig.tight_layout()
  fig.savefig(out, dpi=80)
  plt.close(fig)
  return out


def write_report(workdir: str) -> list[str]:
  """Writes the PNGs of the module docstring into ``workdir``; returns their paths."""
  written = [plot_curves(workdir, os.path.join(workdir, "report_curves.png"))]
  for fn, name in ((plot_classes, "report_classes.png"), (plot_samples, "report_samples.png")):
    path = fn(workdir, os.path.join(workdir, name))
    if path:
      written.append(path)
  return written


def plot_robustness(curves: dict, out: str) -> None:
  """Metric curves under frame dropping and pixel noise (``{drop: [...], noise: [...]}``) as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for ax, (name, xkey) in zip(axes, (("drop", "rate"), ("noise", "std"))):
    xs = [row[xkey] for row in curves[name]]
    for key in ("CIDEr", "BLEU-4", "top1", "tags_micro_f1"):
      ys = [row.get(key) for row in curves[name]]
      if all(y is not None for y in ys):
        ax.plot(xs, ys, "o-", label=key)
    ax.set_xlabel("dropped frame share" if name == "drop" else "noise std (0-255)")
    ax.set_title(f"robustness: {name}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)




def plot_saliency(out: str, times, saliency, moments=(), *, title: str = "",
                  clip_seconds: float = 2.0) -> str:
  """A grounding result as a PNG: per-clip saliency against time (clip centres ``times``), the
  predicted moments ``[[start, end, score], ...]`` (best first) shaded, the best darkest."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  times = np.asarray(times, dtype=np.float64)[:len(saliency)]
  fig, ax = plt.subplots(figsize=(10, 3))
  for k, (start, end, score) in reversed(list(enumerate(moments))):
    ax.axvspan(start, end, color="tab:orange", alpha=0.45 if k == 0 else 0.12, lw=0,
               label=f"top moment {start:.0f}-{end:.0f} s ({score:.2f})" if k == 0 else None)
  ax.bar(times, saliency, width=0.9 * clip_seconds, color="tab:blue", alpha=0.8, label="saliency")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("saliency")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out
