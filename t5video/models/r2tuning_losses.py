"""R²-Tuning's targets, losses and inference (JAX), and its data-side helpers (numpy).

Units: times inside the model are in *clips* (seconds × fps). Pyramid point ``j`` of the level
with stride ``s`` sits at clip ``j·s``; its regression range is ``(0, 2]`` clips at stride 1,
``(2, 4]`` at 2, ``(4, 8]`` at 4 and ``(8, ∞)`` at 8 (the next stride up), and its two outputs
are the distances to the moment's start and end in units of ``s``.

Losses (weights from the config, QVHighlights: 1.0 / 0.2 / 0.1 / 0.1 / 0.1):

* ``cls``: sigmoid focal loss (γ = 2, no α) over all valid points, averaged over them. A point
  is positive when it lies inside a ground-truth moment *and* within ``sample_radius`` (1.5) ×
  its stride of the moment's centre, and the moment's larger distance falls in the point's
  regression range; with several such moments the shortest is its target.
* ``reg``: L1 between predicted and target distances at the positive points (averaged over
  positives × 2).
* ``sal``: sampled NCE (τ 0.07): cosine(video clip, pooled query) / τ; for each video its
  sampled positive clip against the clips whose saliency is not above it (row), and against the
  same clip index of the other videos in the batch that qualify (column).
* ``video_cal`` / ``layer_cal``: InfoNCE (τ 0.07, symmetric) between each recursion step's
  projected CLS at the positive clip and its pooled query, across the batch (per layer) and
  across layers (per video).

Highlight detection only (``highlight_only``; TVSum and YouTube Highlights, strides ``(1,)``):
no regression; ``cls`` is BCE between each clip's logit and its saliency score in [0, 1],
averaged over the valid clips; ``sal`` keeps only the row term; saliency at inference is
sigmoid(class logit) alone (the public configs' ``merge_cls_sal=False``).

Inference: saliency = the max over pyramid levels of sigmoid(class logit), each level's score
spread back over its clips as the reference does (repeat by ``t // n``, the last one carried),
× cosine(video clip, query); moments = every valid point's ``[pos − d_s·s, pos + d_e·s] / fps``
scored by sigmoid(class), the top ``max_moments`` (50). :func:`postprocess_moments` clamps,
rounds to the annotation unit and applies NMS (``'normal'`` zeroes the scores of windows with
IoU ≥ threshold to a better one; ``'linear'`` and ``'gaussian'`` decay them).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.r2tuning import R2TuningConfig, pyramid_lengths

# --------------------------------------------------------------------------------------------
# Points of the pyramid
# --------------------------------------------------------------------------------------------


def point_table(t: int, strides: Sequence[int]) -> np.ndarray:
  """``[n, 4]`` rows ``(position, range_low, range_high, stride)`` for a ``t``-clip input."""
  rows = []
  bounds = list(strides[1:]) + [np.inf]
  low = 0.0
  for s, high in zip(strides, bounds):
    if t >= s:
      n = t // s
      pos = np.arange(n, dtype=np.float64) * s
      rows.append(np.stack([pos, np.full(n, low), np.full(n, high), np.full(n, float(s))], 1))
    low = float(high)
  return np.concatenate(rows).astype(np.float32)


def point_mask(video_mask: jax.Array, strides: Sequence[int], mode: str = "train") -> jax.Array:
  """Valid pyramid points ``[b, n]``.

  ``'train'``: a point is valid when any clip of its stride window is (max-pooling the clip mask,
  as the reference's training does); ``'test'``: only the ``t_b // s`` points a lone video of
  ``t_b`` clips would have.
  """
  b, t = video_mask.shape
  lengths = video_mask.sum(axis=1)                                          # [b]
  parts = []
  for s, n in pyramid_lengths(t, tuple(strides)):
    if mode == "train":
      # [b, n * s] -> [b, n, s] -> any over the window
      parts.append(video_mask[:, :n * s].reshape(b, n, s).max(axis=2) > 0)
    else:
      parts.append(jnp.arange(n)[None, :] < (lengths // s)[:, None])
  return jnp.concatenate(parts, axis=1)


def build_targets(points: jax.Array, boundaries: jax.Array, boundary_mask: jax.Array,
                  sample_radius: float = 1.5) -> tuple[jax.Array, jax.Array]:
  """Classification and regression targets of every point.

  Args:
    points: ``[n, 4]`` from :func:`point_table`.
    boundaries: ``[b, g, 2]`` ground-truth moments in clips (start, end).
    boundary_mask: ``[b, g]``, 1 for a real moment.
    sample_radius: centre-sampling radius in units of the point's stride.

  Returns:
    ``cls [b, n]`` (0/1) and ``reg [b, n, 2]`` (distances to start/end over the stride).
  """
  pos, low, high, stride = (points[:, i][None, :, None] for i in range(4))  # [1, n, 1] each
  start = boundaries[:, None, :, 0]                                         # [b, 1, g]
  end = boundaries[:, None, :, 1]
  to_start, to_end = pos - start, end - pos                                 # [b, n, g]
  centre = (start + end) / 2
  inner_s = jnp.maximum(centre - stride * sample_radius, start)
  inner_e = jnp.minimum(centre + stride * sample_radius, end)
  in_centre = jnp.minimum(pos - inner_s, inner_e - pos) >= 0
  reach = jnp.maximum(to_start, to_end)
  in_range = (reach >= low) & (reach <= high)
  ok = in_centre & in_range & (boundary_mask[:, None, :] > 0)
  lengths = jnp.where(ok, jnp.broadcast_to(end - start, ok.shape), jnp.inf)
  best = jnp.argmin(lengths, axis=-1)                                       # [b, n]
  cls = jnp.isfinite(jnp.min(lengths, axis=-1)).astype(jnp.float32)
  take = lambda x: jnp.take_along_axis(x, best[..., None], axis=-1)[..., 0]
  reg = jnp.stack([take(to_start), take(to_end)], axis=-1) / points[None, :, 3:4]
  return cls, reg


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def focal_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
               gamma: float = 2.0) -> jax.Array:
  """Sigmoid focal loss ``BCE · (1 − p_t)^γ``, weighted, summed and divided by the weight sum."""
  p = jax.nn.sigmoid(logits)
  bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = bce * (1 - p_t) ** gamma
  return (loss * weights).sum() / jnp.maximum(weights.sum(), 1e-6)


def l1_loss(pred: jax.Array, target: jax.Array, positive: jax.Array) -> jax.Array:
  """``|pred − target|`` at positive points ``[b, n]``, averaged over positives × 2 coordinates."""
  w = positive[..., None]
  return (jnp.abs(pred - target) * w).sum() / jnp.maximum(2 * positive.sum(), 1.0)


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False, tiny: float = 1e-24) -> jax.Array:
  """The L2 norm with a finite gradient at 0 (``jnp.linalg.norm``'s is NaN there, and a NaN
  survives ``jnp.where`` masking: the zeroed clips of padded videos would poison every grad)."""
  return jnp.sqrt(jnp.maximum(jnp.square(x).sum(axis=axis, keepdims=keepdims), tiny))


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Cosine similarity over the last axis (broadcasting)."""
  num = (a * b).sum(-1)
  den = safe_norm(a) * safe_norm(b)
  return num / jnp.maximum(den, eps)


def bce_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Sigmoid BCE against soft targets in [0, 1], weighted, summed and divided by the weight sum."""
  bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return (bce * weights).sum() / jnp.maximum(weights.sum(), 1e-6)


def sampled_nce_loss(video_emb: jax.Array, query_emb: jax.Array, video_mask: jax.Array,
                     saliency: jax.Array, pos_clip: jax.Array, temperature: float = 0.07,
                     max_scale: float = 100.0, column: bool = True) -> jax.Array:
  """Saliency NCE. ``video_emb [b, t, c]``, ``query_emb [b, c]``, ``saliency [b, t]``, ``pos_clip [b]``;
  ``column=False`` keeps the row term only."""
  b = video_emb.shape[0]
  rows = jnp.arange(b)
  scale = min(1.0 / temperature, max_scale)
  pos_score = saliency[rows, pos_clip][:, None]                             # [b, 1]
  allowed = (saliency <= pos_score) & (video_mask > 0)                      # [b, t]
  sim = cosine(video_emb, query_emb[:, None, :]) * scale                    # [b, t]
  sim = jnp.where(allowed, sim, -jnp.inf)
  # row: each video's positive clip against its own candidate clips
  row = jax.nn.log_softmax(sim, axis=1)[rows, pos_clip]
  # column: that clip index across the batch, [b, t] -> [b(videos), b(targets)]
  if not column:
    return -row.mean()
  col = jax.nn.log_softmax(sim[:, pos_clip], axis=0)[rows, rows]
  return -row.mean() - col.mean()


def info_nce_loss(a: jax.Array, b: jax.Array, temperature: float = 0.07,
                  max_scale: float = 100.0) -> jax.Array:
  """Symmetric InfoNCE over the second-to-last axis: ``a, b [..., n, c]``, pair i ↔ i."""
  a = a / jnp.maximum(safe_norm(a, keepdims=True), 1e-12)
  b = b / jnp.maximum(safe_norm(b, keepdims=True), 1e-12)
  scale = min(1.0 / temperature, max_scale)
  # [..., n, c] x [..., m, c] -> [..., n, m]
  sim = jnp.einsum("...nc,...mc->...nm", a, b) * scale
  n = sim.shape[-1]
  diag = jnp.arange(n)
  a_loss = -jax.nn.log_softmax(sim, axis=-1)[..., diag, diag].mean()
  b_loss = -jax.nn.log_softmax(jnp.swapaxes(sim, -1, -2), axis=-1)[..., diag, diag].mean()
  return (a_loss + b_loss) / 2


def r2tuning_loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
                  config: R2TuningConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted sum of the five losses and each of them (unweighted) for logging.

  ``batch`` keys: ``video_mask [b, t]``, ``boundaries [b, g, 2]`` (clips), ``boundary_mask
  [b, g]``, ``saliency [b, t]`` (clip targets, any scale), ``pos_clip [b]`` and optionally
  ``valid [b]`` (highlight-only: examples with ``valid`` 0 are left out of the BCE).
  """
  video_mask = batch["video_mask"]
  t = video_mask.shape[1]
  valid = point_mask(video_mask, config.strides, "train").astype(jnp.float32)
  if config.highlight_only:   # strides (1,): the points are the clips
    if "valid" in batch:       # padding / undecodable examples carry no target
      valid = valid * batch["valid"].astype(jnp.float32)[:, None]
    losses = {"cls": bce_loss(outputs["class_logits"], batch["saliency"].astype(jnp.float32), valid),
              "reg": jnp.zeros((), jnp.float32)}
  else:
    points = jnp.asarray(point_table(t, config.strides))
    cls_t, reg_t = build_targets(points, batch["boundaries"].astype(jnp.float32),
                                 batch["boundary_mask"], config.sample_radius)
    losses = {"cls": focal_loss(outputs["class_logits"], cls_t, valid, config.focal_gamma),
              "reg": l1_loss(outputs["coords"], reg_t, cls_t)}
  losses["sal"] = sampled_nce_loss(outputs["video_emb"].astype(jnp.float32),
                                   outputs["query_emb"].astype(jnp.float32), video_mask,
                                   batch["saliency"], batch["pos_clip"], config.temperature,
                                   config.max_logit_scale, column=not config.highlight_only)
  rows = jnp.arange(video_mask.shape[0])
  v_pos = outputs["layer_cls"][:, rows, batch["pos_clip"]].astype(jnp.float32)   # [K, b, c]
  q_pos = outputs["layer_query"].astype(jnp.float32)                             # [K, b, c]
  losses["video_cal"] = info_nce_loss(v_pos, q_pos, config.temperature, config.max_logit_scale)
  # [K, b, c] -> [b, K, c]
  losses["layer_cal"] = info_nce_loss(v_pos.swapaxes(0, 1), q_pos.swapaxes(0, 1),
                                      config.temperature, config.max_logit_scale)
  weights = {"cls": config.loss_cls, "reg": config.loss_reg, "sal": config.loss_sal,
             "video_cal": config.loss_video_cal, "layer_cal": config.loss_layer_cal}
  total = sum(weights[k] * v for k, v in losses.items())
  return total, losses


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def predict_saliency(outputs: Mapping[str, jax.Array], video_mask: jax.Array,
                     strides: Sequence[int], with_cosine: bool = True) -> jax.Array:
  """Per-clip saliency ``[b, t]`` (0 on padded clips); ``with_cosine=False``: the class
  probability alone (highlight detection)."""
  b, t = video_mask.shape
  lengths = video_mask.sum(axis=1).astype(jnp.int32)                        # [b]
  probs = jax.nn.sigmoid(outputs["class_logits"])                           # [b, n]
  clip = jnp.arange(t)[None, :]                                             # [1, t]
  best, offset = jnp.full((b, t), -jnp.inf), 0
  for s, n in pyramid_lengths(t, tuple(strides)):
    level = probs[:, offset:offset + n]                                     # [b, n]
    offset += n
    n_b = lengths // s                                                      # points of a lone video
    repeat = lengths // jnp.maximum(n_b, 1)
    idx = jnp.minimum(clip // jnp.maximum(repeat, 1)[:, None], jnp.maximum(n_b - 1, 0)[:, None])
    spread = jnp.take_along_axis(level, jnp.minimum(idx, n - 1), axis=1)    # [b, t]
    best = jnp.maximum(best, jnp.where((n_b > 0)[:, None], spread, -jnp.inf))
  if not with_cosine:
    return jnp.where(video_mask > 0, best, 0.0)
  sim = cosine(outputs["video_emb"].astype(jnp.float32),
               outputs["query_emb"].astype(jnp.float32)[:, None, :])        # [b, t]
  return jnp.where(video_mask > 0, best * sim, 0.0)


def predict_moments(outputs: Mapping[str, jax.Array], video_mask: jax.Array, fps: float,
                    strides: Sequence[int], max_moments: int = 50) -> jax.Array:
  """Top moments ``[b, m, 3]``: (start s, end s, score), best first; invalid rows score -inf."""
  t = video_mask.shape[1]
  points = jnp.asarray(point_table(t, strides))                             # [n, 4]
  pos, stride = points[:, 0], points[:, 3]
  d = outputs["coords"]                                                     # [b, n, 2]
  start = (pos[None] - d[..., 0] * stride[None]) / fps
  end = (pos[None] + d[..., 1] * stride[None]) / fps
  score = jax.nn.sigmoid(outputs["class_logits"])
  score = jnp.where(point_mask(video_mask, strides, "test"), score, -jnp.inf)
  m = min(max_moments, score.shape[1])
  top, idx = jax.lax.top_k(score, m)                                        # [b, m]
  pick = lambda x: jnp.take_along_axis(x, idx, axis=1)
  return jnp.stack([pick(start), pick(end), top], axis=-1)


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of one window ``a [2]`` with windows ``b [m, 2]`` -> ``[m]``."""
  inter = np.clip(np.minimum(a[1], b[:, 1]) - np.maximum(a[0], b[:, 0]), 0, None)
  union = (a[1] - a[0]) + (b[:, 1] - b[:, 0]) - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, inter / union, 0.0)


def temporal_nms(moments: np.ndarray, threshold: float = 0.7, kind: str = "normal",
                 sigma: float = 0.5) -> np.ndarray:
  """Greedy NMS on ``[m, 3]`` (start, end, score): each best remaining window suppresses the
  later ones (``normal``: score 0 when IoU ≥ threshold; ``linear``: × (1 − IoU);
  ``gaussian``: × exp(−IoU²/σ)). Returns all rows re-sorted by score, best first."""
  if kind not in ("normal", "linear", "gaussian"):
    raise ValueError(f"nms kind must be normal, linear or gaussian, got {kind!r}")
  m = np.array(moments, dtype=np.float64, copy=True)
  for i in range(len(m)):
    j = i + int(np.argmax(m[i:, 2]))
    m[[i, j]] = m[[j, i]]
    iou = temporal_iou(m[i, :2], m[i + 1:, :2])
    if kind == "normal":
      m[i + 1:, 2] = np.where(iou >= threshold, 0.0, m[i + 1:, 2])
    elif kind == "linear":
      m[i + 1:, 2] *= 1 - iou
    else:
      m[i + 1:, 2] *= np.exp(-iou ** 2 / sigma)
  return m[np.argsort(-m[:, 2], kind="stable")]


def postprocess_moments(moments: np.ndarray, duration: float, unit: Optional[float] = None,
                        nms: Optional[tuple[str, float]] = None) -> np.ndarray:
  """One video's ``[m, 3]`` moments as the reference reports them: drop invalid rows, clamp to
  ``[0, duration]``, round to ``unit`` seconds (moments not ending at the video's end), NMS."""
  m = np.asarray(moments, dtype=np.float64)
  m = m[np.isfinite(m[:, 2])].copy()
  inside = m[:, 1] < duration
  m[:, :2] = np.clip(m[:, :2], 0, duration)
  if unit:
    m[inside, :2] = np.round(m[inside, :2] / unit) * unit
  if nms is not None:
    m = temporal_nms(m, threshold=nms[1], kind=nms[0])
  return m


# --------------------------------------------------------------------------------------------
# Data-side helpers (numpy; used by the recipe's transform)
# --------------------------------------------------------------------------------------------


def prepare_boundaries(windows_s: Sequence[Sequence[float]], num_clips: int,
                       fps: float) -> np.ndarray:
  """Ground-truth windows (seconds) -> ``[g, 2]`` in clips: clamped to the video, reversed ones
  swapped, ones shorter than a clip widened to one clip around their centre."""
  w = np.asarray(windows_s, dtype=np.float64).reshape(-1, 2)
  max_time = num_clips / fps
  w = np.clip(w, 0, max_time)
  w = np.where((w[:, 1] < w[:, 0])[:, None], w[:, ::-1], w)
  short = w[:, 1] - w[:, 0] < 1 / fps
  centre = np.clip(w.sum(1) / 2, 0.5 / fps, max_time - 0.5 / fps)
  w[short, 0] = centre[short] - 0.5 / fps
  w[short, 1] = centre[short] + 0.5 / fps
  return (w * fps).astype(np.float32)


def clip_saliency(num_clips: int, boundaries_clips: np.ndarray,
                  relevant_clip_ids: Optional[Sequence[int]] = None,
                  saliency_scores: Optional[Sequence[Sequence[float]]] = None,
                  max_saliency: float = 12.0) -> np.ndarray:
  """Saliency targets ``[num_clips]``: annotator scores summed / ``max_saliency`` where given
  (QVHighlights: 3 annotators × 4), else 1 on the clips the moments cover."""
  sal = np.zeros(num_clips, np.float32)
  if relevant_clip_ids is not None and saliency_scores is not None:
    for c, s in zip(relevant_clip_ids, saliency_scores):
      if c < num_clips:
        sal[c] = sum(s) / max_saliency
  else:
    for s, e in np.asarray(boundaries_clips).reshape(-1, 2):
      sal[int(math.ceil(s)):int(math.ceil(e))] = 1
  return sal


def sample_positive_clip(saliency: np.ndarray, rng: np.random.Generator,
                         above_median: bool = False) -> int:
  """A clip with saliency > 0, uniformly (the NCE loss's positive). ``above_median``
  (highlight detection; ``saliency`` holds the video's real clips only): a clip above the
  video's (lower) median saliency, or one at its maximum when none is above."""
  if above_median:
    saliency = np.asarray(saliency)
    lower_median = np.sort(saliency)[(len(saliency) - 1) // 2]   # torch.median's, as the reference
    pos = np.nonzero(saliency > lower_median)[0]
    if len(pos) == 0:
      pos = np.nonzero(saliency >= saliency.max())[0]
  else:
    pos = np.nonzero(saliency > 0)[0]
  if len(pos) == 0:
    raise ValueError("no clip with positive saliency to sample")
  return int(rng.choice(pos))


__all__ = ["bce_loss", "build_targets", "clip_saliency", "cosine", "focal_loss", "info_nce_loss",
           "l1_loss", "point_mask", "point_table", "postprocess_moments", "predict_moments",
           "predict_saliency", "prepare_boundaries", "r2tuning_loss", "sample_positive_clip",
           "sampled_nce_loss", "temporal_iou", "temporal_nms"]
