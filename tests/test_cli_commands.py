"""The README's ``t5video`` commands, run through ``t5video.cli.main``.

``data synthetic``, ``extract-features``, ``train`` and ``zero-shot`` run end to
end here on tiny settings (``caption``, ``eval``, ``report``, ``convert`` and
``export-hf`` run in test_captiont5_e2e.py and test_convert_cli.py), and
:func:`test_every_readme_command_has_a_cli_test` fails when the README gains a
command that no test runs through ``cli.main``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import sys

import numpy as np
import pytest

from tests import tiny_hf

from t5video import cli

# Independent, heavy tests: xdist may run them on different workers (tests/conftest.py).
XDIST_SPLIT = True

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
VIFI_CONFIG = "configs/vificlip/synthetic.py:mean,tiny"
# Commands whose second word is itself a subcommand (`t5video data synthetic`).
NESTED = ("data",)


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _render(out, num_videos=12, seed=0):
  """`t5video data synthetic` with short clips; returns the exit code."""
  return cli.main(["data", "synthetic", "--out", out, "--num-videos", str(num_videos),
                   "--seed", str(seed), "--min-seconds", "0.5", "--max-seconds", "1.0"])


def _mtimes(directory):
  return {p: os.stat(p).st_mtime_ns for p in sorted(glob.glob(os.path.join(directory, "*", "*")))}


# -----------------------------------------------------------------------------
# t5video data synthetic
# -----------------------------------------------------------------------------

def test_data_synthetic_writes_decodable_videos_and_annotations(tmp_path, capsys):
  from t5video.data import decode
  from t5video.data import layouts
  out = str(tmp_path / "synth")
  assert _render(out) == 0
  printed = capsys.readouterr().out
  m = re.search(r"rendered, 12 clips \(train (\d+), val (\d+), test (\d+)\)", printed)
  assert m, printed
  assert sum(int(x) for x in m.groups()) == 12

  videos = sorted(glob.glob(os.path.join(out, "videos", "*.mp4")))
  assert len(videos) == 12
  rows = _read_jsonl(os.path.join(out, "annotations.jsonl"))
  assert len(rows) == 12 and len({r["video_id"] for r in rows}) == 12
  assert sorted(os.path.join(out, r["path"]) for r in rows) == videos
  assert {r["split"] for r in rows} <= {"train", "val", "test"}
  assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [int(x) for x in m.groups()]
  for r in rows:
    assert r["label"] and r["captions"] and all(isinstance(c, str) and c for c in r["captions"])
    assert 0.5 <= r["duration"] <= 1.0
  for name in ("DONE", "classes.json", "concepts.txt", "msrvtt/train_val_videodatainfo.json",
               "msrvtt/test_videodatainfo.json", "qvhighlights/highlight_train_release.jsonl"):
    assert os.path.isfile(os.path.join(out, name)), name
  # The readers of two layouts see every clip once.
  generic = [r for s in ("train", "val", "test") for r in layouts.read_dataset("generic", out, s)]
  assert sorted(r.video_id for r in generic) == sorted(r["video_id"] for r in rows)
  msrvtt = [r for s in ("train", "val", "test")
            for r in layouts.read_dataset("msrvtt", os.path.join(out, "msrvtt"), s)]
  assert len(msrvtt) == 12

  # A file decodes, and its stream is what the annotation row says.
  row = rows[0]
  clip = decode.decode_video(os.path.join(out, row["path"]), decode.SamplingSpec(num_frames=4, size=32))
  assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
  assert (clip.info.width, clip.info.height) == (row["width"], row["height"])
  assert clip.info.fps == pytest.approx(row["fps"])
  assert clip.info.num_frames == row["num_frames"]
  assert np.all(np.diff(clip.timestamps) > 0)
  assert clip.frames.std() > 1.0  # not a blank picture

  # Again with the same settings: left as it is; other settings: a clear error.
  before = _mtimes(out)
  assert _render(out) == 0
  assert "already complete, 12 clips" in capsys.readouterr().out
  assert _mtimes(out) == before
  assert _render(out, num_videos=13) == 2
  assert "other settings" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# t5video extract-features
# -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny random Hugging Face CLIPModel directory (vision 32 wide, projection 16)."""
  torch = pytest.importorskip("torch")
  import transformers
  torch.manual_seed(0)
  config = tiny_hf.clip_config()
  path = str(tmp_path_factory.mktemp("hf_clip"))
  transformers.CLIPModel(config).eval().save_pretrained(path)
  return path


