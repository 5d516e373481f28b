"""Readers for public video-dataset layouts on local disk -> ``VideoRecord``s.

Each reader takes the dataset's own annotation files, exactly as published,
and returns ``list[VideoRecord]``. Nothing is decoded here: a record whose
video file is absent still comes back (its ``path`` does not exist) and the
pipeline reports it when it tries to decode. Malformed annotations raise
:class:`AnnotationError`, whose message names the file and the line (JSONL,
CSV; 1-based, the CSV header is line 1) or the key path (JSON, e.g.
``videos[3].video_id``).

Layouts: MSR-VTT (:func:`read_msrvtt`), VATEX (:func:`read_vatex`),
Kinetics-style CSV (:func:`read_kinetics_csv`), QVHighlights JSONL
(:func:`read_qvhighlights`) and a generic folder of videos with a CSV or JSONL
(:func:`read_generic`); :func:`read_dataset` dispatches by name.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Optional

from t5video.data.records import Moment, VideoRecord

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg', '.flv')

# Split names as the layouts spell them -> the records' names.
_SPLIT_ALIASES = {'train': 'train', 'training': 'train', 'val': 'val', 'valid': 'val',
                  'validate': 'val', 'validation': 'val', 'test': 'test', 'testing': 'test'}


class AnnotationError(ValueError):
  """A malformed annotation file; the message names the file and line or key."""


def normalize_split(split: str) -> str:
  """'validate' / 'validation' -> 'val', 'training' -> 'train'; others unchanged."""
  return _SPLIT_ALIASES.get(str(split).strip().lower(), str(split).strip())


def _want_split(split: Optional[str]) -> Optional[str]:
  if split is None or split in ('all', '*'):
    return None
  return normalize_split(split)


# ---------------------------------------------------------------------------
# Typed field access with located errors
# ---------------------------------------------------------------------------


def _where(path: str, loc: str) -> str:
  return f'{path}:{loc}' if loc.isdigit() else f'{path}: {loc}'


def _get(row: dict, key: str, types, path: str, loc: str, *, required: bool = True,
         default: Any = None) -> Any:
  """``row[key]`` checked against ``types``; errors name ``path`` and ``loc``."""
  if not isinstance(row, dict):
    raise AnnotationError(f'{_where(path, loc)}: expected an object, got {type(row).__name__}')
  if key not in row or row[key] is None:
    if required:
      raise AnnotationError(f'{_where(path, loc)}: missing key {key!r}')
    return default
  value = row[key]
  if types is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and not math.isfinite(value):
      ok = False
    if not ok:
      raise AnnotationError(f'{_where(path, loc)}: key {key!r} must be a finite number, '
                            f'got {value!r}')
    return float(value)
  if not isinstance(value, types) or isinstance(value, bool) and types is not bool:
    names = types.__name__ if isinstance(types, type) else '/'.join(t.__name__ for t in types)
    raise AnnotationError(f'{_where(path, loc)}: key {key!r} must be {names}, '
                          f'got {type(value).__name__} {value!r:.80}')
  return value


def _str_list(row: dict, key: str, path: str, loc: str) -> list[str]:
  value = _get(row, key, list, path, loc, required=False, default=[])
  for i, v in enumerate(value):
    if not isinstance(v, str):
      raise AnnotationError(f'{_where(path, loc)}: {key}[{i}] must be str, got {v!r:.80}')
  return list(value)


def _load_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'annotation file not found: {path}')
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f'{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})') from e


def _iter_jsonl(path: str) -> Iterable[tuple[int, dict]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'annotation file not found: {path}')
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise AnnotationError(f'{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})') from e
      if not isinstance(row, dict):
        raise AnnotationError(f'{path}:{lineno}: expected a JSON object, got {type(row).__name__}')
      yield lineno, row


def _iter_csv(path: str, required: Iterable[str] = ()) -> Iterable[tuple[int, dict]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'annotation file not found: {path}')
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
      raise AnnotationError(f'{path}:1: empty file, expected a CSV header')
    reader.fieldnames = header
    missing = [c for c in required if c not in header]
    if missing:
      raise AnnotationError(f'{path}:1: the header lacks column(s) {missing}; got {header}')
    for row in reader:
      lineno = reader.line_num
      if None in row:
        raise AnnotationError(f'{path}:{lineno}: {len(header) + len(row[None])} fields, '
                              f'the header has {len(header)}')
      if all(v is None or not v.strip() for v in row.values()):
        continue
      yield lineno, {k: (v.strip() if v is not None else None) for k, v in row.items()}


def _csv_float(row: dict, key: str, path: str, lineno: int, required: bool = False
               ) -> Optional[float]:
  value = row.get(key)
  if value is None or value == '':
    if required:
      raise AnnotationError(f'{path}:{lineno}: missing value for column {key!r}')
    return None
  try:
    out = float(value)
  except ValueError:
    raise AnnotationError(f'{path}:{lineno}: column {key!r} must be a number, '
                          f'got {value!r}') from None
  if not math.isfinite(out):
    raise AnnotationError(f'{path}:{lineno}: column {key!r} must be finite, got {value!r}')
  return out


def _check_window(start, end, path: str, loc: str) -> None:
  if start is not None and end is not None and end < start:
    raise AnnotationError(f'{_where(path, loc)}: end {end} is before start {start}')
  if start is not None and start < 0:
    raise AnnotationError(f'{_where(path, loc)}: start {start} is negative')


def _find_video(directory: str, stem: str) -> str:
  """``directory/stem.<ext>`` for the first extension that exists (else .mp4)."""
  for ext in VIDEO_EXTENSIONS:
    candidate = os.path.join(directory, stem + ext)
    if os.path.exists(candidate):
      return candidate
  return os.path.join(directory, stem + '.mp4')


# ---------------------------------------------------------------------------
# MSR-VTT
# ---------------------------------------------------------------------------


def read_msrvtt(root: str, split: str) -> list[VideoRecord]:
  """MSR-VTT from ``train_val_videodatainfo.json`` and ``test_videodatainfo.json``.

  Each JSON has ``videos`` (``video_id``, ``category``, ``url``, ``start time``,
  ``end time``, ``split``, ``id``) and ``sentences`` (``caption``,
  ``video_id``, ``sen_id``). Videos are ``TrainValVideo/<video_id>.mp4`` and
  ``TestVideo/<video_id>.mp4`` (already cut to the annotated window, so the
  source-video times go to ``extra['start_time' / 'end_time']``, not to the
  record's window).

  Args:
    root: the folder with the two JSON files and the two video folders.
    split: 'train', 'val' (MSR-VTT's 'validate'), 'test' or 'all'.

  Returns:
    One record per video, captions in ``sen_id`` order, ``label`` = the
    category id (0-19) as a string, ``extra`` = ``category`` (int), ``url``,
    ``start_time``, ``end_time``, ``id``, ``sen_ids``.
  """
  want = _want_split(split)
  files = []
  if want in (None, 'train', 'val'):
    files.append(('train_val_videodatainfo.json', 'TrainValVideo'))
  if want in (None, 'test'):
    files.append(('test_videodatainfo.json', 'TestVideo'))
  if not files:
    raise ValueError(f'MSR-VTT has splits train/val/test, not {split!r}')
  records = []
  for name, video_dir in files:
    path = os.path.join(root, name)
    data = _load_json(path)
    if not isinstance(data, dict):
      raise AnnotationError(f'{path}: expected a JSON object with "videos" and "sentences"')
    videos = _get(data, 'videos', list, path, '(top level)')
    sentences = _get(data, 'sentences', list, path, '(top level)')
    captions: dict[str, list[tuple[int, str]]] = {}
    for i, s in enumerate(sentences):
      loc = f'sentences[{i}]'
      vid = _get(s, 'video_id', str, path, loc)
      caption = _get(s, 'caption', str, path, loc)
      sen_id = _get(s, 'sen_id', int, path, loc, required=False, default=i)
      captions.setdefault(vid, []).append((sen_id, caption))
    seen = set()
    for i, v in enumerate(videos):
      loc = f'videos[{i}]'
      vid = _get(v, 'video_id', str, path, loc)
      if vid in seen:
        raise AnnotationError(f'{path}: {loc}: duplicate video_id {vid!r}')
      seen.add(vid)
      record_split = normalize_split(_get(v, 'split', str, path, loc))
      if want is not None and record_split != want:
        continue
      category = _get(v, 'category', int, path, loc)
      start = _get(v, 'start time', float, path, loc, required=False)
      end = _get(v, 'end time', float, path, loc, required=False)
      caps = sorted(captions.get(vid, []))
      records.append(VideoRecord(
          video_id=vid, path=os.path.join(root, video_dir, vid + '.mp4'),
          split=record_split, captions=[c for _, c in caps], label=str(category),
          extra={'category': category, 'url': _get(v, 'url', str, path, loc, required=False),
                 'start_time': start, 'end_time': end,
                 'id': _get(v, 'id', int, path, loc, required=False),
                 'sen_ids': [s for s, _ in caps]}))
  return records


# ---------------------------------------------------------------------------
# VATEX
# ---------------------------------------------------------------------------

VATEX_FILES = {'train': 'vatex_training_v1.0.json', 'val': 'vatex_validation_v1.0.json',
               'test': 'vatex_public_test_english_v1.1.json'}


def parse_clip_id(clip_id: str) -> tuple[str, float, float]:
  """``'<youtube_id>_<start:06d>_<end:06d>'`` -> (youtube_id, start, end).

  YouTube ids may themselves contain '_', so the split is from the right.
  """
  parts = clip_id.rsplit('_', 2)
  if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
    raise ValueError(f'{clip_id!r} is not <youtube_id>_<start>_<end>')
  return parts[0], float(int(parts[1])), float(int(parts[2]))


def read_vatex(root: str, split: str, video_dir: Optional[str] = None,
               annotation_path: Optional[str] = None) -> list[VideoRecord]:
  """VATEX: a JSON list of ``{"videoID", "enCap": [...], "chCap": [...]}``.

  ``videoID`` is ``<youtube_id>_<start:06d>_<end:06d>`` and the video file is
  ``<video_dir>/<videoID>.<ext>`` for the first of :data:`VIDEO_EXTENSIONS`
  that exists (``.mp4`` if none does). The clips are already cut, so the
  source times go to ``extra['source_start' / 'source_end']``.

  Args:
    root: the folder with the VATEX JSON files (named as released:
      ``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``,
      ``vatex_public_test_english_v1.1.json``).
    split: 'train', 'val' or 'test'.
    video_dir: the folder of clips (default ``<root>/videos``).
    annotation_path: a JSON file to read instead of the released name.

  Returns:
    One record per clip: English captions in ``captions``, Chinese ones in
    ``extra['chCap']``.
  """
  want = normalize_split(split)
  if annotation_path is None:
    if want not in VATEX_FILES:
      raise ValueError(f'VATEX has splits {sorted(VATEX_FILES)}, not {split!r}')
    annotation_path = os.path.join(root, VATEX_FILES[want])
  video_dir = video_dir if video_dir is not None else os.path.join(root, 'videos')
  data = _load_json(annotation_path)
  if not isinstance(data, list):
    raise AnnotationError(f'{annotation_path}: expected a JSON list of clips, '
                          f'got {type(data).__name__}')
  records = []
  for i, row in enumerate(data):
    loc = f'[{i}]'
    clip_id = _get(row, 'videoID', str, annotation_path, loc)
    try:
      ytid, start, end = parse_clip_id(clip_id)
    except ValueError as e:
      raise AnnotationError(f'{annotation_path}: {loc}.videoID: {e}') from None
    extra = {'youtube_id': ytid, 'source_start': start, 'source_end': end}
    if 'chCap' in row:
      extra['chCap'] = _str_list(row, 'chCap', annotation_path, loc)
    records.append(VideoRecord(
        video_id=clip_id, path=_find_video(video_dir, clip_id), split=want,
        captions=_str_list(row, 'enCap', annotation_path, loc), extra=extra))
  return records


# ---------------------------------------------------------------------------
# Kinetics-style CSV
# ---------------------------------------------------------------------------


def _index_videos(video_root: str, depth: int = 2) -> dict[str, list[str]]:
  """Maps file stems to paths for video files up to ``depth`` folders down."""
  index: dict[str, list[str]] = {}
  stack = [(video_root, 0)]
  while stack:
    folder, level = stack.pop()
    try:
      entries = list(os.scandir(folder))
    except OSError:
      continue
    for e in entries:
      if e.is_dir(follow_symlinks=True):
        if level < depth:
          stack.append((e.path, level + 1))
      else:
        stem, ext = os.path.splitext(e.name)
        if ext.lower() in VIDEO_EXTENSIONS:
          index.setdefault(stem, []).append(e.path)
  return index


def read_kinetics_csv(csv_path: str, video_root: str,
                      split: Optional[str] = None) -> list[VideoRecord]:
  """A Kinetics-style CSV: ``label,youtube_id,time_start,time_end,split``.

  Videos follow the common download layout ``<youtube_id>_<start:06d>_<end:06d>``
  plus a video extension, directly in ``video_root`` or inside a ``<label>/``
  (spaces or underscores), ``<split>/`` or ``<split>/<label>/`` folder; a plain
  ``<youtube_id>.<ext>`` is also accepted. A video found nowhere gives a
  record whose path does not exist (``<video_root>/<label>/<clip>.mp4``): the
  pipeline reports it, the reader does not fail. Extra columns (``is_cc``) go
  to ``extra``; a CSV without ``label`` (Kinetics-700 test) gives ``label=None``.

  Args:
    csv_path: the CSV file.
    video_root: the folder of videos.
    split: keep only rows of this split (None: all rows).

  Returns:
    One record per row; the clips are already cut, so ``time_start`` /
    ``time_end`` go to ``extra`` and the record's window stays None.
  """
  want = _want_split(split)
  index = _index_videos(video_root)
  records, seen = [], set()
  for lineno, row in _iter_csv(csv_path, required=('youtube_id', 'time_start', 'time_end')):
    ytid = row['youtube_id']
    if not ytid:
      raise AnnotationError(f'{csv_path}:{lineno}: empty youtube_id')
    t0 = _csv_float(row, 'time_start', csv_path, lineno, required=True)
    t1 = _csv_float(row, 'time_end', csv_path, lineno, required=True)
    _check_window(t0, t1, csv_path, str(lineno))
    row_split = normalize_split(row['split']) if row.get('split') else (want or 'train')
    if want is not None and row_split != want:
      continue
    label = row.get('label') or None
    stem = f'{ytid}_{int(round(t0)):06d}_{int(round(t1)):06d}'
    path = _pick(index.get(stem) or index.get(ytid) or [], video_root, label,
                 row.get('split'))
    if path is None:
      path = os.path.join(video_root, *( [label] if label else []), stem + '.mp4')
    video_id = stem if stem not in seen else f'{stem}@{lineno}'
    seen.add(video_id)
    extra = {k: v for k, v in row.items()
             if k not in ('label', 'youtube_id', 'time_start', 'time_end', 'split')}
    extra.update(youtube_id=ytid, time_start=t0, time_end=t1)
    records.append(VideoRecord(video_id=video_id, path=path, split=row_split,
                               label=label, extra=extra))
  return records


def _pick(candidates: list[str], root: str, label: Optional[str],
          split: Optional[str]) -> Optional[str]:
  """Among same-named files, prefer the one under the row's label/split folder."""
  if not candidates:
    return None
  if len(candidates) == 1:
    return candidates[0]
  wanted = {x for x in (label, label and label.replace(' ', '_'), split) if x}
  for c in candidates:
    parts = os.path.relpath(c, root).split(os.sep)[:-1]
    if wanted & set(parts):
      return c
  return sorted(candidates)[0]


# ---------------------------------------------------------------------------
# QVHighlights
# ---------------------------------------------------------------------------

QVH_CLIP_SECONDS = 2.0


def read_qvhighlights(jsonl_path: str, video_root: str,
                      split: Optional[str] = None) -> list[VideoRecord]:
  """QVHighlights JSONL: one query per line.

  Keys: ``qid``, ``query``, ``vid``, ``duration``, and (not in the test split)
  ``relevant_windows`` (``[[start, end], ...]`` seconds),
  ``relevant_clip_ids`` (indices of 2-second clips) and ``saliency_scores``
  (per relevant clip, three annotators' 0-4 scores).

  Saliency convention: ``record.saliency`` has one value per 2-second clip
  (``ceil(duration / 2)`` values, clip ``i`` covers ``[2i, 2i + 2)`` s): the
  mean of the three annotators for the relevant clips, 0 elsewhere;
  ``extra['saliency_clip_s'] = 2.0`` records the period. ``moments`` holds the
  relevant windows with the query; ``captions`` is empty.

  Args:
    jsonl_path: e.g. ``highlight_train_release.jsonl``.
    video_root: the folder with ``<vid>.mp4`` (or another video extension).
    split: the records' split (default: from the file name, else 'train').

  Returns:
    One record per query, ``video_id`` = ``'<qid>'``.
  """
  if split is None:
    base = os.path.basename(jsonl_path).lower()
    split = next((s for s in ('train', 'val', 'test') if s in base), 'train')
  split = normalize_split(split)
  records = []
  for lineno, row in _iter_jsonl(jsonl_path):
    loc = str(lineno)
    qid = _get(row, 'qid', (int, str), jsonl_path, loc)
    query = _get(row, 'query', str, jsonl_path, loc)
    vid = _get(row, 'vid', str, jsonl_path, loc)
    duration = _get(row, 'duration', float, jsonl_path, loc)
    windows = _get(row, 'relevant_windows', list, jsonl_path, loc, required=False, default=[])
    moments = []
    for j, w in enumerate(windows):
      if (not isinstance(w, list) or len(w) != 2 or
          not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)):
        raise AnnotationError(f'{jsonl_path}:{lineno}: relevant_windows[{j}] must be '
                              f'[start, end], got {w!r}')
      _check_window(w[0], w[1], jsonl_path, loc)
      moments.append(Moment(start=float(w[0]), end=float(w[1]), query=query))
    clip_ids = _get(row, 'relevant_clip_ids', list, jsonl_path, loc, required=False, default=[])
    scores = _get(row, 'saliency_scores', list, jsonl_path, loc, required=False, default=[])
    if len(clip_ids) != len(scores):
      raise AnnotationError(f'{jsonl_path}:{lineno}: {len(clip_ids)} relevant_clip_ids but '
                            f'{len(scores)} saliency_scores')
    saliency: list[float] = []
    if clip_ids:
      saliency = [0.0] * int(math.ceil(duration / QVH_CLIP_SECONDS))
      for j, (cid, s) in enumerate(zip(clip_ids, scores)):
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < len(saliency):
          raise AnnotationError(f'{jsonl_path}:{lineno}: relevant_clip_ids[{j}]={cid!r} is '
                                f'not a clip index in [0, {len(saliency)})')
        if (not isinstance(s, list) or not s or
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s)):
          raise AnnotationError(f'{jsonl_path}:{lineno}: saliency_scores[{j}] must be a list '
                                f'of numbers, got {s!r}')
        saliency[cid] = float(sum(s)) / len(s)
    records.append(VideoRecord(
        video_id=str(qid), path=_find_video(video_root, vid), split=split,
        duration=duration, moments=moments, saliency=saliency,
        extra={'qid': qid, 'vid': vid, 'query': query,
               'saliency_clip_s': QVH_CLIP_SECONDS}))
  return records


