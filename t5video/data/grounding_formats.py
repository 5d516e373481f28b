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

Two highlight-detection benchmarks have per-clip scores and no moments; their lines carry
``domain``, ``clip_seconds`` (the annotation period), ``clip_scores`` (per annotated clip, every
annotator's score) and ``score_range`` (``[lowest, highest]`` possible score), with no
``relevant_windows``; the query is the video's title (TVSum) or its domain's query (YouTube).
The splits are the per-domain train / val lists every paper since UMT uses
(``highlight_splits.json``); a video of the annotations that no split lists is left out, and said:

* **TVSum** (``t5video data tvsum --root DIR``): the release's ``ydata-tvsum50-anno.tsv`` (per
  video 20 rows ``<vid>\t<category>\t<score,score,...>``, one 1-5 score per frame, constant over
  the 2-second shots the annotators scored) and ``ydata-tvsum50-info.tsv`` (``category``,
  ``video_id``, ``title``, ``url``, ``length`` as ``m:ss``). Clips are 2 s; a clip's scores are
  the frame scores at its middle. The duration is the annotated frames over the video file's frame
  rate (``DIR/video/<vid>.mp4``, the release's folder, or ``--video-root``), else ``length``. A
  ``videos`` link to the release's ``video/`` folder is made beside the JSONL files (the layout's
  video folder) unless one exists.
* **YouTube Highlights** (``t5video data youtube-highlights --root DIR``): ``youtube_anno.json``
  as UMT released it, ``{vid: {"frames": N, "fps": F, "match": [-1 | 1 per clip], "info": [...],
  ...}}``; the duration is frames / fps, the clips split it evenly (their length varies by video),
  the query is ``info[5]`` when present, else the domain's name.

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


