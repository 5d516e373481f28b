"""Bad input ends in one clear line on stderr and a non-zero exit; --verbose shows the traceback."""

from __future__ import annotations

import json
import os

import pytest

from t5video import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNLOCAL = os.path.join(REPO, "configs", "captiont5", "synthetic.py") + ":runlocal"


def _run(capsys, *argv):
  rc = cli.main(list(argv))
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  return rc, lines, err


def _msrvtt_without_caption(root):
  root.mkdir()
  (root / "train_val_videodatainfo.json").write_text(json.dumps({
      "videos": [{"video_id": "video0", "split": "train"}],
      "sentences": [{"video_id": "video0", "sen_id": 0}]}))
  return str(root)


def test_annotation_without_its_caption_names_the_file_and_the_record(tmp_path, capsys):
  root = _msrvtt_without_caption(tmp_path / "msrvtt")
  rc, lines, err = _run(capsys, "train", "--config", RUNLOCAL, "--config.data.layout=msrvtt",
                        f"--config.data.root={root}", "--workdir", str(tmp_path / "run"))
  assert rc == 1
  assert len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith("t5video train: AnnotationError:")
  assert "train_val_videodatainfo.json" in lines[0] and "sentences[0]" in lines[0]
  assert "'caption'" in lines[0]


def test_missing_data_root_names_the_path(tmp_path, capsys):
  missing = str(tmp_path / "no_such_dataset")
  rc, lines, err = _run(capsys, "train", "--config", RUNLOCAL, "--config.data.layout=msrvtt",
                        f"--config.data.root={missing}", "--workdir", str(tmp_path / "run"))
  assert rc == 1
  assert len(lines) == 1 and "Traceback" not in err, err
  assert missing in lines[0]


def test_misspelt_flag_names_the_key_and_the_nearest(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["train", "--config", RUNLOCAL, "--config.train.num_stepz=3",
              "--workdir", str(tmp_path / "run")])
  message = str(e.value)
  assert "train.num_stepz" in message and "train.num_steps" in message
  assert "\n" not in message.strip()


def test_verbose_shows_the_traceback(tmp_path):
  root = _msrvtt_without_caption(tmp_path / "msrvtt")
  from t5video.data import layouts
  with pytest.raises(layouts.AnnotationError):
    cli.main(["train", "--verbose", "--config", RUNLOCAL, "--config.data.layout=msrvtt",
              f"--config.data.root={root}", "--workdir", str(tmp_path / "run")])


def test_class_balanced_sampling_on_clips_without_labels_says_so_before_any_stage(tmp_path, capsys):
  root = tmp_path / "mine"
  root.mkdir()
  (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [  # captions, no labels
      {"path": "a.mp4", "caption": "a red ball rolls", "split": "train"},
      {"path": "b.mp4", "caption": "a blue cube spins", "split": "test"}]))
  rc, lines, err = _run(capsys, "train", "--config", RUNLOCAL, "--config.data.layout=generic",
                        f"--config.data.root={root}", "--config.data.balance=class_balanced",
                        "--workdir", str(tmp_path / "run"))
  assert rc == 1
  assert len(lines) == 1 and "Traceback" not in err, err
  assert "config.data.balance='class_balanced'" in lines[0] and "--config.data.balance=" in lines[0]
  assert not os.path.exists(tmp_path / "run" / "vificlip")  # no stage ran
