"""R2-Tuning's predictions: batched inference over cached features, and ``t5video ground``.

Inference is the paper's: saliency = the max over pyramid levels of sigmoid(class logit) ×
cosine(clip, query) (``model.highlight_only``: sigmoid(class logit) alone); moments = every pyramid point's window scored by sigmoid(class), the
top ``model.max_moments``, clamped to the video, rounded to the clip length and (when
``eval.nms`` is set) non-maximum suppressed (:mod:`t5video.models.r2tuning_losses`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Optional, Sequence

import jax
import numpy as np

from t5video.models import r2tuning_losses as losses
from t5video.recipes.r2tuning import config as cfg
from t5video.recipes.r2tuning import data as data_lib

_BATCH_KEYS = ("video", "video_mask", "query", "query_mask")


def inference(model, fps: float, strides: tuple[int, ...], max_moments: int, highlight_only: bool = False):
  """The pure inference program: ``(params, video, video_mask, query, query_mask)`` -> moments, saliency."""
  def forward(params, video, video_mask, query, query_mask):
    out = model.apply({"params": params}, video, video_mask, query, query_mask, deterministic=True)
    return (losses.predict_moments(out, video_mask, fps, strides, max_moments),
            losses.predict_saliency(out, video_mask, strides, with_cosine=not highlight_only))
  return forward


def task_inference(task):
  """:func:`inference` with ``task``'s settings."""
  c = task.model_config
  return inference(task.model, float(task.config.data.fps), tuple(c.strides), int(c.max_moments),
                   bool(c.highlight_only))


@functools.lru_cache(maxsize=8)
def _forward_fn(model, fps: float, strides: tuple[int, ...], max_moments: int,
                highlight_only: bool = False):
  return jax.jit(inference(model, fps, strides, max_moments, highlight_only))


def forward(task, params, batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """``(moments [b, m, 3] (start s, end s, score), saliency [b, t])`` of a batch of examples."""
  c = task.model_config
  fn = _forward_fn(task.model, float(task.config.data.fps), tuple(c.strides), int(c.max_moments),
                   bool(c.highlight_only))
  moments, saliency = fn(params, *(batch[k] for k in _BATCH_KEYS))
  return np.asarray(moments), np.asarray(saliency)


def submission_line(row: dict, moments: np.ndarray, saliency: np.ndarray, num_clips: int,
                    clip_s: float, nms) -> dict:
  """One query's prediction as a QVHighlights submission line."""
  windows = losses.postprocess_moments(moments, float(row["duration"]), unit=clip_s, nms=nms)
  return {"qid": row["qid"], "query": row.get("query", ""), "vid": row.get("vid", ""),
          "pred_relevant_windows": [[round(float(s), 4), round(float(e), 4), round(float(p), 4)]
                                    for s, e, p in windows],
          "pred_saliency_scores": [round(float(x), 4) for x in saliency[:num_clips]]}


def predict_source(task, params, source: data_lib.QuerySource) -> list[dict]:
  """Submission lines of every query of ``source`` (in its order), batched by ``eval.batch_size``."""
  e = task.config.eval
  nms = cfg.parse_nms(e.nms)
  clip_s = data_lib.clip_seconds(task.config)
  batch_size = int(e.batch_size)
  rows = source.queries.rows
  lines: list[dict] = []
  with concurrent.futures.ThreadPoolExecutor(max(1, int(task.config.data.read_threads))) as pool:
    for start in range(0, len(source), batch_size):
      idx = list(range(start, min(start + batch_size, len(source))))
      items = list(pool.map(source.__getitem__, idx))
      # pad the last batch with copies of its first example: one compiled shape
      items += [items[0]] * (batch_size - len(items))
      batch = {k: np.stack([it[k] for it in items]) for k in _BATCH_KEYS}
      moments, saliency = forward(task, params, batch)
      for j, i in enumerate(idx):
        line = submission_line(rows[i], moments[j], saliency[j], int(items[j]["num_clips"]), clip_s, nms)
        if task.model_config.highlight_only:   # no boundary head: no moments
          line["pred_relevant_windows"] = []
        lines.append(line)
  return lines


# =============================================================================
# t5video ground
# =============================================================================

def video_features(task, path: str) -> tuple[np.ndarray, float, np.ndarray]:
  """``(video [K, T, tokens, D], duration s, clip times [T])`` of one video file, one frame
  per clip of the run (``data.fps``), however long it is."""
  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  d = task.config.data
  info = decode.probe(path)
  count = max(int(math.ceil(info.duration * float(d.fps) - 0.5 - 1e-6)), 1)
  clip = decode.decode_video(path, data_lib.sampling_spec(d, max_frames=count))
  video = data_lib.frame_features(task.towers, clip.frames, (int(d.extract_batch), int(d.max_clips)),
                                  d.feature_dtype)
  return video, float(info.duration), clip.timestamps


def ground(task, params, query: str, videos: Sequence[str], *, top: int = 5,
           out_dir: Optional[str] = None, log=print) -> list[dict]:
  """Grounds ``query`` in each video file: prints the top moments and writes a saliency PNG.

  Returns:
    Per video ``{'path', 'duration', 'moments': [[start, end, score], ...] (best first),
    'saliency': [...] (per clip), 'clip_seconds', 'png'}`` or ``{'path', 'error'}``.
  """
  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  from t5video.evaluate import report  # pylint: disable=g-import-not-at-top
  if not query.strip():
    raise ValueError("the query is empty")
  c = task.config
  out_dir = out_dir or os.path.join(task.workdir or ".", "ground")
  os.makedirs(out_dir, exist_ok=True)
  q, q_mask = data_lib.text_features(task.towers, task.tokenizer, [query], int(c.model.text_len),
                                     c.data.feature_dtype)
  clip_s = data_lib.clip_seconds(c)
  results = []
  for path in videos:
    try:
      video, duration, times = video_features(task, path)
    except (decode.VideoDecodeError, FileNotFoundError) as e:
      log(f"{path}: could not decode ({e})")
      results.append({"path": path, "error": str(e)})
      continue
    t = video.shape[1]
    # as a batch of evaluation's shape when it fits (one compiled shape), else alone
    b, n = (int(c.eval.batch_size), int(c.data.max_clips)) if t <= int(c.data.max_clips) else (1, t)
    batch = {"video": np.zeros((b, video.shape[0], n) + video.shape[2:], video.dtype),
             "video_mask": np.zeros((b, n), np.int32), "query": np.repeat(q, b, axis=0),
             "query_mask": np.repeat(q_mask, b, axis=0)}
    batch["video"][:, :, :t] = video
    batch["video_mask"][:, :t] = 1
    moments, saliency = forward(task, params, batch)
    line = submission_line({"qid": 0, "duration": duration}, moments[0], saliency[0], t, clip_s,
                           cfg.parse_nms(c.eval.nms))
    best = line["pred_relevant_windows"][:top]
    stem = os.path.splitext(os.path.basename(path))[0]
    png = report.plot_saliency(
        os.path.join(out_dir, f"{stem}_saliency.png"), times, line["pred_saliency_scores"],
        best, title=f"{os.path.basename(path)}: \"{query}\"", clip_seconds=clip_s)
    log(f"{path} ({duration:.1f} s, {t} clips of {clip_s:g} s)\n  query: {query}")
    for k, (s, e, p) in enumerate(best, 1):
      log(f"  {k}. {s:7.1f} - {e:7.1f} s   score {p:.3f}")
    log(f"  saliency curve: {png}")
    results.append({"path": path, "duration": duration, "moments": best,
                    "saliency": line["pred_saliency_scores"], "clip_seconds": clip_s, "png": png})
  return results
