"""Tests for the rendered synthetic video dataset (t5video.data.synthetic)."""

from __future__ import annotations

import collections
import filecmp
import json
import math
import os

import av
import numpy as np
import pytest

from t5video.data import synthetic
from t5video.data.records import VideoRecord

_GENERIC_KEYS = {"video_id", "path", "captions", "label", "tags", "split", "duration",
                 "subtitle", "metadata", "moments", "saliency"}
_QVH_KEYS = {"qid", "query", "vid", "duration", "relevant_windows", "relevant_clip_ids",
             "saliency_scores"}


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _same_video(p: str, q: str) -> bool:
  """Equal frame count and frames equal up to x264 noise.

  libx264 here is not bitwise deterministic under CPU load (rarely, the same
  frames encode to different bytes), so identity is checked on decoded frames:
  the rendered content is deterministic, the encoder's rounding is not.
  """
  if filecmp.cmp(p, q, shallow=False):
    return True
  fp, _ = _decode_all(p)
  fq, _ = _decode_all(q)
  if len(fp) != len(fq):
    return False
  diff = np.abs(np.stack(fp).astype(np.float32) - np.stack(fq).astype(np.float32))
  return float(diff.mean()) < 1.5


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _decode_all(path: str) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
  with av.open(path) as container:
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, stream


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
  """A small dataset with the default settings, rendered once for this module."""
  out = str(tmp_path_factory.mktemp("synth"))
  summary = synthetic.render_dataset(out, 36, seed=3)
  return out, summary


# ---------------------------------------------------------------------------
# Specs: the class prior, splits and determinism, without rendering.
# ---------------------------------------------------------------------------

def test_class_distribution_is_long_tailed_and_stratified():
  specs = synthetic.sample_specs(3000, seed=0)
  counts = collections.Counter(s.label for s in specs)
  frac = np.array([counts[n] / len(specs) for n in synthetic.CLASS_NAMES])
  # Every class present, head first, and a real tail.
  assert (frac > 0).all()
  assert (np.diff(frac) <= 1e-9).all(), frac
  assert frac.max() > 0.2
  assert (frac < 0.02).sum() >= 2, frac
  # Splits follow the requested fractions, and stratification gives every
  # class clips in all three.
  split_frac = collections.Counter(s.split for s in specs)
  for name, want in zip(synthetic.SPLITS, (0.7, 0.15, 0.15)):
    assert abs(split_frac[name] / len(specs) - want) < 0.01
  assert all(3 <= len(s.captions) <= 5 for s in specs)
  assert not any(" an uniform" in c or " a orange" in c for s in specs for c in s.captions)
  per_class = collections.Counter((s.label, s.split) for s in specs)
  for name in synthetic.CLASS_NAMES:
    for split in synthetic.SPLITS:
      assert per_class[name, split] > 0, (name, split)


def test_every_class_in_train_at_small_sizes():
  for n in (48, 100, 300):
    specs = synthetic.sample_specs(n, seed=n)
    train = {s.label for s in specs if s.split == "train"}
    assert train == set(synthetic.CLASS_NAMES), n
    assert len(specs) == n


def test_specs_are_deterministic():
  a = synthetic.sample_specs(40, seed=11)
  b = synthetic.sample_specs(40, seed=11)
  c = synthetic.sample_specs(40, seed=12)
  assert a == b
  assert [s.captions for s in a] != [s.captions for s in c]
  assert [s.label for s in a] != [s.label for s in c]


def test_order_dependent_pairs_share_end_states():
  """Within a pair, the middle-frame state has the same distribution; only the order differs."""
  specs = synthetic.sample_specs(400, seed=4, classes=("moves left", "moves right"),
                                 class_prior="uniform")
  mid_x = collections.defaultdict(list)
  for s in specs:
    if s.label in ("moves left", "moves right"):
      track = synthetic._track(s, np.array([s.duration / 2]))
      x0, x1, _, _ = synthetic._usable(s.width, s.height, float(track["max_radius"][0]))
      mid_x[s.label].append((float(track["x"][0]) - x0) / (x1 - x0))
  left, right = np.array(mid_x["moves left"]), np.array(mid_x["moves right"])
  assert len(left) == len(right) == 200
  # Mirror images of each other around the centre, with means near 0.5.
  assert abs(left.mean() - 0.5) < 0.05 and abs(right.mean() - 0.5) < 0.05
  assert abs(np.median(left) - (1 - np.median(right))) < 0.1