# ---------------------------------------------------------------------------
# Generic CSV / JSONL
# ---------------------------------------------------------------------------

_GENERIC_KEYS = ('path', 'caption', 'captions', 'label', 'tags', 'split', 'video_id',
                 'start', 'end', 'duration', 'subtitle', 'metadata', 'moments', 'saliency')


def _resolve(base: str, p: str) -> str:
  return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


def _generic_record(row: dict, base: str, path: str, loc: str,
                    captions: list[str], tags: list[str], metadata: dict[str, str],
                    moments: list[Moment], saliency: list[float],
                    nums: dict[str, Optional[float]], extra: dict[str, Any]) -> VideoRecord:
  rel = row['path']
  _check_window(nums['start'], nums['end'], path, loc)
  video_id = row.get('video_id') or os.path.splitext(rel)[0]
  return VideoRecord(
      video_id=str(video_id), path=_resolve(base, rel),
      split=normalize_split(row.get('split') or 'train'), captions=captions,
      label=row.get('label') or None, tags=tags, metadata=metadata,
      subtitle=row.get('subtitle') or '', start=nums['start'], end=nums['end'],
      duration=nums['duration'], moments=moments, saliency=saliency, extra=extra)


def _generic_jsonl(annotation_path: str, base: str) -> list[VideoRecord]:
  records = []
  for lineno, row in _iter_jsonl(annotation_path):
    loc = str(lineno)
    p = _get(row, 'path', str, annotation_path, loc)
    if not p:
      raise AnnotationError(f'{annotation_path}:{lineno}: empty path')
    captions = _str_list(row, 'captions', annotation_path, loc)
    caption = _get(row, 'caption', str, annotation_path, loc, required=False)
    if caption is not None:
      captions = [caption] + captions
    for key in ('label', 'split', 'video_id', 'subtitle'):
      if key in row and row[key] is not None:
        if key == 'label' and isinstance(row[key], int) and not isinstance(row[key], bool):
          row = {**row, key: str(row[key])}
        _get(row, key, str, annotation_path, loc)
    metadata = _get(row, 'metadata', dict, annotation_path, loc, required=False, default={})
    for k, v in metadata.items():
      if not isinstance(v, str):
        raise AnnotationError(f'{annotation_path}:{lineno}: metadata[{k!r}] must be str, '
                              f'got {v!r:.80}')
    moments = []
    for j, m in enumerate(_get(row, 'moments', list, annotation_path, loc, required=False,
                               default=[])):
      mloc = f'{lineno}'
      if not isinstance(m, dict):
        raise AnnotationError(f'{annotation_path}:{lineno}: moments[{j}] must be an object')
      try:
        s = _get(m, 'start', float, annotation_path, mloc)
        e = _get(m, 'end', float, annotation_path, mloc)
        q = _get(m, 'query', str, annotation_path, mloc, required=False, default='')
      except AnnotationError as err:
        raise AnnotationError(f'{err} (in moments[{j}])') from None
      _check_window(s, e, annotation_path, mloc)
      moments.append(Moment(start=s, end=e, query=q))
    saliency = _get(row, 'saliency', list, annotation_path, loc, required=False, default=[])
    for j, v in enumerate(saliency):
      if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise AnnotationError(f'{annotation_path}:{lineno}: saliency[{j}] must be a number, '
                              f'got {v!r}')
    nums = {k: _get(row, k, float, annotation_path, loc, required=False)
            for k in ('start', 'end', 'duration')}
    extra = {k: v for k, v in row.items() if k not in _GENERIC_KEYS}
    records.append(_generic_record(row, base, annotation_path, loc, captions,
                                   _str_list(row, 'tags', annotation_path, loc),
                                   {str(k): v for k, v in metadata.items()}, moments,
                                   [float(v) for v in saliency], nums, extra))
  return records