def test_extract_features_writes_shards_and_resumes(tmp_path, capsys, clip_dir):
  from t5video.data import features
  from t5video.data import layouts
  root = str(tmp_path / "synth")
  assert _render(root) == 0
  # One clip that cannot be decoded: it keeps its row, marked invalid.
  open(os.path.join(root, "videos", "broken.mp4"), "wb").close()
  with open(os.path.join(root, "annotations.jsonl"), "a") as f:
    f.write(json.dumps({"video_id": "broken", "path": "videos/broken.mp4", "label": "grows",
                        "captions": ["nothing"], "split": "train"}) + "\n")
  records = layouts.read_dataset("generic", root, "train")
  n = len(records)
  assert n >= 8 and records[-1].video_id == "broken"
  capsys.readouterr()

  out = str(tmp_path / "features")
  command = ["--layout", "generic", "--root", root, "--split", "train", "--out", out, "--clip", clip_dir,
             "--layers", "pooled,embeds,1", "--num-frames", "3", "--size", "32",
             "--batch-size", "3", "--shard-size", "4"]
  num_shards = -(-n // 4)
  assert cli.main(["extract-features", *command]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["num_records"] == n and summary["num_shards"] == num_shards
  assert (summary["written"], summary["skipped"], summary["complete"], summary["failed"]) == (
      num_shards, 0, True, 1)

  shards = sorted(d for d in os.listdir(out) if d.startswith("shard-"))
  assert shards == [f"shard-{s:05d}" for s in range(num_shards)]
  ids = []
  for s, name in enumerate(shards):
    d = os.path.join(out, name)
    count = min(4, n - 4 * s)
    with open(os.path.join(d, "meta.json")) as f:
      meta = json.load(f)
    assert meta["offset"] == 4 * s and meta["count"] == count
    ids += meta["video_ids"]
    shapes = {k: np.load(os.path.join(d, f"{k}.npy")).shape
              for k in ("pooled", "embeds", "layer_1", "timestamps", "frame_mask", "valid")}
    assert shapes == {"pooled": (count, 3, 32), "embeds": (count, 3, 16), "layer_1": (count, 3, 32),
                      "timestamps": (count, 3), "frame_mask": (count, 3), "valid": (count,)}
    assert np.load(os.path.join(d, "pooled.npy")).dtype == np.float16  # the --dtype default
  assert ids == [r.video_id for r in records]  # one row per video, in the split's order

  src = features.FeatureSource(out, records=records)
  assert len(src) == n and src.layers == ["pooled", "embeds", "layer_1"]
  items = [src[i] for i in range(n)]
  assert [bool(it["valid"]) for it in items] == [True] * (n - 1) + [False]
  assert not items[-1]["pooled"].any() and items[-1]["failure"] == "empty"
  pooled = np.stack([it["pooled"] for it in items[:-1]]).astype(np.float32)
  assert np.isfinite(pooled).all()
  assert np.abs(pooled[0] - pooled[1]).max() > 1e-3  # different clips, different features
  with open(os.path.join(out, "failures.json")) as f:
    assert json.load(f) == [{"path": os.path.join(root, "videos", "broken.mp4"), "kind": "empty"}]

  # Run again: every shard exists, nothing is recomputed or rewritten.
  before = _mtimes(out)
  assert cli.main(["extract-features", *command]) == 0
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (again["written"], again["skipped"], again["complete"]) == (0, num_shards, True)
  assert _mtimes(out) == before

  # A lost shard (a run stopped before it) is the only one extracted again, identically.
  last = os.path.join(out, shards[-1])
  saved = {k: np.load(os.path.join(last, f"{k}.npy")) for k in ("pooled", "embeds", "layer_1", "valid")}
  shutil.rmtree(last)
  assert cli.main(["extract-features", *command]) == 0
  resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (resumed["written"], resumed["skipped"], resumed["complete"]) == (1, num_shards - 1, True)
  for k, v in saved.items():
    np.testing.assert_array_equal(np.load(os.path.join(last, f"{k}.npy")), v)
  after = _mtimes(out)
  assert {p: t for p, t in after.items() if not p.startswith(last)} == {
      p: t for p, t in before.items() if not p.startswith(last)}

  # Other settings into the same folder, or a dataset that is not there: one-line errors.
  with pytest.raises(SystemExit, match=r"t5video extract-features: .*different extraction.*layers"):
    cli.main(["extract-features", *["pooled" if a == "pooled,embeds,1" else a for a in command]])
  with pytest.raises(SystemExit, match=r"t5video extract-features: no generic annotation file"):
    cli.main(["extract-features", "--layout", "generic", "--root", str(tmp_path / "nowhere"),
              "--out", str(tmp_path / "f2"), "--clip", clip_dir])


# -----------------------------------------------------------------------------
# t5video train (ViFi-CLIP) + t5video zero-shot
# -----------------------------------------------------------------------------

def test_config_overrides_come_from_main_argv(tmp_path):
  config, _ = cli._parse_config_flags(  # pylint: disable=protected-access
      ["--config", VIFI_CONFIG, "--config.train.num_steps=3", "--workdir", str(tmp_path)], "train",
      config_required=True)
  assert config.train.num_steps == 3


def test_eval_overrides_apply_to_the_runs_own_config(tmp_path):
  """``t5video eval --workdir W --config.KEY=V`` (no --config): W's config.json with the override,
  list-valued keys included (config.json stores tuples as lists)."""
  from t5video import config as config_lib
  workdir = str(tmp_path / "run")
  config = cli.load_config_file("configs/captiont5/synthetic.py")
  config.train.num_steps = 7  # differs from the file: the run's config is what is read
  config_lib.save_run_config(config, workdir)
  argv = ["--workdir", workdir, "--config.data.root=elsewhere", "--config.data.synthetic_backgrounds=()",
          "--config.data.synthetic_sizes=((160,120),(80,80))"]
  got, _ = cli._parse_config_flags(argv, "eval", config_required=False)  # pylint: disable=protected-access
  assert (got.train.num_steps, got.data.root) == (7, "elsewhere")
  assert got.data.synthetic_backgrounds == () and got.data.synthetic_sizes == ((160, 120), (80, 80))
  with pytest.raises(SystemExit, match="data.rooot"):
    cli._parse_config_flags(["--workdir", workdir, "--config.data.rooot=x"], "eval",  # pylint: disable=protected-access
                            config_required=False)
  plain, _ = cli._parse_config_flags(["--workdir", workdir], "eval", config_required=False)  # pylint: disable=protected-access
  assert plain.data.root == config.data.root


def test_held_out_geometry_renders_with_the_sizes_and_rates_the_config_names(tmp_path):
  from t5video.recipes.captiont5 import data as captiont5_data
  config = cli.load_config_file("configs/captiont5/synthetic.py")
  config.data.root = str(tmp_path / "geometry")
  config.data.num_videos = 12
  config.data.synthetic_seed = 3
  config.data.synthetic_sizes = ((160, 120),)
  config.data.synthetic_fps = (6,)
  config.data.synthetic_seconds = (3.0, 3.5)
  root = captiont5_data.prepare_data(config.data)
  done = json.load(open(os.path.join(root, "DONE")))["config"]
  assert done["sizes"] == [[160, 120]] and done["fps_choices"] == [6]
  assert (done["min_seconds"], done["max_seconds"]) == (3.0, 3.5)
  import av  # pylint: disable=g-import-not-at-top
  video = sorted(glob.glob(os.path.join(root, "**", "*.mp4"), recursive=True))[0]
  with av.open(video) as container:
    stream = container.streams.video[0]
    assert (stream.width, stream.height, int(stream.average_rate)) == (160, 120, 6)
  mtime = os.path.getmtime(os.path.join(root, "DONE"))
  captiont5_data.prepare_data(config.data)  # the same settings: left as it is
  assert os.path.getmtime(os.path.join(root, "DONE")) == mtime
  # an evaluation asking for other settings there refuses instead of replacing the folder
  config.data.synthetic_fps = (15,)
  config.data.synthetic_seed = 4
  with pytest.raises(ValueError, match=r"differing: fps_choices, seed"):
    captiont5_data.prepare_data(config.data, rerender=False)
  assert os.path.getmtime(os.path.join(root, "DONE")) == mtime
  # a config that leaves the geometry to the renderer uses the folder as it is (as it would one
  # that `t5video data synthetic` rendered with other frame sizes)
  config.data.synthetic_sizes, config.data.synthetic_fps, config.data.synthetic_seconds = (), (), ()
  config.data.synthetic_seed = 3
  captiont5_data.prepare_data(config.data, rerender=False)
  captiont5_data.prepare_data(config.data)
  assert os.path.getmtime(os.path.join(root, "DONE")) == mtime


@pytest.mark.slow
def test_train_vificlip_then_zero_shot_prints_probabilities(tmp_path, capsys, monkeypatch):
  from t5video.recipes import vificlip as recipe
  data, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  flags = ["--config", VIFI_CONFIG, "--workdir", workdir, "--config.train.num_steps=3",
           "--config.train.batch_size=8", f"--config.data.root={data}",
           f"--config.model.tokenizer={data}/spiece.model", "--config.data.synthetic.num_videos=40",
           "--config.data.synthetic.max_seconds=2.0", "--config.eval.max_videos=4"]
  assert cli.main(["train", *flags]) == 0
  capsys.readouterr()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f)["step"] == 3
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["data"]["synthetic"]["num_videos"] == 40
  assert os.path.isfile(os.path.join(workdir, "vificlip", "config.json"))

  rows = [r for r in _read_jsonl(os.path.join(data, "annotations.jsonl")) if r["split"] == "test"][:2]
  videos = [os.path.join(data, r["path"]) for r in rows]
  classes = ["moves left", "moves right", "grows"]
  assert cli.main(["zero-shot", "--workdir", workdir, "--classes", " moves left,moves right , grows",
                   *videos]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(videos) * (1 + len(classes)), lines
  expected = recipe.zero_shot(workdir, classes, videos)
  for v, video in enumerate(videos):
    block = lines[v * 4: (v + 1) * 4]
    assert block[0] == video
    parsed = [re.fullmatch(r"\s+(\d\.\d{3})\s\s(.+)", line) for line in block[1:]]
    assert all(parsed), block
    probs = {m.group(2): float(m.group(1)) for m in parsed}
    assert sorted(probs) == sorted(classes)
    assert sum(probs.values()) == pytest.approx(1.0, abs=2e-3)
    assert list(probs.values()) == sorted(probs.values(), reverse=True)  # most likely first
    for c in classes:
      assert probs[c] == pytest.approx(expected[v][c], abs=6e-4)

  # User errors are one line, before any model is restored where possible.
  with pytest.raises(SystemExit, match="at least two"):
    cli.main(["zero-shot", "--workdir", workdir, "--classes", "grows", *videos])
  with pytest.raises(SystemExit, match="twice"):
    cli.main(["zero-shot", "--workdir", workdir, "--classes", "grows,grows", *videos])
  with pytest.raises(SystemExit, match="no such video file"):
    cli.main(["zero-shot", "--workdir", workdir, "--classes", "a,b", str(tmp_path / "missing.mp4")])
  with pytest.raises(SystemExit, match="vificlip/config.json: missing"):
    cli.main(["zero-shot", "--workdir", str(tmp_path), "--classes", "a,b", videos[0]])


# -----------------------------------------------------------------------------
# The README's commands
# -----------------------------------------------------------------------------

def _readme_commands():
  """Every ``t5video ...`` command line of the README's bash blocks (continuations joined)."""
  with open(README) as f:
    text = f.read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    block = re.sub(r"\\\n\s*", " ", block)
    for line in block.splitlines():
      line = line.split("#", 1)[0].strip()
      if line.startswith("t5video "):
        commands.append(line)
  return commands


def test_every_readme_command_has_a_cli_test():
  commands = _readme_commands()
  assert len(commands) >= 10, commands
  sources = {}
  for path in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True):
    with open(path) as f:
      sources[os.path.relpath(path, ROOT)] = f.read()
  untested = []
  for command in commands:
    words = command.split()
    assert words[1] in cli.COMMANDS and words[1] in cli.HANDLERS, command
    key = words[1:3] if words[1] in NESTED else words[1:2]
    call = r"cli\.main\(\s*\[\s*" + r"\s*,\s*".join(r"['\"]" + re.escape(w) + r"['\"]" for w in key)
    if not any(re.search(call, text) for text in sources.values()):
      untested.append(command)
  assert not untested, f"README commands that no test runs through cli.main([...]): {untested}"


def test_readme_config_commands_parse(tmp_path, monkeypatch):
  """The README's train / eval lines: flags, config files and overrides are all valid."""
  from t5video.train import trainer
  checked = 0
  for command in _readme_commands():
    words = shlex.split(command.replace("[", "").replace("]", ""))
    if words[1] not in ("train", "eval"):
      continue
    argv = words[2:]
    if words[1] == "eval":  # a finished run's workdir holds its config.json
      workdir = str(tmp_path / f"eval{checked}")
      os.makedirs(workdir)
      config = cli.load_config_file("configs/captiont5/synthetic.py")
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
      argv[argv.index("--workdir") + 1] = workdir
    config, fv = cli._parse_config_flags(  # pylint: disable=protected-access
        argv, words[1], config_required=words[1] == "train")
    trainer.validate_config(config)
    for arg in argv:
      m = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg)
      if m:
        node = config
        for part in m.group(1).split("."):
          node = node[part]
        assert str(node) == m.group(2), (command, arg)
    if words[1] == "eval":
      assert fv.split == "val" and fv.robustness
    checked += 1
  assert checked >= 6
