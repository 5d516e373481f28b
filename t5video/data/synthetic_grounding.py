"""Long synthetic videos for temporal grounding, written in the QVHighlights layout.

Each video is a sequence of *shots*; a shot is one clip of the synthetic world
(:mod:`t5video.data.synthetic`: a textured background, still distractors and a key
object that moves, grows, fades, spins or changes colour). Within a video no two shots'
key objects share a colour or a shape, so a query names one shot and only that shot
(a distractor may have another shot's key colour). Every shot gets a query, its own natural-language description from the
generator ("the violet hexagon becomes smaller"; two events are joined with
", then "):

* ``relevant_windows``: the shot, ``[start, end]`` seconds;
* ``relevant_clip_ids`` / ``saliency_scores``: the 2-second clips of the shot, scored by
  3 annotators 1-4: 2 where the key object is still, up to 4 where its event covers
  the clip, each annotator off by one now and then. ``HL-min-VeryGood`` (>= 4) therefore
  asks for the moment of the event inside the shot, ``MR`` for the shot.

Shot lengths are rounded up to whole 2-second clips (the last state held), so clip
boundaries fall on shot boundaries and every video lasts an even number of seconds.
Splits are drawn per video (70/15/15 by default).

Output folder (``OUT``), exactly what :func:`t5video.data.layouts.read_qvhighlights` and
the R2-Tuning recipe read (``--config.data.layout=qvhighlights --config.data.root=OUT``)::

  videos/gvid00000.mp4 ...                 H.264 (libx264, yuv420p)
  highlight_{train,val,test}_release.jsonl one query per line
  DONE                                     written last: settings + summary

Cost (this project's 2-core machine): 240 videos of 3-5 shots of 6-10 s at 4 fps
(96x72) render in about a minute of one core.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import time
from typing import Any, Optional, Sequence

import numpy as np

from t5video.data import synthetic

GENERATOR_VERSION = 2   # 2: key objects of one video differ in colour and in shape
CLIP_SECONDS = 2.0
SPLITS = synthetic.SPLITS


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
  """Settings of a rendered grounding dataset (everything but the output folder)."""
  num_videos: int
  seed: int
  shots: tuple[int, int] = (3, 5)                  # shots per video, inclusive range
  shot_seconds: tuple[float, float] = (6.0, 10.0)  # before rounding up to whole clips
  size: tuple[int, int] = (96, 72)                 # (width, height), even
  fps: int = 4
  splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
  max_distractors: int = 2
  backgrounds: Optional[tuple[str, ...]] = None    # None: every texture of the synthetic world
  crf: int = 23

  def validate(self) -> None:
    if self.num_videos < 1:
      raise ValueError(f"num_videos must be >= 1, got {self.num_videos}")
    if not 1 <= self.shots[0] <= self.shots[1]:
      raise ValueError(f"shots must be (min, max) with 1 <= min <= max, got {self.shots}")
    if not 2.0 <= self.shot_seconds[0] <= self.shot_seconds[1]:
      raise ValueError(f"shot_seconds must be (min, max) with 2 <= min <= max, got {self.shot_seconds}")
    if len(self.splits) != 3 or min(self.splits) < 0 or self.splits[0] <= 0:
      raise ValueError(f"splits must be three fractions with train > 0, got {self.splits}")

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["generator_version"] = GENERATOR_VERSION
    return json.loads(json.dumps(d))  # tuples -> lists, as DONE stores them


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """One long video: its shots (clip specs with their frame counts rounded up) and split."""
  video_id: str
  split: str
  shots: tuple[synthetic.ClipSpec, ...]
  fps: int

  @property
  def starts(self) -> list[float]:
    out, t = [], 0.0
    for s in self.shots:
      out.append(t)
      t += s.num_frames / self.fps
    return out

  @property
  def duration(self) -> float:
    return sum(s.num_frames for s in self.shots) / self.fps


def _query(shot: synthetic.ClipSpec) -> str:
  return ", then ".join(shot.queries)


def sample_videos(cfg: GroundingConfig) -> list[VideoSpec]:
  """Draws every video's shots and split from the seed (nothing rendered)."""
  cfg.validate()
  rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 17]))
  counts = rng.integers(cfg.shots[0], cfg.shots[1] + 1, size=cfg.num_videos)
  # Four times the shots needed: a video skips a shot whose key colour or shape it already has
  # (about 2 tries a shot on average at 3-5 shots).
  pool = synthetic.sample_specs(
      int(4 * counts.sum() + 32), cfg.seed, min_seconds=cfg.shot_seconds[0],
      max_seconds=cfg.shot_seconds[1], sizes=(tuple(cfg.size),), fps_choices=(cfg.fps,),
      class_prior="uniform", max_distractors=cfg.max_distractors, backgrounds=cfg.backgrounds)
  clip_frames = int(round(CLIP_SECONDS * cfg.fps))
  order = rng.permutation(cfg.num_videos)
  n_train = int(round(cfg.splits[0] / sum(cfg.splits) * cfg.num_videos))
  n_val = int(round(cfg.splits[1] / sum(cfg.splits) * cfg.num_videos))
  split_of = {int(v): ("train" if k < n_train else "val" if k < n_train + n_val else "test")
              for k, v in enumerate(order)}
  videos, next_spec = [], 0
  for i, k in enumerate(counts):
    shots, colours, shapes = [], set(), set()
    while len(shots) < k:
      if next_spec == len(pool):
        raise ValueError(f"synthetic grounding: ran out of shots at video {i}; use fewer shots per video")
      spec = pool[next_spec]
      next_spec += 1
      if spec.key.colour in colours or spec.key.shape in shapes:
        continue
      colours.add(spec.key.colour)
      shapes.add(spec.key.shape)
      frames = int(math.ceil(spec.num_frames / clip_frames)) * clip_frames
      shots.append(dataclasses.replace(spec, num_frames=frames))
    videos.append(VideoSpec(f"gvid{i:05d}", split_of[i], tuple(shots), cfg.fps))
  return videos


