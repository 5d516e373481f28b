"""Self-refinement drafts (t5video.recipes.captiont5.drafts): where they come from, how the
stages are derived, and what a bad drafts file or setting says. The end-to-end run (a draft
model trained, the training clips captioned, the run trained on them) is in
tests/test_captiont5_e2e.py."""

from __future__ import annotations

import numpy as np
import pytest

from t5video import config as config_lib
from t5video.data import thoughts as thoughts_lib
from t5video.data import tokenizer as tokenizer_lib
from t5video.recipes.captiont5 import config as captiont5_config
from t5video.recipes.captiont5 import data as captiont5_data
from t5video.recipes.captiont5 import drafts as drafts_lib


def test_demo_variant_refine_adds_model_drafts():
  base = config_lib.load_config_file("configs/captiont5/synthetic.py")
  assert "draft" not in base.thoughts.sources and not base.eval.refine
  refine = config_lib.load_config_file("configs/captiont5/synthetic.py:refine")
  assert "draft" in refine.thoughts.sources and refine.eval.refine
  assert refine.thoughts.drafts.source == "model" and drafts_lib.uses_model_drafts(refine)


def test_stages_train_a_draft_model_without_drafts_then_caption_the_training_clips():
  config = config_lib.load_config_file("configs/captiont5/synthetic.py:refine,textonly")
  model, captions = drafts_lib.stages(config, {"thoughts": {"clip_workdir": "/w/vificlip"}})
  assert model["name"] == drafts_lib.DRAFT_MODEL and not model["config"] and not model.get("run")
  o = model["overrides"]
  assert o["stages"] == () and "draft" not in o["thoughts"]["sources"]
  assert o["thoughts"]["clip_workdir"] == "/w/vificlip"  # the run's CLIP, not a second stage
  assert o["train"]["num_steps"] == config.thoughts.drafts.num_steps == 400
  assert o["eval"]["controls"] == () and not o["eval"]["refine"]
  assert captions["name"] == drafts_lib.DRAFTS and captions["run"].endswith("drafts:run_stage")
  assert drafts_lib.drafts_file("/w") == "/w/drafts/drafts.jsonl"


def _tokenizer(tmp_path):
  texts = ["caption: subtitle: a red circle moves left draft: a blue square grows"] * 4
  return tokenizer_lib.train_sentencepiece(texts, str(tmp_path / "spm.model"), 60)


def _example(position: int) -> dict:
  return {"video_id": "v1", "captions": ["a red circle moves left"], "label": "moves left", "tags": [],
          "metadata": {}, "subtitle": "", "frames": np.zeros((2, 8, 8, 3), np.uint8),
          "frame_mask": np.ones(2, bool), "valid": True, "index": 0, "epoch": 0, "position": position,
          "failure": "", "path": "v1.mp4"}


def test_training_draft_is_the_models_caption_never_a_reference(tmp_path):
  tok = _tokenizer(tmp_path)
  cfg = thoughts_lib.ThoughtConfig(sources=("draft",), dropout=0.0, drop_all=0.0)

  def encoder_text(drafts):
    t = captiont5_data.TextTransform(tok, tasks={"caption": 1.0}, thought_cfg=cfg, max_input_len=32,
                                     max_target_len=16, seed=0, draft_vocab=["blue", "square"], drafts=drafts)
    return [tok.decode_batch(t(_example(p))["input_ids"][None])[0] for p in range(4)]

  assert all(t == "caption: draft: a blue square grows" for t in encoder_text({"v1": "a blue square grows"}))
  assert all(t == "caption:" for t in encoder_text({}))  # a clip without a draft gets none
  # 'corrupted_reference' (drafts=None): the reference's words come through.
  leaked = encoder_text(None)
  assert sum(w in t for t in leaked for w in ("red", "circle", "left")) >= 4


def test_bad_drafts_file_and_setting_are_named(tmp_path):
  path = tmp_path / "drafts.jsonl"
  path.write_text('{"video_id": "a", "draft": "x"}\n{"video": "b"}\n')
  with pytest.raises(ValueError, match=r"drafts.jsonl:2: not a draft row"):
    drafts_lib.read(str(path))
  config = config_lib.load_config_file("configs/captiont5/synthetic.py:refine")
  config.thoughts.drafts.source = "references"
  with pytest.raises(ValueError, match="thoughts.drafts: source must be one of"):
    captiont5_config.validate(config)
