"""Controls in every evaluation table (t5video.evaluate.controls): the other-frames derangement,
the text-only stage, and both recipes reporting them beside their own metrics; CaptionT5's rows
gathered across processes give the metrics of one process."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from t5video import config as config_lib
from t5video.data import synthetic
from t5video.data.records import VideoRecord
from t5video.evaluate import controls
from t5video.evaluate import hosts
from t5video.train import stages
from t5video.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# The derangement and the swapped records.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 7, 88])
def test_derangement_moves_every_clip_in_one_cycle(n):
  donor = controls.derangement(n)
  assert sorted(donor.tolist()) == list(range(n))  # a permutation
  assert np.all(donor != np.arange(n))  # no clip keeps its own frames
  seen, i = set(), 0
  while i not in seen:
    seen.add(i)
    i = int(donor[i])
  assert len(seen) == n  # one cycle: neighbours in the file are not simply paired
  assert np.array_equal(donor, controls.derangement(n))  # fixed
  assert controls.derangement(1).size == 0 and controls.derangement(0).size == 0


def test_other_frames_records_swap_the_video_and_keep_the_text():
  recs = [VideoRecord(video_id=f"v{i}", path=f"/d/v{i}.mp4", captions=[f"cap {i}"], label=f"c{i % 2}",
                      metadata={"objects": f"o{i}"}, subtitle=f"s{i}", start=float(i), end=i + 1.0)
          for i in range(5)]
  swapped = controls.other_frames_records(recs)
  by_path = {r.path: r for r in recs}
  for own, new in zip(recs, swapped):
    donor = by_path[new.path]
    assert donor.video_id != own.video_id and new.extra["frames_of"] == donor.video_id
    assert (new.start, new.end) == (donor.start, donor.end)
    assert (new.video_id, new.captions, new.label, new.metadata, new.subtitle) == (
        own.video_id, own.captions, own.label, own.metadata, own.subtitle)
  assert controls.other_frames_records(recs[:1]) == []


def test_prefixed_and_text_only_metrics(tmp_path):
  m = {"CIDEr": 0.5, "top1": 0.25, "closed/count": 8.0, "num_examples": 8.0,
       "baseline_prior_top1": 0.1, "control_other_frames_top1": 0.2, "attribute_action_accuracy": 0.75}
  assert controls.prefixed("text_only", m) == {
      "control_text_only_CIDEr": 0.5, "control_text_only_top1": 0.25,
      "control_text_only_attribute_action_accuracy": 0.75}
  assert controls.text_only_metrics(str(tmp_path)) == {}  # the stage has not run
  stage = tmp_path / controls.TEXT_ONLY_STAGE
  stage.mkdir()
  (stage / workdir_lib.FINAL_METRICS).write_text(json.dumps({"step": 3, "eval": m}))
  assert controls.text_only_metrics(str(tmp_path))["control_text_only_top1"] == 0.25
  with pytest.raises(ValueError, match="unknown control 'other'"):
    controls.check(["other"])


def test_a_stage_without_a_config_file_is_the_run_itself():
  """The text-only control's mechanism: an entry whose config is '' copies the run's own
  config, with its overrides (the driver then trains it in its sub-workdir before the run)."""
  toy = config_lib.load_config_file(os.path.join(ROOT, "tests", "configs", "engine_toy.py"))
  stage = {"name": "copy", "config": "", "workdir": "copy",
           "overrides": {"stages": (), "train": {"num_steps": 3}, "seed": 5}}
  toy.stages = (stage,)
  copy = stages.stage_config(stage, parent=toy)
  assert copy.train.num_steps == 3 and copy.seed == 5 and copy.stages == ()
  assert copy.optim.learning_rate == toy.optim.learning_rate and toy.train.num_steps == 20
  with pytest.raises(ValueError, match="no config file"):
    stages.stage_config(stage)
  entry = controls.text_only_stage({"thoughts": {"clip_workdir": "/w/vificlip"}, "eval": {"batch_size": 2}})
  assert entry["name"] == entry["workdir"] == controls.TEXT_ONLY_STAGE and entry["config"] == ""
  assert entry["overrides"] == {"stages": (), "data": {"constant_pixels": True},
                                "eval": {"controls": (), "batch_size": 2},
                                "thoughts": {"clip_workdir": "/w/vificlip"}}


def test_cached_features_of_another_clip():
  """With cached features the other-frames control swaps the features (and frame mask)."""
  from t5video.recipes.captiont5.evaluate import FeatureView

  class Source:
    video_ids = ["a", "b", "c"]

    def __getitem__(self, i):
      return {"video_id": self.video_ids[i], "captions": [f"cap {i}"], "pooled": np.full((2, 3), float(i)),
              "frame_mask": np.array([True, i != 1]), "valid": True}

  recs = [VideoRecord(video_id=v, path=f"/{v}.mp4") for v in ("c", "a", "b")]
  view = FeatureView(Source(), controls.other_frames_records(recs), "pooled")
  own = FeatureView(Source(), recs, "pooled")
  assert len(view) == 3 and [own[i]["video_id"] for i in range(3)] == ["c", "a", "b"]
  for i, r in enumerate(controls.other_frames_records(recs)):
    donor = "abc".index(r.extra["frames_of"])
    assert view[i]["video_id"] == recs[i].video_id and view[i]["captions"] == own[i]["captions"]
    assert view[i]["pooled"][0, 0] == donor and view[i]["frame_mask"][1] == (donor != 1)


def _assert_same_metrics(a, b):
  assert sorted(a) == sorted(b)
  np.testing.assert_array_equal([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])  # NaN == NaN


# ---------------------------------------------------------------------------
# CaptionT5: a tiny untrained model on a few rendered clips.
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth"))
  synthetic.render_dataset(root, 40, 0, min_seconds=1.0, max_seconds=1.5, sizes=((48, 32),),
                           fps_choices=(8,), backgrounds=("plain",), max_distractors=0)
  return root


def _captiont5_config(data_root):
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "captiont5", "synthetic.py:runlocal"))
  c.eval.rerank.candidates = 0
  c.thoughts.clip_stage.config = ""  # no CLIP stage
  c.data.root = data_root
  c.data.num_videos = 40
  c.data.num_frames = 2
  c.data.size = 32
  c.model.clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      image_size=32, patch_size=16, projection_dim=32, hidden_act="quick_gelu")
  c.model.t5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  c.text.max_input_len = 32
  c.text.max_target_len = 8
  c.eval.max_examples = 6
  c.eval.batch_size = 4
  c.eval.meteor = "false"
  c.eval.refine = False
  c.eval.controls = ("other_frames", "text_only")
  return c


@pytest.fixture(scope="module")
def captiont5(data_root):
  import flax.linen as nn
  from t5video.recipes import captiont5 as recipe
  task = recipe.CaptionT5Task(_captiont5_config(data_root))
  params = jax.jit(lambda r: nn.unbox(task.init_params(r)))(jax.random.PRNGKey(0))
  return task, params


def test_captiont5_reports_the_controls_and_attributes(captiont5, tmp_path, monkeypatch, capsys):
  task, params = captiont5
  records = task.eval_records()
  assert records[0].extra["attributes"]["actions"]  # the generator's truth reaches the records
  stage = tmp_path / controls.TEXT_ONLY_STAGE
  stage.mkdir()
  (stage / workdir_lib.FINAL_METRICS).write_text(json.dumps({"eval": {"CIDEr": 0.125, "top1": 0.5, "num_examples": 6}}))
  seen = []
  real = task.eval_rows
  monkeypatch.setattr(task, "eval_rows", lambda p, recs, **kw: (seen.append(list(recs)), real(p, recs, **kw))[1])
  m = task.evaluate(params, step=0, workdir=str(tmp_path))
  for key in ("CIDEr", "top1", "tags_micro_f1", "attribute_action_accuracy", "attribute_colour_accuracy",
              "baseline_caption_CIDEr", "control_other_frames_CIDEr", "control_other_frames_top1",
              "control_other_frames_tags_micro_f1", "control_other_frames_attribute_action_accuracy"):
    assert key in m and np.isfinite(m[key]), key
  assert m["control_text_only_CIDEr"] == 0.125 and m["control_text_only_top1"] == 0.5
  assert "control_text_only_num_examples" not in m
  # The control ran on the clips the model's evaluation decoded, each with another clip's video.
  own, control = seen
  assert [r.video_id for r in control] == [r.video_id for r in own]
  paths = {r.video_id: r.path for r in own}
  assert all(r.path != paths[r.video_id] and r.path in paths.values() for r in control)
  assert json.load(open(tmp_path / "eval_metrics.json"))["control_other_frames_CIDEr"] == m[
      "control_other_frames_CIDEr"]
  table = capsys.readouterr().out
  for line in ("control: other clip's frames", "control: text only", "most frequent caption",
               "class prior", "left/right"):
    assert line in table, table


def test_captiont5_reading_only_text_scores_the_same_with_other_frames(captiont5):
  """On constant pixels the model reads only the clip's text, which the control keeps: the
  other-frames control equals the model's own metrics exactly."""
  task, params = captiont5
  records = task.eval_records()
  task.config.data.constant_pixels = True
  try:
    own, rows = task.run_eval(params, records)
    got = task.controls(params, records, rows, workdir=None)
  finally:
    task.config.data.constant_pixels = False
  assert own["num_examples"] == len(records)
  _assert_same_metrics(got, controls.prefixed("other_frames", own))