# ---------------------------------------------------------------------------
# A rendered folder.
# ---------------------------------------------------------------------------

def test_videos_decode_with_annotated_duration_fps_and_size(rendered):
  out, summary = rendered
  rows = _read_jsonl(os.path.join(out, "annotations.jsonl"))
  assert len(rows) == summary["num_videos"] == 36
  sizes, rates = set(), set()
  for row in rows:
    path = os.path.join(out, row["path"])
    frames, stream = _decode_all(path)
    assert stream.codec_context.name == "h264"
    assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(frames) == row["num_frames"]
    assert frames[0].shape == (row["height"], row["width"], 3)
    assert row["width"] % 2 == 0 and row["height"] % 2 == 0
    assert float(stream.average_rate) == row["fps"]
    assert abs(len(frames) / row["fps"] - row["duration"]) < 1e-6
    assert abs(float(stream.duration * stream.time_base) - row["duration"]) < 1e-3
    assert 2.0 - 0.5 / row["fps"] <= row["duration"] <= 4.0 + 0.5 / row["fps"]
    sizes.add((row["width"], row["height"]))
    rates.add(row["fps"])
    # Small files: under 2 KiB a frame.
    assert os.path.getsize(path) < 2048 * row["num_frames"]
  # Resolution and frame rate vary across clips.
  assert len(sizes) >= 2 and len(rates) >= 2


def test_generic_jsonl_rows(rendered):
  out, _ = rendered
  rows = _read_jsonl(os.path.join(out, "annotations.jsonl"))
  verbs = synthetic.ACTION_VERBS
  for row in rows:
    assert _GENERIC_KEYS <= set(row), set(row) ^ _GENERIC_KEYS
    assert row["label"] in synthetic.CLASS_NAMES
    assert row["split"] in synthetic.SPLITS
    assert row["path"] == f"videos/{row['video_id']}.mp4"
    # 3-5 distinct paraphrases naming the key object and the action.
    caps = row["captions"]
    assert 3 <= len(caps) <= 5 and len(set(caps)) == len(caps)
    shape = row["tags"][0]
    actions = synthetic._CLASS_ACTIONS[row["label"]]
    for cap in caps:
      assert any(w in cap for w in synthetic.SHAPE_WORDS[shape]), cap
      for action in actions:
        stems = [v.split(" {")[0] for v in verbs[action]]
        assert any(stem in cap for stem in stems), (action, cap)
    # Tags: objects, colours, the background (exactly one), actions.
    assert set(actions) <= set(row["tags"])
    (background,) = [t for t in row["tags"] if t in synthetic.BACKGROUNDS]
    assert any(any(w in cap for w in synthetic.BACKGROUND_WORDS[background]) for cap in caps)
    # Metadata is honest (generator version 4): partial and noisy, the background field
    # may be wrong or empty, and it never describes the key object (tests/test_side_information.py).
    assert set(row["metadata"]) == {"objects", "background"}
    assert all(isinstance(v, str) for v in row["metadata"].values())
    assert row["metadata"]["background"] in ("", *synthetic.BACKGROUNDS)
    key_colour = row["tags"][1]
    assert f"{key_colour} {shape}" not in row["subtitle"]
    assert isinstance(row["subtitle"], str) and row["subtitle"]
    # One moment per event, inside the clip, in order, and saliency high there.
    assert len(row["moments"]) == len(actions)
    prev_end = 0.0
    for m in row["moments"]:
      assert prev_end <= m["start"] < m["end"] <= row["duration"] + 1e-6
      assert m["query"] and any(w in m["query"] for w in synthetic.SHAPE_WORDS[shape])
      prev_end = m["end"]
    sal = np.array(row["saliency"])
    assert len(sal) == math.ceil(row["duration"] - 1e-9)
    assert ((sal >= 0) & (sal <= 1)).all()
    inside = [i for i in range(len(sal)) if any(
        m["start"] < i + 1 and m["end"] > i for m in row["moments"])]
    outside = [i for i in range(len(sal)) if i not in inside]
    assert sal[inside].max() > 0.4
    if outside:
      assert sal[outside].max() < sal[inside].max()
    # The reader's record type accepts the layout's fields.
    rec = VideoRecord.from_json({k: row[k] for k in _GENERIC_KEYS})
    assert rec.moments[0].query == row["moments"][0]["query"]
  # Some subtitles carry misheard or filler words.
  clean = sum(all(w not in synthetic._FILLERS and w not in synthetic._MISHEARD.values()
                  for w in r["subtitle"].replace(",", "").split()) for r in rows)
  assert clean < len(rows)