def _split_bar(value: Optional[str]) -> list[str]:
  return [x.strip() for x in (value or '').split('|') if x.strip()]


def _generic_csv(annotation_path: str, base: str) -> list[VideoRecord]:
  records = []
  for lineno, row in _iter_csv(annotation_path, required=('path',)):
    loc = str(lineno)
    if not row.get('path'):
      raise AnnotationError(f'{annotation_path}:{lineno}: empty path')
    captions = _split_bar(row.get('captions'))
    if row.get('caption'):
      captions = [row['caption']] + captions
    metadata = {k[len('meta_'):]: v for k, v in row.items()
                if k.startswith('meta_') and v}
    moments = []
    if row.get('moments'):
      try:
        raw = json.loads(row['moments'])
      except json.JSONDecodeError as e:
        raise AnnotationError(f'{annotation_path}:{lineno}: column "moments" must be a JSON '
                              f'list of {{start, end, query}}: {e.msg}') from None
      if not isinstance(raw, list):
        raise AnnotationError(f'{annotation_path}:{lineno}: column "moments" must be a JSON list')
      for j, m in enumerate(raw):
        try:
          s = _get(m, 'start', float, annotation_path, loc)
          e = _get(m, 'end', float, annotation_path, loc)
          q = _get(m, 'query', str, annotation_path, loc, required=False, default='')
        except AnnotationError as err:
          raise AnnotationError(f'{err} (in moments[{j}])') from None
        moments.append(Moment(start=s, end=e, query=q))
    saliency = []
    for j, v in enumerate(_split_bar(row.get('saliency'))):
      try:
        saliency.append(float(v))
      except ValueError:
        raise AnnotationError(f'{annotation_path}:{lineno}: saliency[{j}]={v!r} is not a '
                              f'number') from None
    nums = {k: _csv_float(row, k, annotation_path, lineno) for k in ('start', 'end', 'duration')}
    extra = {k: v for k, v in row.items()
             if k not in _GENERIC_KEYS and not k.startswith('meta_') and v not in (None, '')}
    records.append(_generic_record(row, base, annotation_path, loc, captions,
                                   _split_bar(row.get('tags')), metadata, moments,
                                   saliency, nums, extra))
  return records