def test_captiont5_rows_gathered_across_processes(captiont5, monkeypatch):
  """Two processes, each predicting every other clip: the gathered rows, put back in order,
  give the rows and metrics of one process."""
  task, params = captiont5
  records = task.eval_records()
  single, rows = task.run_eval(params, records)
  other = task.eval_rows(params, records[0::2])  # process 0's rows
  monkeypatch.setattr(hosts, "share", lambda items: list(items[1::2]))  # this is process 1
  monkeypatch.setattr(hosts, "per_process", lambda local: [other, list(local)])
  multi, gathered = task.run_eval(params, records)
  assert gathered == rows
  _assert_same_metrics(multi, single)


def test_the_driver_trains_the_text_only_stage_first_and_the_run_reports_it(captiont5, data_root, tmp_path,
                                                                            monkeypatch):
  """config.stages gets the control; the driver trains it on constant pixels before the run, and
  the run's evaluation puts its metrics into final_metrics.json["eval"] (trainer.train faked: the
  stage writes made-up metrics, the run evaluates the fixture's model)."""
  from t5video.train import trainer
  task, params = captiont5
  calls = []

  def fake_train(config, workdir):
    calls.append((os.path.basename(workdir), config))
    if workdir.endswith(controls.TEXT_ONLY_STAGE):
      metrics = {"CIDEr": 0.25, "top1": 0.125, "baseline_prior_top1": 0.5, "num_examples": 6.0}
    else:
      metrics = task.evaluate(params, step=1, workdir=workdir)
    result = {"step": 1, "loss": 1.0, "preempted": False, "eval": metrics}
    (open(os.path.join(workdir, workdir_lib.FINAL_METRICS), "w")).write(json.dumps(result))
    return result

  monkeypatch.setattr(trainer, "train", fake_train)
  result = stages.train(_captiont5_config(data_root), str(tmp_path / "run"))
  assert [name for name, _ in calls] == [controls.TEXT_ONLY_STAGE, "run"]
  child = calls[0][1]
  assert child.data.constant_pixels and child.eval.controls == () and child.stages == ()
  assert child.train.num_steps == calls[1][1].train.num_steps and not calls[1][1].data.constant_pixels
  final = json.load(open(tmp_path / "run" / workdir_lib.FINAL_METRICS))["eval"]
  _assert_same_metrics(final, result["eval"])
  assert final["control_text_only_CIDEr"] == 0.25 and final["control_text_only_top1"] == 0.125
  assert "control_text_only_baseline_prior_top1" not in final and "control_other_frames_CIDEr" in final


