"""Text-video retrieval metrics: R@1/5/10, median and mean rank.

The definitions follow CLIP4Clip's ``compute_metrics``: for each query row of
a similarity matrix, the rank of the correct item is its 1-based position
after sorting the row in descending order; R@K is the percentage of queries
whose rank is at most K; MedianR and MeanR are the median and the mean of the
ranks.

With one caption per video, the similarity matrix is square,
``sim[t, v]`` scores text ``t`` against video ``v``, and text ``i`` belongs to
video ``i`` (the diagonal). With several captions per video, pass
``text_to_video[t]`` (the video of every text):

* text -> video: every caption is a query, ranked against all videos;
* video -> text: as in CLIP4Clip's multi-sentence evaluation, every video is a
  query against the *videos' caption groups*, each group scored by its best
  caption (``group_sim[v, g] = max_{t in g} sim[t, v]``), and the rank is that
  of the video's own group. ``video_to_text_mode='any_caption'`` instead ranks
  all individual captions and takes the best rank of the video's own ones (the
  other common convention).

Ties: CLIP4Clip's ``np.where`` formulation counts a tied row several times;
here a tie is resolved optimistically (rank = 1 + the number of strictly
larger scores) by default, or ``ties='pessimistic'`` (1 + the number of other
scores greater or equal), or ``ties='random'`` (1 + the number of larger
scores + a uniform draw of how many tied ones come first, seeded: the
expected rank of a random tie-break, so that a model whose videos all embed
alike, such as a text-only control, scores chance rather than R@1 = 100).
Without ties all of them agree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranks_of_targets(sim: np.ndarray, targets: Sequence[int] | np.ndarray,
                     ties: str = "optimistic") -> np.ndarray:
  """1-based rank of ``sim[i, targets[i]]`` within row ``i`` sorted descending.

  Args:
    sim: ``[num_queries, num_items]`` scores, larger is better.
    targets: ``[num_queries]`` the correct column of every row.
    ties: ``'optimistic'``, ``'pessimistic'`` or ``'random'`` (see the module docstring).

  Returns:
    ``[num_queries]`` int64 ranks.
  """
  sim = np.asarray(sim, dtype=np.float64)
  targets = np.asarray(targets)
  if sim.ndim != 2:
    raise ValueError(f"similarity matrix must be 2-D [queries, items], got shape {sim.shape}")
  if targets.shape != (sim.shape[0],):
    raise ValueError(f"targets must have shape ({sim.shape[0]},), got {targets.shape}")
  if targets.size and (targets.min() < 0 or targets.max() >= sim.shape[1]):
    raise ValueError(f"targets must index columns 0..{sim.shape[1] - 1}, got range "
                     f"[{targets.min()}, {targets.max()}]")
  if np.isnan(sim).any():
    raise ValueError("similarity matrix contains NaN")
  correct = sim[np.arange(sim.shape[0]), targets][:, None]  # [queries, 1]
  return _ranks(sim, correct[:, 0], ties)


def _ranks(rows: np.ndarray, own: np.ndarray, ties: str) -> np.ndarray:
  """1-based rank of the score ``own[i]`` within ``rows[i]`` (which holds it), by ``ties``."""
  greater = np.sum(rows > own[:, None], axis=1)
  if ties == "optimistic":
    return 1 + greater
  tied = np.sum(rows == own[:, None], axis=1) - 1  # the others scored exactly alike
  if ties == "pessimistic":
    return 1 + greater + tied
  if ties == "random":
    return 1 + greater + np.random.default_rng(0).integers(0, tied + 1)
  raise ValueError(f"ties must be 'optimistic', 'pessimistic' or 'random', got {ties!r}")


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """R@K in percent, MedianR and MeanR (1-based) from an array of ranks."""
  ranks = np.asarray(ranks)
  if ranks.size == 0:
    raise ValueError("no queries to score")
  out = {f"R@{k}": float(np.mean(ranks <= k) * 100.0) for k in ks}
  out["MedianR"] = float(np.median(ranks))
  out["MeanR"] = float(np.mean(ranks))
  return out


def retrieval_metrics(sim: np.ndarray, text_to_video: Sequence[int] | np.ndarray | None = None,
                      *, ks: Sequence[int] = (1, 5, 10), ties: str = "optimistic",
                      video_to_text_mode: str = "group_max") -> dict[str, dict[str, float]]:
  """Text-to-video and video-to-text retrieval metrics.

  Args:
    sim: ``[num_texts, num_videos]`` text-video similarities.
    text_to_video: ``[num_texts]`` the video index of every text; None means
      one caption per video in order (``sim`` square, the diagonal correct).
    ks: the cut-offs of R@K.
    ties: see :func:`ranks_of_targets`.
    video_to_text_mode: ``'group_max'`` (CLIP4Clip) or ``'any_caption'``; see
      the module docstring.

  Returns:
    ``{'text_to_video': {...}, 'video_to_text': {...}}``, each holding
    ``R@1, R@5, R@10`` (percent), ``MedianR`` and ``MeanR``.
  """
  sim = np.asarray(sim, dtype=np.float64)
  if sim.ndim != 2:
    raise ValueError(f"similarity matrix must be 2-D [texts, videos], got shape {sim.shape}")
  num_texts, num_videos = sim.shape
  if text_to_video is None:
    if num_texts != num_videos:
      raise ValueError(f"a non-square similarity matrix {sim.shape} needs text_to_video")
    text_to_video = np.arange(num_texts)
  text_to_video = np.asarray(text_to_video)
  if text_to_video.shape != (num_texts,):
    raise ValueError(f"text_to_video must have shape ({num_texts},), got {text_to_video.shape}")
  if not np.issubdtype(text_to_video.dtype, np.integer):
    raise ValueError(f"text_to_video must hold integer video indices, got {text_to_video.dtype}")
  if num_texts and (text_to_video.min() < 0 or text_to_video.max() >= num_videos):
    raise ValueError(f"text_to_video must index videos 0..{num_videos - 1}")
  missing = np.setdiff1d(np.arange(num_videos), text_to_video)
  if missing.size:
    raise ValueError(f"videos {missing[:10].tolist()} have no caption; drop their columns")

  t2v = metrics_from_ranks(ranks_of_targets(sim, text_to_video, ties), ks)
  if video_to_text_mode == "group_max":
    # group_by_owner[g, v]: the best score of any caption of video g against video v.
    group_by_owner = np.full((num_videos, num_videos), -np.inf)
    np.maximum.at(group_by_owner, text_to_video, sim)
    v2t_ranks = ranks_of_targets(group_by_owner.T, np.arange(num_videos), ties)  # [videos, groups]
  elif video_to_text_mode == "any_caption":
    # The best rank among a video's own captions is the rank of its best-scored one.
    video_rows = sim.T  # [videos, texts]
    best_own = np.full(num_videos, -np.inf)
    np.maximum.at(best_own, text_to_video, sim[np.arange(num_texts), text_to_video])
    v2t_ranks = _ranks(video_rows, best_own, ties)
  else:
    raise ValueError(f"video_to_text_mode must be 'group_max' or 'any_caption', "
                     f"got {video_to_text_mode!r}")
  return {"text_to_video": t2v, "video_to_text": metrics_from_ranks(v2t_ranks, ks)}
