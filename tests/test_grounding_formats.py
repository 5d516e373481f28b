"""Charades-STA and TACoS annotations into the QVHighlights layout (`t5video data charades-sta`,
`t5video data tacos`): windows and durations as the benchmarks define them, lengths probed from
the videos when Charades' CSV is absent, malformed lines named, and the output read by the
R2-Tuning recipe's reader."""

import json
import os
import shutil

import pytest

from t5video import cli
from t5video import config as config_lib
from t5video.data import layouts


def _lines(path):
  return [json.loads(line) for line in open(path)]


def test_charades_sta_lengths_from_csv_or_video_and_errors(tmp_path, capsys):
  root = tmp_path / "charades"
  (root / "videos").mkdir(parents=True)
  assert cli.main(["data", "synthetic", "--out", str(tmp_path / "synth"), "--num-videos", "2",
                   "--seed", "0", "--min-seconds", "2.0", "--max-seconds", "3.0"]) == 0
  mp4 = sorted((tmp_path / "synth" / "videos").iterdir())[0]
  shutil.copy(mp4, root / "videos" / "ABC12.mp4")
  (root / "Charades_v1_train.csv").write_text("id,subject,length\nXYZ99,s,30.5\n")
  (root / "charades_sta_train.txt").write_text(
      "XYZ99 1.2 7.9##a person opens a door.\nXYZ99 20 40##person sits down\n"
      "ABC12 0.5 1.0##someone waves\n")
  (root / "charades_sta_test.txt").write_text("XYZ99 3 5##a person laughs\n")
  capsys.readouterr()
  assert cli.main(["data", "charades-sta", "--root", str(root)]) == 0
  assert "3 queries, 2 videos" in capsys.readouterr().out
  train = _lines(root / "highlight_train_release.jsonl")
  assert [r["qid"] for r in train] == [0, 1, 2]
  assert train[0] == {"qid": 0, "query": "a person opens a door.", "vid": "XYZ99", "duration": 30.5,
                      "relevant_windows": [[1.2, 7.9]]}
  assert train[1]["relevant_windows"] == [[20.0, 30.5]]            # clamped to the video
  from t5video.data import decode
  assert train[2]["duration"] == pytest.approx(decode.probe(str(root / "videos" / "ABC12.mp4")).duration)
  # a test split video with no CSV row and no file: one line naming file, line and video
  (root / "charades_sta_test.txt").write_text("XYZ99 3 5##fine\nNOPE1 3 5##missing\n")
  with pytest.raises(SystemExit, match=r"charades_sta_test.txt:2: no length for video 'NOPE1'"):
    cli.main(["data", "charades-sta", "--root", str(root)])
  (root / "charades_sta_test.txt").write_text("XYZ99 3##no end\n")
  with pytest.raises(SystemExit, match=r"charades_sta_test.txt:1: expected '<vid> <start> <end>##"):
    cli.main(["data", "charades-sta", "--root", str(root)])
  (root / "charades_sta_test.txt").write_text("XYZ99 6 5##backwards\n")
  with pytest.raises(SystemExit, match=r"charades_sta_test.txt:1: window \[6.0, 5.0\] is empty"):
    cli.main(["data", "charades-sta", "--root", str(root)])
  with pytest.raises(SystemExit, match="none of"):
    cli.main(["data", "charades-sta", "--root", str(tmp_path / "empty")])


def test_tacos_frames_to_seconds_and_the_recipe_reads_it(tmp_path):
  root = tmp_path / "tacos"
  (root / "videos").mkdir(parents=True)
  assert cli.main(["data", "synthetic", "--out", str(tmp_path / "synth"), "--num-videos", "2",
                   "--seed", "0", "--min-seconds", "2.0", "--max-seconds", "3.0"]) == 0
  mp4 = sorted((tmp_path / "synth" / "videos").iterdir())[0]
  shutil.copy(mp4, root / "videos" / "s13-d21.mp4")
  video = {"num_frames": 9000, "fps": 30.0, "timestamps": [[300, 900], [600, 150]],
           "sentences": ["The person takes out a knife.", "He washes the carrot."]}
  (root / "train.json").write_text(json.dumps({"s13-d21.avi": video}))
  assert cli.main(["data", "tacos", "--root", str(root)]) == 0
  rows = _lines(root / "highlight_train_release.jsonl")
  assert rows == [
      {"qid": 0, "query": "The person takes out a knife.", "vid": "s13-d21", "duration": 300.0,
       "relevant_windows": [[10.0, 30.0]]},
      {"qid": 1, "query": "He washes the carrot.", "vid": "s13-d21", "duration": 300.0,
       "relevant_windows": [[5.0, 20.0]]}]                             # frames in either order
  config = config_lib.load_config_file("configs/r2tuning/tacos.py")
  with config.unlocked():
    config.data.root = str(root)
  from t5video.recipes.r2tuning import data as data_lib
  queries = data_lib.read_queries(config.data, "train")
  assert len(queries) == 2 and len(queries.videos) == 1
  assert queries.videos[0].path.endswith("s13-d21.mp4")
  (root / "train.json").write_text(json.dumps({"s13-d21.avi": dict(video, fps=0)}))
  with pytest.raises(layouts.AnnotationError, match="train.json: video 's13-d21.avi': fps 0.0 must be > 0"):
    from t5video.data import grounding_formats
    grounding_formats.convert("tacos", str(root))


@pytest.mark.parametrize("spec", ["configs/r2tuning/charades_sta.py", "configs/r2tuning/charades_sta.py:meanpool",
                                  "configs/r2tuning/tacos.py", "configs/r2tuning/tacos.py:meanpool"])
def test_benchmark_configs_load(spec):
  config = config_lib.load_config_file(spec)
  config_lib.validate(config)
  assert config.task == "r2tuning" and config.eval.protocol == "r2tuning" and config.eval.nms
  assert os.path.basename(config.model.clip_init) == "clip-vit-base-patch32"
