"""Tests for the TFDS builders (t5video/data/tfds_builders.py), without TF."""

from __future__ import annotations

import gc
import json
import os

import numpy as np
import pytest

from t5video.data import decode
from t5video.data import layouts
from t5video.data import pipeline
from t5video.data import synthetic
from t5video.data import tfds_builders
from tests import videos


def test_tensorflow_is_not_installed():
  """The builders below must work in the default install, which has no TF."""
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.render_dataset(out, 10, seed=3)
  return out


@pytest.fixture(scope="module")
def synthetic_builder(rendered, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return tfds_builders.build(tfds_builders.SyntheticVideos, rendered, data_dir)


def test_synthetic_round_trip(rendered, synthetic_builder):
  import tensorflow_datasets as tfds

  records = layouts.read_generic(os.path.join(rendered, "annotations.jsonl"))
  by_id = {r.video_id: r for r in records}
  sources = synthetic_builder.as_data_source()
  counts = {s: sum(r.split == s for r in records) for s in ("train", "val",
                                                            "test")}
  assert {s: len(src) for s, src in sources.items()} == {
      s: n for s, n in counts.items() if n}
  seen = set()
  for split, src in sources.items():
    for i in range(len(src)):
      item = src[i]
      vid = item["video_id"].decode()
      r = by_id[vid]
      seen.add(vid)
      assert item["split"].decode() == split == r.split
      with open(r.path, "rb") as f:
        assert item["video"] == f.read()
      assert [c.decode() for c in item["captions"]] == r.captions
      assert json.loads(item["record"])["moments"] == [
          {"start": m.start, "end": m.end, "query": m.query}
          for m in r.moments]
      assert item["video_error"] == b""
  assert seen == set(by_id)
  # Also through tfds.data_source by name, as a recipe would.
  # data_dir/synthetic_videos/default/1.0.0 -> data_dir
  data_dir = os.fspath(synthetic_builder.data_path.parent.parent.parent)
  again = tfds.data_source("synthetic_videos", data_dir=data_dir)
  assert len(again["train"]) == counts["train"]


def test_tfds_source_feeds_grain_workers(synthetic_builder):
  """Bytes from ArrayRecord decode (in 2 worker processes) like the file."""
  src = synthetic_builder.as_data_source()["train"]
  spec = decode.SamplingSpec(num_frames=3, size=32)
  it = pipeline.make_loader(
      src, transform=pipeline.VideoDecodeTransform(spec, train=False),
      batch_size=2, seed=0, shuffle=False, num_epochs=1, shard_index=0,
      shard_count=1, worker_count=2, balance="oversample",
      oversample_floor=2)
  batches = list(it)
  assert batches and all(b["valid"].all() for b in batches)
  b = batches[0]
  for j in range(2):
    rec = pipeline._item_to_record(src[int(b["index"][j])])[0]  # pylint: disable=protected-access
    frames, ts = decode.decode_clip(rec.path, spec)
    np.testing.assert_array_equal(b["frames"][j], frames)
    np.testing.assert_allclose(b["timestamps"][j], ts)
    assert b["path"][j] == rec.path
  it.close()
  gc.collect()


def test_local_layout_msrvtt(rendered, tmp_path):
  builder = tfds_builders.build(
      tfds_builders.LocalLayoutVideos, os.path.join(rendered, "msrvtt"),
      str(tmp_path), config="msrvtt")
  sources = builder.as_data_source()
  for split, src in sources.items():
    want = layouts.read_msrvtt(os.path.join(rendered, "msrvtt"), split)
    assert len(src) == len(want)
    ids = sorted(src[i]["video_id"].decode() for i in range(len(src)))
    assert ids == sorted(r.video_id for r in want)
    assert all(src[i]["video"] for i in range(len(src)))


def test_local_layout_generic_keeps_missing_videos_as_failures(tmp_path):
  root = tmp_path / "mine"
  videos.write_test_video(str(root / "a.mp4"), videos.palette_frames(6),
                          fps=6)
  (root / "empty.mp4").write_bytes(b"")
  rows = [{"path": "a.mp4", "caption": "first", "label": "x"},
          {"path": "gone.mp4", "caption": "second", "label": "y"},
          {"path": "empty.mp4", "caption": "third", "label": "y"}]
  with open(root / "annotations.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  builder = tfds_builders.build(tfds_builders.LocalLayoutVideos, str(root),
                                str(tmp_path / "data"), config="generic")
  src = builder.as_data_source()["train"]
  errors = sorted(src[i]["video_error"].decode() for i in range(len(src)))
  assert errors == ["", "empty", "missing"]
  it = pipeline.make_loader(
      src, transform=pipeline.VideoDecodeTransform(
          decode.SamplingSpec(num_frames=2, size=32), train=False),
      batch_size=3, seed=0, num_epochs=1, shard_index=0, shard_count=1)
  (batch,) = list(it)
  assert sorted(it.failures.paths) == [(str(root / "empty.mp4"), "empty"),
                                       (str(root / "gone.mp4"), "missing")]
  assert batch["valid"].sum() == 1


def test_half_rendered_folder_is_refused(tmp_path, rendered):
  import shutil
  half = tmp_path / "half"
  shutil.copytree(rendered, half, symlinks=True)
  os.remove(half / "DONE")
  with pytest.raises(ValueError, match="no DONE file"):
    tfds_builders.build(tfds_builders.SyntheticVideos, str(half),
                        str(tmp_path / "data"))