def test_text_only_stage_of_captiont5_shares_the_clip_stage(data_root, tmp_path):
  from t5video.recipes import captiont5 as recipe
  config = _captiont5_config(data_root)
  config.thoughts.clip_stage = dict(config="configs/vificlip/synthetic.py:mean,tiny", num_steps=2, folds=1,
                                    init_vision=False)
  config.thoughts.sources = ("concepts",) + tuple(config.thoughts.sources)
  prepared = recipe.CaptionT5Task.prepare(config, str(tmp_path / "run"))
  names = [s["name"] for s in prepared.stages]
  assert names == ["vificlip", controls.TEXT_ONLY_STAGE]  # the CLIP first, then the control
  clip_stage, text_only = prepared.stages
  assert "text_only" not in clip_stage["overrides"]["eval"]["controls"]
  child = stages.stage_config(text_only, parent=prepared)
  assert child.data.constant_pixels and child.stages == () and child.eval.controls == ()
  assert child.thoughts.clip_workdir == str(tmp_path / "run" / "vificlip")
  assert child.train.num_steps == prepared.train.num_steps and child.seed == prepared.seed
  again = recipe.CaptionT5Task.prepare(child, str(tmp_path / "run" / controls.TEXT_ONLY_STAGE))
  assert again.stages == ()  # no CLIP stage of its own, no control of the control


# ---------------------------------------------------------------------------
# ViFi-CLIP: the text-only stage trained by the stage driver, the controls in the table.
# ---------------------------------------------------------------------------