def read_generic(annotation_path: str, root: Optional[str] = None) -> list[VideoRecord]:
  """A folder of videos described by a JSONL or CSV file.

  JSONL keys: ``path`` (required; relative to ``root`` if given, else to the
  annotation file's folder, or absolute), ``caption`` (str) and/or
  ``captions`` (list of str), ``label``, ``tags`` (list of str), ``split``
  (default 'train'), and optional ``video_id`` (default: the path without its
  extension), ``start``, ``end``, ``duration`` (seconds), ``subtitle``,
  ``metadata`` (dict of str), ``moments`` (list of ``{start, end, query}``),
  ``saliency`` (list of numbers). Other keys go to ``extra``.

  CSV: the same columns; ``captions``, ``tags`` and ``saliency`` are
  ``|``-separated, ``moments`` is a JSON list, metadata fields are columns
  named ``meta_<field>``; other non-empty columns go to ``extra``.

  Args:
    annotation_path: a ``.jsonl`` or ``.csv`` file.
    root: the folder relative paths start from (default: the file's folder).

  Returns:
    One record per line, in file order.
  """
  base = root if root is not None else os.path.dirname(os.path.abspath(annotation_path))
  ext = os.path.splitext(annotation_path)[1].lower()
  if ext in ('.jsonl', '.json'):
    return _generic_jsonl(annotation_path, base)
  if ext in ('.csv', '.tsv'):
    return _generic_csv(annotation_path, base)
  raise ValueError(f'{annotation_path}: expected a .jsonl or .csv annotation file')


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------