def test_msrvtt_layout(rendered):
  out, _ = rendered
  rows = {r["video_id"]: r for r in _read_jsonl(os.path.join(out, "annotations.jsonl"))}
  msr = os.path.join(out, "msrvtt")
  seen = {}
  for name, sub, allowed in (("train_val_videodatainfo.json", "TrainValVideo",
                              {"train", "validate"}),
                             ("test_videodatainfo.json", "TestVideo", {"test"})):
    with open(os.path.join(msr, name), encoding="utf-8") as f:
      doc = json.load(f)
    assert {"videos", "sentences"} <= set(doc)
    for v in doc["videos"]:
      assert set(v) == {"video_id", "category", "url", "start time", "end time", "split", "id"}
      assert v["split"] in allowed
      assert isinstance(v["category"], int) and isinstance(v["id"], int)
      row = rows[v["video_id"]]
      assert {"train": "train", "validate": "val", "test": "test"}[v["split"]] == row["split"]
      assert synthetic.CLASS_NAMES[v["category"]] == row["label"]
      assert v["start time"] == 0.0 and abs(v["end time"] - row["duration"]) < 1e-6
      link = os.path.join(msr, sub, f"{v['video_id']}.mp4")
      assert os.path.samefile(link, os.path.join(out, row["path"]))
      seen[v["video_id"]] = 0
    for s in doc["sentences"]:
      assert set(s) == {"caption", "video_id", "sen_id"}
      assert s["caption"] in rows[s["video_id"]]["captions"]
      seen[s["video_id"]] += 1
  assert set(seen) == set(rows)
  assert all(seen[v] == len(rows[v]["captions"]) for v in rows)
  # Links, not copies.
  videos_bytes = sum(os.path.getsize(os.path.join(out, r["path"])) for r in rows.values())
  link_bytes = sum(os.lstat(os.path.join(msr, d, f)).st_size
                   for d in ("TrainValVideo", "TestVideo")
                   for f in os.listdir(os.path.join(msr, d)))
  assert link_bytes < videos_bytes / 20 or all(
      os.stat(os.path.join(out, r["path"])).st_nlink > 1 for r in rows.values())


def test_qvhighlights_layout(rendered):
  out, _ = rendered
  rows = {r["video_id"]: r for r in _read_jsonl(os.path.join(out, "annotations.jsonl"))}
  qids = set()
  n_queries = 0
  for split in synthetic.SPLITS:
    for q in _read_jsonl(os.path.join(out, "qvhighlights", f"highlight_{split}_release.jsonl")):
      assert set(q) == _QVH_KEYS
      row = rows[q["vid"]]
      assert row["split"] == split
      assert q["qid"] not in qids
      qids.add(q["qid"])
      assert q["query"] in [m["query"] for m in row["moments"]]
      assert abs(q["duration"] - row["duration"]) < 1e-6
      for s, e in q["relevant_windows"]:
        assert 0 <= s < e <= q["duration"] + 1e-6
        # 2-second clips overlapping the window are exactly the relevant ones.
        want = [c for c in range(math.ceil(q["duration"] / 2)) if 2 * c < e and 2 * c + 2 > s]
        assert q["relevant_clip_ids"] == want
      assert len(q["saliency_scores"]) == len(q["relevant_clip_ids"])
      for scores in q["saliency_scores"]:
        assert len(scores) == 3 and all(isinstance(v, int) and 0 <= v <= 4 for v in scores)
      n_queries += 1
  assert n_queries == sum(len(r["moments"]) for r in rows.values())
  # The reader finds the files and the videos with its defaults alone.
  from t5video.data import layouts
  recs = layouts.read_dataset("qvhighlights", os.path.join(out, "qvhighlights"), "val")
  assert recs and all(os.path.isfile(r.path) for r in recs)