def qvhighlights_rows(video: VideoSpec, first_qid: int, seed: int) -> list[dict[str, Any]]:
  """The video's queries as QVHighlights lines (one per shot), qids from ``first_qid``."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, 18, first_qid]))
  rows = []
  for j, (shot, start) in enumerate(zip(video.shots, video.starts)):
    end = start + shot.num_frames / video.fps
    clip_ids, scores = [], []
    for c in range(int(round(start / CLIP_SECONDS)), int(round(end / CLIP_SECONDS))):
      lo, hi = c * CLIP_SECONDS - start, (c + 1) * CLIP_SECONDS - start   # shot time
      cover = max(synthetic._overlap(lo, hi, e.start, e.end) for e in shot.events) / CLIP_SECONDS  # pylint: disable=protected-access
      base = 2 + int(round(2 * cover))
      jitter = rng.choice((-1, 0, 1), size=3, p=(0.15, 0.7, 0.15))
      clip_ids.append(c)
      scores.append([int(min(max(base + d, 1), 4)) for d in jitter])
    rows.append({"qid": first_qid + j, "query": _query(shot), "vid": video.video_id,
                 "duration": round(video.duration, 6),
                 "relevant_windows": [[round(start, 3), round(end, 3)]],
                 "relevant_clip_ids": clip_ids, "saliency_scores": scores})
  return rows


def render_video(video: VideoSpec, out_dir: str, crf: int = 23) -> int:
  """Renders and encodes one video to ``out_dir/videos/<id>.mp4``; returns its size in bytes."""
  frames = np.concatenate([synthetic.render_frames(s) for s in video.shots])   # [T, H, W, 3]
  path = os.path.join(out_dir, "videos", f"{video.video_id}.mp4")
  synthetic.write_mp4(path, frames, video.fps, crf=crf)
  return os.path.getsize(path)


def _render_job(job: tuple[VideoSpec, str, int]) -> int:
  return render_video(*job)


def _complete(out_dir: str, summary: dict[str, Any]) -> bool:
  if not all(os.path.isfile(os.path.join(out_dir, f"highlight_{s}_release.jsonl")) for s in SPLITS):
    return False
  videos = os.path.join(out_dir, "videos")
  return os.path.isdir(videos) and sum(
      f.endswith(".mp4") for f in os.listdir(videos)) == summary.get("num_videos")


def render_grounding_dataset(out_dir: str, num_videos: int, seed: int, *,
                             shots: Sequence[int] = (3, 5),
                             shot_seconds: Sequence[float] = (6.0, 10.0),
                             size: Sequence[int] = (96, 72), fps: int = 4,
                             splits: Sequence[float] = (0.7, 0.15, 0.15),
                             max_distractors: int = 2,
                             backgrounds: Optional[Sequence[str]] = None, workers: int = 1,
                             overwrite: bool = False) -> dict[str, Any]:
  """Renders the grounding dataset into ``out_dir`` (see the module docstring).

  A folder whose ``DONE`` records the same settings (with every file there) is left as
  it is; a half-rendered one is rendered again; one rendered with other settings is an
  error unless ``overwrite``.

  Returns:
    ``{'num_videos', 'num_queries': {split: n}, 'rendered', 'seconds'}``.
  """
  t0 = time.perf_counter()
  cfg = GroundingConfig(num_videos=int(num_videos), seed=int(seed),
                        shots=tuple(int(s) for s in shots),
                        shot_seconds=tuple(float(s) for s in shot_seconds),
                        size=tuple(int(s) for s in size), fps=int(fps),
                        splits=tuple(float(s) for s in splits),
                        max_distractors=int(max_distractors),
                        backgrounds=tuple(backgrounds) if backgrounds else None)
  cfg.validate()
  done_path = os.path.join(out_dir, "DONE")
  if os.path.exists(done_path):
    with open(done_path, encoding="utf-8") as f:
      done = json.load(f)
    if done.get("config") == cfg.to_json() and _complete(out_dir, done["summary"]):
      return dict(done["summary"], rendered=False, seconds=round(time.perf_counter() - t0, 3))
    if done.get("config") != cfg.to_json() and not overwrite:
      raise ValueError(f"{done_path}: {out_dir} holds a grounding dataset rendered with other "
                       "settings; pass overwrite=True or choose another folder")
  for name in ["videos", "DONE"] + [f"highlight_{s}_release.jsonl" for s in SPLITS]:
    p = os.path.join(out_dir, name)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.lexists(p):
      os.remove(p)
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  videos = sample_videos(cfg)
  jobs = [(v, out_dir, cfg.crf) for v in videos]
  if workers > 1:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      list(pool.imap_unordered(_render_job, jobs, chunksize=4))
  else:
    for job in jobs:
      _render_job(job)
  rows: dict[str, list] = {s: [] for s in SPLITS}
  qid = 0
  for v in videos:
    rows[v.split].extend(qvhighlights_rows(v, qid, cfg.seed))
    qid += len(v.shots)
  for split in SPLITS:
    synthetic._write_text(os.path.join(out_dir, f"highlight_{split}_release.jsonl"),  # pylint: disable=protected-access
                          "".join(json.dumps(r) + "\n" for r in rows[split]))
  summary = {"num_videos": len(videos), "num_queries": {s: len(rows[s]) for s in SPLITS}}
  synthetic._write_text(done_path, json.dumps({"config": cfg.to_json(), "summary": summary}))  # pylint: disable=protected-access
  return dict(summary, rendered=True, seconds=round(time.perf_counter() - t0, 3))
