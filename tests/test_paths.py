"""Workdir paths: local normalisation, and remote (bucket) appends through a local copy."""

import os

from t5video.train import paths


def test_local_paths(tmp_path):
  assert not paths.is_remote(str(tmp_path)) and paths.is_remote("gs://b/run")
  assert paths.normalize("gs://b/run") == "gs://b/run"
  assert paths.normalize("~/x") == os.path.join(os.path.expanduser("~"), "x")
  assert paths.join("gs://b/run/", "/checkpoints") == "gs://b/run/checkpoints"
  d = str(tmp_path / "w")
  paths.makedirs(d)
  paths.write_text(os.path.join(d, "a.json"), "{}")
  assert paths.read_text(os.path.join(d, "a.json")) == "{}"
  f = paths.AppendFile(os.path.join(d, "m.jsonl"))
  f.write("1\n")
  f.write("2\n")
  f.close()
  assert open(os.path.join(d, "m.jsonl")).read() == "1\n2\n"


def test_remote_append_uploads_whole_file(tmp_path, monkeypatch):
  """A bucket object cannot be appended to: each line re-uploads the local copy."""
  store = {"gs://b/run/metrics.jsonl": "0\n"}  # a resumed run's earlier lines
  monkeypatch.setattr(paths, "exists", lambda p: p in store)
  monkeypatch.setattr(paths, "read_text", lambda p: store[p] if p in store else open(p).read())
  monkeypatch.setattr(paths, "write_text", lambda p, t: store.__setitem__(p, t))
  monkeypatch.setenv("HOME", str(tmp_path))
  f = paths.AppendFile("gs://b/run/metrics.jsonl")
  f.write("1\n")
  assert store["gs://b/run/metrics.jsonl"] == "0\n1\n"
  f.write("2\n")
  f.close()
  assert store["gs://b/run/metrics.jsonl"] == "0\n1\n2\n"
  mirror = paths.local_mirror("gs://b/run")
  assert mirror.startswith(str(tmp_path)) and os.path.isdir(mirror)


def test_local_file_functions(tmp_path, monkeypatch):
  """The same functions on local disk (tests/test_gcs.py runs them against a bucket)."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  d = str(tmp_path / "w")
  paths.makedirs(os.path.join(d, "eval"))
  assert paths.isdir(os.path.join(d, "eval")) and paths.listdir(d) == ["eval"]
  with paths.open(os.path.join(d, "eval", "a.bin"), "wb") as f:
    f.write(b"\x01\x02")
  assert paths.read_bytes(os.path.join(d, "eval", "a.bin")) == b"\x01\x02"
  paths.write_bytes(os.path.join(d, "b.bin"), b"\x03")
  with paths.open(os.path.join(d, "b.bin"), "rb") as f:
    assert f.read() == b"\x03"
  paths.write_text(os.path.join(d, "eval", "t.txt"), "x")
  assert not [n for n in os.listdir(os.path.join(d, "eval")) if ".tmp" in n]  # temp renamed away
  assert paths.glob(os.path.join(d, "**", "*.txt")) == [os.path.join(d, "eval", "t.txt")]
  assert paths.glob(os.path.join(d, "*.bin")) == [os.path.join(d, "b.bin")]
  paths.copy(os.path.join(d, "b.bin"), os.path.join(d, "new", "c.bin"))
  assert open(os.path.join(d, "new", "c.bin"), "rb").read() == b"\x03"
  paths.copytree(os.path.join(d, "eval"), os.path.join(d, "eval2"))
  assert paths.listdir(os.path.join(d, "eval2")) == ["a.bin", "t.txt"]
  assert paths.local_copy(d) == d
  paths.remove(os.path.join(d, "b.bin"))
  paths.rmtree(os.path.join(d, "eval2"))
  assert paths.listdir(d) == ["eval", "new"]
  assert paths.basename("gs://b/run/x.json") == "x.json" and paths.dirname("gs://b/run/x.json") == "gs://b/run"
  assert paths.dirname("gs://b") == "gs://b"