def test_classes_concepts_and_done(rendered):
  out, summary = rendered
  with open(os.path.join(out, "classes.json"), encoding="utf-8") as f:
    doc = json.load(f)
  names = [c["name"] for c in doc["classes"]]
  assert names == list(synthetic.CLASS_NAMES)
  assert sum(c["count"] for c in doc["classes"]) == 36
  assert set(doc["head"]) | set(doc["tail"]) == set(names)
  assert doc["head"] and doc["tail"] and not set(doc["head"]) & set(doc["tail"])
  assert ["moves left", "moves right"] in doc["order_dependent_pairs"]
  for c in doc["classes"]:
    assert sum(c["splits"].values()) == c["count"] == sum(summary["classes"][c["name"]].values())
  with open(os.path.join(out, "concepts.txt"), encoding="utf-8") as f:
    concepts = f.read().splitlines()
  assert len(concepts) == len(set(concepts))
  for word in (*synthetic.SHAPES, *synthetic.COLOURS, *synthetic.SIZES,
               *synthetic.BACKGROUNDS, *synthetic.ACTIONS):
    assert word in concepts
  with open(os.path.join(out, "DONE"), encoding="utf-8") as f:
    done = json.load(f)
  assert done["summary"]["splits"] == summary["splits"]
  assert summary["rendered"]


# ---------------------------------------------------------------------------
# Determinism, resumption, settings, CLI.
# ---------------------------------------------------------------------------

_ANNOTATION_FILES = ("annotations.jsonl", "classes.json", "concepts.txt", "DONE",
                     "msrvtt/train_val_videodatainfo.json", "msrvtt/test_videodatainfo.json",
                     "qvhighlights/highlight_train_release.jsonl", "qvhighlights/highlight_val_release.jsonl",
                     "qvhighlights/highlight_test_release.jsonl")


def test_same_seed_same_bytes_any_workers(tmp_path):
  kw = dict(min_seconds=2.0, max_seconds=2.5, sizes=((64, 48),))
  a, b, c = (str(tmp_path / n) for n in "abc")
  synthetic.render_dataset(a, 8, seed=5, workers=1, **kw)
  synthetic.render_dataset(b, 8, seed=5, workers=2, **kw)
  synthetic.render_dataset(c, 8, seed=6, workers=1, **kw)
  for name in _ANNOTATION_FILES:
    assert _read_bytes(os.path.join(a, name)) == _read_bytes(os.path.join(b, name)), name
  videos = sorted(os.listdir(os.path.join(a, "videos")))
  assert len(videos) == 8
  specs = {os.path.basename(s.path): s for s in synthetic.sample_specs(8, seed=5, **kw)}
  for v in videos:
    pa, pb = os.path.join(a, "videos", v), os.path.join(b, "videos", v)
    if not _same_video(pa, pb):
      # libx264 under load may encode the same frames differently (once, in CI, beyond the
      # tolerance of _same_video): then each file must still hold the seed's rendered frames.
      source = synthetic.render_frames(specs[v]).astype(np.float32)
      for p in (pa, pb):
        frames, _ = _decode_all(p)
        assert len(frames) == len(source), (v, p, len(frames), len(source))
        # x264 at crf 23 with 4:2:0 chroma: 4-7 levels from the source frames (measured)
        assert float(np.abs(np.stack(frames).astype(np.float32) - source).mean()) < 10.0, (v, p)
  fa, _ = _decode_all(os.path.join(a, "videos", videos[0]))
  assert (_read_bytes(os.path.join(a, "annotations.jsonl"))
          != _read_bytes(os.path.join(c, "annotations.jsonl")))
  fc, _ = _decode_all(os.path.join(c, "videos", videos[0]))
  assert len(fa) != len(fc) or not np.array_equal(np.stack(fa), np.stack(fc))


