"""The R2-Tuning recipe end to end on a tiny rendered grounding set: configs load, a run
prepares (renders, writes a random CLIP, caches features), trains through the engine and
evaluates with the reference's metric names, its controls and a baseline; ``t5video ground``
grounds a query in one rendered video; malformed QVHighlights lines are named."""

import contextlib
import json
import os

import jax
import pytest

from t5video import cli
from t5video import config as config_lib
from t5video.data import layouts
from t5video.recipes.r2tuning import data as data_lib

SYNTHETIC = "configs/r2tuning/synthetic.py"
METRICS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-short-mAP", "MR-middle-mAP",
           "MR-long-mAP", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1")


@pytest.mark.parametrize("spec", [SYNTHETIC, f"{SYNTHETIC}:meanpool", f"{SYNTHETIC}:r2,textonly",
                                  f"{SYNTHETIC}:r2,tiny", "configs/r2tuning/qvhighlights.py",
                                  "configs/r2tuning/qvhighlights.py:meanpool"])
def test_configs_load_and_validate(spec):
  config = config_lib.load_config_file(spec)
  config_lib.validate(config)
  assert config.task == "r2tuning"
  assert config.model.head == ("meanpool" if "meanpool" in spec else "r2")


def test_unknown_key_names_the_nearest():
  config = config_lib.load_config_file(SYNTHETIC)
  with config.unlocked():
    config.data.max_clip = 3
  with pytest.raises(ValueError, match="data.max_clip.*did you mean data.max_clips"):
    config_lib.validate(config)


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_malformed_qvhighlights_record_names_file_and_line(tmp_path):
  config = config_lib.load_config_file(f"{SYNTHETIC}:r2,tiny")
  good = {"qid": 1, "query": "a red square", "vid": "v1", "duration": 10.0,
          "relevant_windows": [[2.0, 6.0]], "relevant_clip_ids": [1, 2],
          "saliency_scores": [[2, 3, 4], [1, 1, 1]]}
  path = str(tmp_path / "highlight_val_release.jsonl")
  with config.unlocked():
    config.data.root = str(tmp_path)
  _write_jsonl(path, [good, dict(good, qid=2, relevant_windows=[[5.0]])])
  with pytest.raises(layouts.AnnotationError, match=f"{path}:2: relevant_windows"):
    data_lib.read_queries(config.data, "val")
  _write_jsonl(path, [good, "", dict(good, qid=3, relevant_clip_ids=[1, 7])])
  with pytest.raises(layouts.AnnotationError, match=f"{path}:3: relevant_clip_ids\\[1\\]=7"):
    data_lib.read_queries(config.data, "val")
  # the last half clip of an odd duration: the metrics count int(9 / 2) = 4 clips
  _write_jsonl(path, [good, dict(good, qid=4, duration=9.0, relevant_clip_ids=[3, 4])])
  with pytest.raises(layouts.AnnotationError, match=f"{path}:2 \\(qid 4\\): relevant_clip_ids"):
    data_lib.read_queries(config.data, "val")
  _write_jsonl(path, [good, "{not json"])
  with pytest.raises(layouts.AnnotationError, match=f"{path}:2: invalid JSON"):
    data_lib.read_queries(config.data, "val")


@contextlib.contextmanager
def cheap_compiles():
  """XLA's cheap settings: compiling, not running, is what costs in these tests (about 3x)."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny run: 12 rendered videos, a random 2-layer CLIP, 12 steps."""
  from t5video.train import stages  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("r2")
  config = config_lib.load_config_file(f"{SYNTHETIC}:r2,tiny")
  with config.unlocked():
    config.data.root = str(root / "data")
    config.data.feature_dir = str(root / "features")
  workdir = str(root / "run")
  with cheap_compiles():
    result = stages.train(config, workdir)
  return workdir, result


def test_train_evaluates_with_reference_names_controls_and_baseline(tiny_run):
  workdir, result = tiny_run
  assert result["step"] == 12 and not result["preempted"]
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))["eval"]
  for key in METRICS:
    assert key in final
    for prefix in ("control_text_only_", "control_other_frames_", "baseline_centre_"):
      assert prefix + key in final
  assert 0 <= final["MR-full-R1@0.5"] <= 100 and final["num_queries"] > 0
  lines = [json.loads(line) for line in open(os.path.join(workdir, "predictions_val.jsonl"))]
  assert len(lines) == final["num_queries"]
  assert all(len(line["pred_relevant_windows"]) > 0 and line["pred_saliency_scores"] for line in lines)
  # the resolved config names what the run needs: its CLIP, tokenizer and features
  config = config_lib.load_run_config(workdir)
  assert os.path.isfile(os.path.join(config.model.clip_init, "config.json"))
  assert os.path.isfile(config.model.tokenizer)
  assert any(n.startswith("video-") for n in os.listdir(config.data.feature_dir))


def test_ground_prints_moments_and_writes_the_png(tiny_run, capsys, tmp_path):
  workdir, _ = tiny_run
  config = config_lib.load_run_config(workdir)
  row = json.loads(open(data_lib.jsonl_path(config.data, "val")).readline())
  video = os.path.join(config.data.root, "videos", f"{row['vid']}.mp4")
  with cheap_compiles():
    rc = cli.main(["ground", "--workdir", workdir, "--query", row["query"], "--top", "3",
                   "--out", str(tmp_path), video])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert row["query"] in out and "  1. " in out and "score" in out
  png = tmp_path / f"{row['vid']}_saliency.png"
  assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
  with pytest.raises(SystemExit, match="no such video file"):
    cli.main(["ground", "--workdir", workdir, "--query", "x", str(tmp_path / "none.mp4")])
