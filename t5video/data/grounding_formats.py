"""Temporal-grounding annotations in other formats, written in the QVHighlights layout.

R2-Tuning (and every grounding recipe here) reads one layout, QVHighlights'
``highlight_{split}_release.jsonl`` (:func:`t5video.data.layouts.read_qvhighlights`), so the other
benchmarks are converted once into it, beside their own files, by ``t5video data``:

* **Charades-STA** (``t5video data charades-sta --root DIR``): ``charades_sta_{train,test}.txt``
  with one query per line, ``<vid> <start> <end>##<sentence>`` (seconds). Video lengths come from
  Charades' ``Charades_v1_{train,test}.csv`` (column ``length``) when they are in ``DIR``, else
  from the video files (``DIR/videos/<vid>.mp4`` or ``--video-root``).
* **TACoS** (``t5video data tacos --root DIR``): the ``{train,val,test}.json`` files of the 2D-TAN
  release, ``{"<vid>.avi": {"num_frames": N, "fps": F, "timestamps": [[f0, f1], ...],
  "sentences": [...]}}`` with windows in frames; seconds are ``frame / fps``.

What the converted lines hold: ``qid`` (running over the split, in file order), ``query``,
``vid`` (the file name without its extension), ``duration`` (seconds) and ``relevant_windows``
(one ``[start, end]`` window, clamped to ``[0, duration]``). Neither benchmark has per-clip
saliency, so the lines carry no ``relevant_clip_ids`` / ``saliency_scores``: training then takes
the saliency targets from the windows and evaluation reports moment retrieval only.

A malformed line raises :class:`t5video.data.layouts.AnnotationError` naming the file and line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Iterator, Optional, Sequence

from t5video.data.layouts import AnnotationError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def _find_video(video_root: str, vid: str) -> Optional[str]:
  for ext in VIDEO_EXTENSIONS:
    path = os.path.join(video_root, vid + ext)
    if os.path.isfile(path):
      return path
  return None


def _probe_duration(video_root: str, vid: str, where: str) -> float:
  from t5video.data import decode  # pylint: disable=g-import-not-at-top
  path = _find_video(video_root, vid)
  if path is None:
    raise AnnotationError(f"{where}: no length for video {vid!r}: neither a Charades CSV "
                          f"'length' nor a video file {os.path.join(video_root, vid)}.* was found")
  return float(decode.probe(path).duration)


def _charades_lengths(root: str) -> dict[str, float]:
  """``{vid: length s}`` from ``Charades_v1_{train,test}.csv`` (those of them in ``root``)."""
  out = {}
  for split in ("train", "test"):
    path = os.path.join(root, f"Charades_v1_{split}.csv")
    if not os.path.isfile(path):
      continue
    with open(path, newline="", encoding="utf-8") as f:
      for lineno, row in enumerate(csv.DictReader(f), start=2):
        try:
          out[row["id"]] = float(row["length"])
        except (KeyError, TypeError, ValueError) as e:
          raise AnnotationError(f"{path}:{lineno}: needs columns 'id' and a numeric 'length' ({e!r})") from e
  return out


def read_charades_sta(txt_path: str, lengths: dict[str, float], video_root: str) -> list[dict]:
  """QVHighlights-layout rows of one ``charades_sta_<split>.txt``."""
  rows = []
  with open(txt_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      where = f"{txt_path}:{lineno}"
      head, sep, query = line.partition("##")
      parts = head.split()
      if not sep or len(parts) != 3 or not query.strip():
        raise AnnotationError(f"{where}: expected '<vid> <start> <end>##<sentence>', got {line[:80]!r}")
      vid = parts[0]
      try:
        start, end = float(parts[1]), float(parts[2])
      except ValueError as e:
        raise AnnotationError(f"{where}: start and end must be numbers, got {parts[1:]}") from e
      if not 0 <= start < end:
        raise AnnotationError(f"{where}: window [{start}, {end}] is empty or negative")
      if vid not in lengths:
        lengths[vid] = _probe_duration(video_root, vid, where)
      duration = lengths[vid]
      rows.append({"qid": len(rows), "query": query.strip(), "vid": vid, "duration": duration,
                   "relevant_windows": [[round(min(start, duration), 2), round(min(end, duration), 2)]]})
  return rows


def read_tacos(json_path: str) -> list[dict]:
  """QVHighlights-layout rows of one TACoS split file (2D-TAN's ``{train,val,test}.json``)."""
  with open(json_path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{json_path}: invalid JSON ({e})") from e
  rows = []
  for name, video in data.items():
    where = f"{json_path}: video {name!r}"
    try:
      fps, frames = float(video["fps"]), float(video["num_frames"])
      stamps, sentences = video["timestamps"], video["sentences"]
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationError(f"{where}: needs numeric 'fps' and 'num_frames', 'timestamps' and "
                            f"'sentences' ({e!r})") from e
    if fps <= 0 or len(stamps) != len(sentences):
      raise AnnotationError(f"{where}: fps {fps} must be > 0 and timestamps ({len(stamps)}) match "
                            f"sentences ({len(sentences)})")
    duration = frames / fps
    for k, (stamp, sentence) in enumerate(zip(stamps, sentences)):
      try:
        start, end = sorted(float(x) / fps for x in stamp)
      except (TypeError, ValueError) as e:
        raise AnnotationError(f"{where}: timestamps[{k}] must be [start_frame, end_frame], got {stamp!r}") from e
      if end <= start:
        raise AnnotationError(f"{where}: timestamps[{k}] {stamp!r} is an empty window")
      rows.append({"qid": len(rows), "query": str(sentence).strip(), "vid": os.path.splitext(name)[0],
                   "duration": round(duration, 3),
                   "relevant_windows": [[round(max(start, 0.0), 2), round(min(end, duration), 2)]]})
  return rows


def write_jsonl(rows: Sequence[dict], path: str) -> str:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  os.replace(tmp, path)
  return path


def _splits(root: str, pattern: str, names: Sequence[str]) -> Iterator[tuple[str, str]]:
  found = [(s, os.path.join(root, pattern.format(s))) for s in names
           if os.path.isfile(os.path.join(root, pattern.format(s)))]
  if not found:
    raise FileNotFoundError(f"none of {[pattern.format(s) for s in names]} is in {root}")
  yield from found


def convert(benchmark: str, root: str, out: Optional[str] = None,
            video_root: Optional[str] = None, log=print) -> list[str]:
  """Writes ``highlight_<split>_release.jsonl`` into ``out`` (default ``root``) for every split
  file of ``benchmark`` ('charades-sta' | 'tacos') found in ``root``; returns the paths."""
  out = out or root
  video_root = video_root or os.path.join(root, "videos")
  os.makedirs(out, exist_ok=True)
  written = []
  if benchmark == "charades-sta":
    lengths = _charades_lengths(root)
    for split, path in _splits(root, "charades_sta_{}.txt", ("train", "test")):
      rows = read_charades_sta(path, lengths, video_root)
      written.append(write_jsonl(rows, os.path.join(out, f"highlight_{split}_release.jsonl")))
      log(f"{path}: {len(rows)} queries, {len({r['vid'] for r in rows})} videos -> {written[-1]}")
  elif benchmark == "tacos":
    for split, path in _splits(root, "{}.json", ("train", "val", "test")):
      rows = read_tacos(path)
      written.append(write_jsonl(rows, os.path.join(out, f"highlight_{split}_release.jsonl")))
      log(f"{path}: {len(rows)} queries, {len({r['vid'] for r in rows})} videos -> {written[-1]}")
  else:
    raise ValueError(f"unknown grounding benchmark {benchmark!r} (known: charades-sta, tacos)")
  return written


def main(benchmark: str, argv: Optional[Sequence[str]] = None) -> int:
  """``t5video data charades-sta|tacos --root DIR [--out DIR] [--video-root DIR]``."""
  p = argparse.ArgumentParser(
      prog=f"t5video data {benchmark}",
      description=f"Convert {benchmark} annotations into the QVHighlights layout that the "
                  "grounding recipes read (highlight_<split>_release.jsonl).")
  p.add_argument("--root", required=True, help="the folder with the benchmark's annotation files")
  p.add_argument("--out", default=None, help="where to write the JSONL files (default: --root)")
  p.add_argument("--video-root", default=None,
                 help="the videos, for lengths missing from the annotations (default ROOT/videos)")
  args = p.parse_args(argv)
  convert(benchmark, args.root, args.out, args.video_root)
  return 0