def test_half_rendered_folder_is_rendered_again(tmp_path):
  out = str(tmp_path / "ds")
  kw = dict(min_seconds=2.0, max_seconds=2.5, sizes=((64, 48),))
  first = synthetic.render_dataset(out, 6, seed=2, **kw)
  assert first["rendered"]
  reference = _read_bytes(os.path.join(out, "annotations.jsonl"))
  victim = os.path.join(out, "videos", sorted(os.listdir(os.path.join(out, "videos")))[0])
  video_bytes = _read_bytes(victim)

  # A finished folder is reused as it is.
  again = synthetic.render_dataset(out, 6, seed=2, **kw)
  assert not again["rendered"] and again["splits"] == first["splits"]

  # Simulate a run killed midway: no DONE, a missing video, a truncated file,
  # a half-written temporary.
  os.remove(os.path.join(out, "DONE"))
  os.remove(victim)
  with open(os.path.join(out, "annotations.jsonl"), "wb") as f:
    f.write(reference[:100])
  with open(os.path.join(out, "videos", "vid00009.mp4.part"), "wb") as f:
    f.write(b"\0" * 10)
  redo = synthetic.render_dataset(out, 6, seed=2, **kw)
  assert redo["rendered"]
  assert os.path.exists(os.path.join(out, "DONE"))
  assert _read_bytes(os.path.join(out, "annotations.jsonl")) == reference
  restored = victim + ".restored_check"
  with open(restored, "wb") as f:
    f.write(video_bytes)
  assert _same_video(victim, restored)
  os.remove(restored)
  assert sorted(os.listdir(os.path.join(out, "videos"))) == [
      f"vid{i:05d}.mp4" for i in range(6)]

  # A finished folder that lost a video is rendered again too.
  os.remove(victim)
  assert synthetic.render_dataset(out, 6, seed=2, **kw)["rendered"]
  restored = victim + ".restored_check"
  with open(restored, "wb") as f:
    f.write(video_bytes)
  assert _same_video(victim, restored)
  os.remove(restored)

  # Other settings in a finished folder: a clear error, unless overwrite.
  with pytest.raises(ValueError, match=r"DONE.*num_videos"):
    synthetic.render_dataset(out, 7, seed=2, **kw)
  assert synthetic.render_dataset(out, 7, seed=2, overwrite=True, **kw)["num_videos"] == 7


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="even"):
    synthetic.sample_specs(4, 0, sizes=((65, 48),))
  with pytest.raises(ValueError, match="unknown class 'jumps'"):
    synthetic.sample_specs(4, 0, classes=("moves left", "jumps"))
  with pytest.raises(ValueError, match="min_seconds"):
    synthetic.sample_specs(4, 0, min_seconds=3.0, max_seconds=2.0)


def test_cli_main(tmp_path, capsys):
  out = str(tmp_path / "cli")
  argv = ["--out", out, "--num-videos", "3", "--seed", "1", "--max-seconds", "2.2"]
  assert synthetic.main(argv) == 0
  assert os.path.exists(os.path.join(out, "DONE"))
  assert "rendered, 3 clips" in capsys.readouterr().out
  assert synthetic.main(argv) == 0
  assert "already complete" in capsys.readouterr().out
  assert synthetic.main(["--out", out, "--num-videos", "4", "--seed", "1"]) == 2
  assert "other settings" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Learnability: a temporal model beats a single-frame one on order-dependent
# classes (no deep learning: pixel statistics and a ridge classifier).
# ---------------------------------------------------------------------------

_PAIRS = (("moves left", "moves right"), ("appears", "disappears"), ("grows", "shrinks"))