def _read_json(json_path: str):
  """A JSON annotation file; a missing or invalid one is named."""
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f"{json_path}: not found")
  with open(json_path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{json_path}: invalid JSON ({e})") from e


def read_tacos(json_path: str) -> list[dict]:
  """QVHighlights-layout rows of one TACoS split file (2D-TAN's ``{train,val,test}.json``)."""
  data = _read_json(json_path)
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


# --------------------------------------------------------------------------------------------
# Highlight detection: TVSum and YouTube Highlights
# --------------------------------------------------------------------------------------------

HIGHLIGHT_BENCHMARKS = ("tvsum", "youtube-highlights")
TVSUM_CLIP_SECONDS = 2.0


def highlight_splits() -> dict:
  """``{'tvsum' | 'youtube_highlights': {domain: {'train': [vid...], 'val': [vid...]}}}``."""
  path = os.path.join(os.path.dirname(__file__), "highlight_splits.json")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _seconds(length: str, where: str) -> float:
  """``'m:ss'`` or ``'h:mm:ss'`` -> seconds."""
  try:
    value = 0.0
    for part in str(length).strip().split(":"):
      value = value * 60 + float(part)
    return value
  except ValueError as e:
    raise AnnotationError(f"{where}: length {length!r} is not m:ss") from e


def read_tvsum(root: str, video_root: Optional[str] = None) -> list[dict]:
  """One line per TVSum video from the release's two TSV files (see the module docstring)."""
  anno_path = os.path.join(root, "ydata-tvsum50-anno.tsv")
  info_path = os.path.join(root, "ydata-tvsum50-info.tsv")
  for path in (anno_path, info_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: not found (the TVSum release's data/ folder holds it)")
  info: dict[str, dict] = {}
  with open(info_path, newline="", encoding="utf-8") as f:
    for lineno, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
      missing = [k for k in ("category", "video_id", "title", "length") if not row.get(k)]
      if missing:
        raise AnnotationError(f"{info_path}:{lineno}: missing {missing}")
      info[row["video_id"]] = row
  users: dict[str, list[list[float]]] = {}
  category: dict[str, str] = {}
  with open(anno_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      where = f"{anno_path}:{lineno}"
      if len(parts) != 3:
        raise AnnotationError(f"{where}: expected '<video_id>\\t<category>\\t<scores>', got "
                              f"{len(parts)} fields")
      try:
        scores = [float(x) for x in parts[2].split(",")]
      except ValueError as e:
        raise AnnotationError(f"{where}: the scores must be comma-separated numbers") from e
      vid = parts[0]
      if users.get(vid) and len(users[vid][0]) != len(scores):
        raise AnnotationError(f"{where}: {len(scores)} frame scores, but an earlier row of {vid!r} "
                              f"has {len(users[vid][0])}")
      users.setdefault(vid, []).append(scores)
      category[vid] = parts[1]
  rows = []
  for vid, per_user in users.items():
    if vid not in info:
      raise AnnotationError(f"{anno_path}: video {vid!r} is not in {info_path}")
    frames = len(per_user[0])
    path = _find_video(video_root, vid) if video_root else None
    if path:   # the annotation has one score per frame: frames / the stream's rate
      from t5video.data import decode  # pylint: disable=g-import-not-at-top
      probed = decode.probe(path)
      duration = frames / probed.fps if probed.fps > 0 else float(probed.duration)
    else:
      duration = _seconds(info[vid]["length"], f"{info_path} ({vid})")
    if duration <= 0:
      raise AnnotationError(f"{info_path}: video {vid!r} has length {duration}")
    clips = max(int(duration // TVSUM_CLIP_SECONDS), 1)
    fps = frames / duration
    # [users, frames] -> [clips, users]: each user's score at the clip's middle frame
    table = [[per_user[u][min(int(((c + 0.5) * TVSUM_CLIP_SECONDS) * fps), frames - 1)]
              for u in range(len(per_user))] for c in range(clips)]
    rows.append({"vid": vid, "query": info[vid]["title"], "duration": round(duration, 3),
                 "domain": category[vid], "clip_seconds": TVSUM_CLIP_SECONDS,
                 "clip_scores": table, "score_range": [1, 5]})
  return rows


def read_youtube_highlights(json_path: str) -> list[dict]:
  """One line per video of UMT's ``youtube_anno.json`` (see the module docstring)."""
  data = _read_json(json_path)
  rows = []
  for vid, video in data.items():
    where = f"{json_path}: video {vid!r}"
    try:
      frames, fps, match = float(video["frames"]), float(video["fps"]), list(video["match"])
      match = [float(m) for m in match]
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationError(f"{where}: needs numeric 'frames' and 'fps' and a list 'match' ({e!r})") from e
    if frames <= 0 or fps <= 0 or not match:
      raise AnnotationError(f"{where}: frames {frames}, fps {fps} and {len(match)} match labels "
                            "must all be positive")
    info = video.get("info") or []
    duration = frames / fps
    rows.append({"vid": vid, "query": str(info[5]) if len(info) > 5 else "",
                 "duration": round(duration, 3), "clip_seconds": duration / len(match),
                 "clip_scores": [[m] for m in match], "score_range": [-1, 1]})
  return rows


def split_highlights(rows: Sequence[dict], benchmark: str, log=print) -> dict[str, list[dict]]:
  """``{'train': rows, 'val': rows}`` by the published per-domain splits, each row given its
  ``domain`` and a ``qid`` (running over the split)."""
  splits = highlight_splits()["tvsum" if benchmark == "tvsum" else "youtube_highlights"]
  by_vid = {r["vid"]: r for r in rows}
  out: dict[str, list[dict]] = {"train": [], "val": []}
  listed = set()
  for domain, parts in splits.items():
    for split, vids in parts.items():
      for vid in vids:
        if vid in by_vid:
          row = dict(by_vid[vid], domain=domain)
          if not row["query"]:
            row["query"] = domain
          out[split].append({"qid": len(out[split]), **row})
          listed.add(vid)
  unlisted = sorted(set(by_vid) - listed)
  missing = sorted({v for parts in splits.values() for vids in parts.values() for v in vids} - listed)
  if unlisted or missing:
    log(f"{benchmark}: {len(unlisted)} annotated videos are in no split (left out"
        f"{': ' + ', '.join(unlisted[:5]) if unlisted else ''}); {len(missing)} split videos have "
        f"no annotation{': ' + ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '') if missing else ''}")
  return out


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
  given_video_root = video_root
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
  elif benchmark in HIGHLIGHT_BENCHMARKS:
    if benchmark == "tvsum":
      rows = read_tvsum(root, given_video_root or next(
          (p for p in (os.path.join(root, "video"), video_root) if os.path.isdir(p)), None))
      release_videos = os.path.join(root, "video")
      if (not given_video_root and os.path.isdir(release_videos)
          and not os.path.exists(os.path.join(out, "videos"))):
        # the QVHighlights layout reads <root>/videos: point it at the release's video/ folder
        os.symlink(os.path.relpath(release_videos, out), os.path.join(out, "videos"))
        log(f"{os.path.join(out, 'videos')} -> {release_videos}")
    else:
      rows = read_youtube_highlights(os.path.join(root, "youtube_anno.json"))
    for split, part in split_highlights(rows, benchmark, log=log).items():
      written.append(write_jsonl(part, os.path.join(out, f"highlight_{split}_release.jsonl")))
      log(f"{benchmark} {split}: {len(part)} videos in {len({r['domain'] for r in part})} domains "
          f"-> {written[-1]}")
  else:
    raise ValueError(f"unknown grounding benchmark {benchmark!r} (known: charades-sta, tacos, "
                     f"{', '.join(HIGHLIGHT_BENCHMARKS)})")
  return written


def main(benchmark: str, argv: Optional[Sequence[str]] = None) -> int:
  """``t5video data charades-sta|tacos|tvsum|youtube-highlights --root DIR [--out DIR]
  [--video-root DIR]``."""
  p = argparse.ArgumentParser(
      prog=f"t5video data {benchmark}",
      description=f"Convert {benchmark} annotations into the QVHighlights layout that the "
                  "grounding recipes read (highlight_<split>_release.jsonl).")
  p.add_argument("--root", required=True, help="the folder with the benchmark's annotation files")
  p.add_argument("--out", default=None, help="where to write the JSONL files (default: --root)")
  p.add_argument("--video-root", default=None,
                 help="the videos, for lengths missing from the annotations (default ROOT/videos; "
                      "TVSum: ROOT/video, the release's folder)")
  args = p.parse_args(argv)
  convert(benchmark, args.root, args.out, args.video_root)
  return 0