LAYOUTS = ('msrvtt', 'vatex', 'kinetics', 'qvhighlights', 'generic')


def _first_existing(candidates: list[str], what: str) -> str:
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise FileNotFoundError(f'no {what} found; looked for: {", ".join(candidates)}')


def read_dataset(layout: str, root: str, split: str, **kw) -> list[VideoRecord]:
  """Reads ``split`` of a dataset stored in one of :data:`LAYOUTS` under ``root``.

  Args:
    layout: 'msrvtt' | 'vatex' | 'kinetics' | 'qvhighlights' | 'generic'.
    root: the dataset folder.
    split: 'train', 'val', 'test' (or 'all' where the layout allows it).
    **kw: per layout: vatex ``video_dir``, ``annotation_path``; kinetics
      ``csv_path`` (default ``<root>/<split>.csv``, also ``validate.csv`` /
      ``val.csv``), ``video_root`` (default ``root``); qvhighlights
      ``jsonl_path`` (default ``<root>/highlight_<split>_release.jsonl``),
      ``video_root`` (default ``<root>/videos``); generic ``annotation_path``
      (default ``<root>/<split>.jsonl|csv``, else ``<root>/annotations.jsonl|csv``
      filtered by split), ``video_root`` (the folder paths are relative to).

  Returns:
    The records of that split.
  """
  layout = layout.lower()
  want = _want_split(split)
  if layout == 'msrvtt':
    return read_msrvtt(root, split, **kw)
  if layout == 'vatex':
    return read_vatex(root, split, **kw)
  if layout == 'kinetics':
    csv_path = kw.pop('csv_path', None)
    if csv_path is None:
      names = {'val': ['validate.csv', 'val.csv', 'validation.csv']}.get(want, [f'{split}.csv'])
      csv_path = _first_existing([os.path.join(root, n) for n in names], 'Kinetics CSV')
    return read_kinetics_csv(csv_path, kw.pop('video_root', root), split=split, **kw)
  if layout == 'qvhighlights':
    jsonl = kw.pop('jsonl_path', None) or os.path.join(root, f'highlight_{want}_release.jsonl')
    return read_qvhighlights(jsonl, kw.pop('video_root', os.path.join(root, 'videos')),
                             split=want, **kw)
  if layout == 'generic':
    ann = kw.pop('annotation_path', None)
    if ann is None:
      ann = _first_existing([os.path.join(root, f'{n}.{e}') for n in (split, 'annotations')
                             for e in ('jsonl', 'csv')], 'generic annotation file')
    records = read_generic(ann, kw.pop('video_root', None), **kw)
    return [r for r in records if want is None or r.split == want]
  raise ValueError(f'unknown layout {layout!r}; expected one of {LAYOUTS}')