def _pool(frame: np.ndarray, n: int = 16) -> np.ndarray:
  """Box-downsamples [H, W, C] to [n, n, C]."""
  h, w = frame.shape[:2]
  ys = np.linspace(0, h, n + 1).astype(int)
  xs = np.linspace(0, w, n + 1).astype(int)
  sums = np.add.reduceat(np.add.reduceat(frame.astype(np.float32), ys[:-1], 0), xs[:-1], 1)
  return sums / (np.diff(ys)[:, None, None] * np.diff(xs)[None, :, None])


def _frame_features(small: np.ndarray) -> np.ndarray:
  """Colourfulness moments of 16x16 frames [..., 16, 16, 3] -> [..., 4].

  Objects are saturated and backgrounds muted, so max-min over RGB above a
  threshold is an object map; its mass (linear and log: growth is a ratio)
  and centroid describe where the objects are and how much of them is visible.
  """
  sat = np.clip(small.max(-1) - small.min(-1) - 50.0, 0, None)  # [..., 16, 16]
  n = sat.shape[-1]
  pos = (np.arange(n) + 0.5) / n
  mass = sat.sum((-1, -2))
  safe = np.maximum(mass, 1e-6)
  cx = np.where(mass > 0, (sat.sum(-2) * pos).sum(-1) / safe, 0.5)
  cy = np.where(mass > 0, (sat.sum(-1) * pos).sum(-1) / safe, 0.5)
  mass = mass / n ** 2
  return np.stack([mass, np.log(mass + 1e-2), cx, cy], -1)


def _ridge_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, lam: float = 10.0) -> float:
  """Fits a ridge classifier on standardised features (boolean labels); test accuracy."""
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-3
  a, b = (x_train - mu) / sd, (x_test - mu) / sd
  target = np.where(y_train, 1.0, -1.0)
  w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (target - target.mean()))
  return float(((b @ w + target.mean() > 0) == y_test).mean())


def test_temporal_features_beat_a_single_frame(tmp_path):
  out = str(tmp_path / "learn")
  classes = [c for pair in _PAIRS for c in pair]
  synthetic.render_dataset(out, 200, seed=1, classes=classes, class_prior="uniform",
                           min_seconds=2.0, max_seconds=3.0, sizes=((64, 48), (80, 64)))
  rows = _read_jsonl(os.path.join(out, "annotations.jsonl"))
  uniform, middle = [], []
  for row in rows:
    frames, _ = _decode_all(os.path.join(out, row["path"]))
    idx = np.linspace(0, len(frames) - 1, 8).round().astype(int)
    uniform.append(np.stack([_pool(frames[i]) for i in idx]))  # [8, 16, 16, 3]
    middle.append(_pool(frames[len(frames) // 2]))  # [16, 16, 3]
  temporal = _frame_features(np.stack(uniform)).reshape(len(rows), -1)  # [N, 8 * 4]
  single = _frame_features(np.stack(middle))  # [N, 4]
  labels = np.array([r["label"] for r in rows])
  train = np.array([r["split"] == "train" for r in rows])
  acc_single, acc_temporal = [], []
  for a, b in _PAIRS:
    pair = (labels == a) | (labels == b)
    tr, te = pair & train, pair & ~train
    assert tr.sum() >= 30 and te.sum() >= 12
    y_train, y_test = labels[tr] == a, labels[te] == a
    acc_single.append(_ridge_accuracy(single[tr], y_train, single[te], y_test))
    acc_temporal.append(_ridge_accuracy(temporal[tr], y_train, temporal[te], y_test))
  s, t = float(np.mean(acc_single)), float(np.mean(acc_temporal))
  print(f"order-dependent pairs: single frame {acc_single} (mean {s:.3f}), "
        f"8 frames {acc_temporal} (mean {t:.3f})")
  # Chance is 0.5 for each pair.
  assert t >= 0.85, acc_temporal
  assert min(acc_temporal) >= 0.75, acc_temporal
  assert t - s >= 0.25, (acc_single, acc_temporal)