def _vificlip_config(data_root, tokenizer, arg="mean,tiny"):
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "vificlip", f"synthetic.py:{arg}"))
  c.data.root = data_root
  c.data.synthetic = {}
  c.data.layout_kwargs = {"annotation_path": os.path.join(data_root, "annotations.jsonl"),
                          "video_root": data_root}
  c.data.novel_classes = ()
  c.data.num_frames = 2
  c.model.tokenizer = tokenizer
  c.model.sentencepiece_vocab = 120
  c.eval.protocols = ("closed", "retrieval")
  c.train.num_steps = 3
  c.train.log_every = 3
  c.train.progress = False
  return c


def test_vificlip_controls_baselines_and_ties(data_root, tmp_path, capsys):
  """An untrained ViFi-CLIP: the other-frames control and the baselines are reported; on constant
  pixels every clip embeds alike, the control equals the model, and retrieval ranks the ties at
  random (chance, not R@1 = 100)."""
  import flax.linen as nn
  from t5video.recipes.vificlip import evaluate as vifi_eval
  from t5video.recipes.vificlip.task import ViFiCLIPTask
  config = _vificlip_config(data_root, str(tmp_path / "spiece.model"), "mean,tiny,textonly")
  prepared = ViFiCLIPTask.prepare(config, str(tmp_path / "run"))
  assert [s["name"] for s in prepared.stages] == [controls.TEXT_ONLY_STAGE]
  task = ViFiCLIPTask(config)
  params = jax.jit(lambda r: nn.unbox(task.init_params(r)))(jax.random.PRNGKey(0))
  m = task.evaluate(params, step=0, workdir=str(tmp_path / "run"))
  for key in ("closed/top1", "t2v/R@1", "v2t/R@5", "baseline_prior_closed/top1", "baseline_chance_t2v/R@1",
              "control_other_frames_closed/top1", "control_other_frames_t2v/R@1"):
    assert key in m and np.isfinite(m[key]), key
  assert "control_text_only_closed/top1" not in m  # the stage has not run
  n = m["closed/count"]
  assert m["baseline_chance_t2v/R@1"] == pytest.approx(100.0 / n)
  out = capsys.readouterr().out
  assert "control: other clip's frames" in out and "class prior / chance" in out
  # Two processes, each embedding every other clip: the gathered embeddings are in order.
  records = task.records(task.config.eval.split)
  single, _ = vifi_eval.embed_shared(task, params, records)
  first, first_ok = task.predictor.embed_records(params, records[0::2])
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(hosts, "share", lambda items: list(items[1::2]))
    mp.setattr(hosts, "per_process", lambda local: [list(zip(first, first_ok)), list(local)])
    gathered, _ = vifi_eval.embed_shared(task, params, records)
  np.testing.assert_allclose(gathered, single, atol=1e-6)
  task.config.data.constant_pixels = True
  emb, ok = vifi_eval.embed_shared(task, params, records)
  assert ok.all() and np.allclose(emb, emb[:1], atol=1e-6)
  m = vifi_eval.run_protocols(task, params)
  _assert_same_metrics({k: m[k] for k in controls.model_metrics(m)},
                       {k: m[f"control_other_frames_{k}"] for k in controls.model_metrics(m)})
  assert m["t2v/R@1"] < 100.0 and m["t2v/MedianR"] > 1


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("T5VIDEO_CONTROLS_E2E"),
                    reason="two real trainings (about 2 min each under load): T5VIDEO_CONTROLS_E2E=1")
def test_vificlip_trains_the_text_only_stage_and_reports_both_controls(data_root, tmp_path, capsys):
  c = _vificlip_config(data_root, str(tmp_path / "spiece.model"), "mean,tiny,textonly")
  workdir = str(tmp_path / "run")
  result = stages.train(c, workdir)
  child = json.load(open(os.path.join(workdir, controls.TEXT_ONLY_STAGE, "config.json")))
  assert child["data"]["constant_pixels"] and child["train"]["num_steps"] == 3
  ev = result["eval"]
  assert json.load(open(os.path.join(workdir, workdir_lib.FINAL_METRICS)))["eval"] == ev
  for key in ("closed/top1", "t2v/R@1", "baseline_prior_closed/top1", "baseline_chance_t2v/R@1",
              "control_other_frames_closed/top1", "control_other_frames_t2v/R@1",
              "control_text_only_closed/top1", "control_text_only_t2v/R@1", "control_text_only_v2t/R@5"):
    assert key in ev and np.isfinite(ev[key]), key
  out = capsys.readouterr().out
  assert "control: other clip's frames" in out and "control: text only" in out
