"""The distillation recipe (issue #17): the labelled / unlabelled division and alt-text, the
stage list, per-clip sampling keys, pseudo-labelling that resumes to the same captions and loads
as a generic-layout dataset, and the student trained and evaluated on it with its controls.

The teacher here is an untrained CaptionT5 saved as a checkpoint (its captions are noise; what is
tested is the machinery); the whole pipeline through ``t5video train`` is the long test at the end.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t5video import config as config_lib
from t5video.data import layouts
from t5video.data import synthetic
from t5video.evaluate import decoding
from t5video.recipes.distill import data as data_lib
from t5video.recipes.distill import pseudo_label
from t5video.recipes.distill.task import DistillTask
from t5video.train import stages
from t5video.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "distill", "synthetic.py")


def _config(root: str, arg: str = "tiny") -> ml_collections.ConfigDict:
  c = config_lib.load_config_file(f"{CONFIG}:{arg}")
  c.data.root = root
  c.data.synthetic = {}  # rendered by the fixture
  return c


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("distill_synth"))
  synthetic.render_dataset(out, 40, 0, min_seconds=1.0, max_seconds=2.0, sizes=((48, 32), (64, 48)),
                           fps_choices=(8,), class_prior="uniform", backgrounds=("plain",), max_distractors=0)
  return out


@pytest.fixture(scope="module")
def prepared(root, tmp_path_factory):
  """A prepared ``:tiny`` (pseudo) run: the data division, the student's assets, the stage list."""
  workdir = str(tmp_path_factory.mktemp("distill_run"))
  config = stages.prepare(_config(root), workdir)
  return config, workdir


def test_division_alt_text_and_stage_list(root, prepared):
  config, workdir = prepared
  d = config.student.data_dir
  assert d == os.path.join(workdir, "data")
  train = [r for r in layouts.read_generic(os.path.join(root, "annotations.jsonl")) if r.split == "train"]
  labelled = data_lib.read(os.path.join(d, data_lib.LABELLED))
  unlabelled = data_lib.read(os.path.join(d, data_lib.UNLABELLED))
  assert len(labelled) == round(0.25 * len(train)) and len(labelled) + len(unlabelled) == len(train)
  assert {r.video_id for r in labelled}.isdisjoint(r.video_id for r in unlabelled)
  assert all(r.captions and r.label for r in labelled)
  # Unlabelled clips keep their side information and nothing that describes what happens.
  for r in unlabelled:
    assert not r.captions and r.label is None and not r.tags and not r.moments and not r.saliency
    assert "attributes" not in r.extra and r.extra["alt_text"] and os.path.isabs(r.path)
  # The teacher evaluates on the held-out split, which is in the labelled file with its captions.
  assert {r.split for r in data_lib.read(os.path.join(d, data_lib.LABELLED), None)} == {"train", "val", "test"}

  # Alt-text: a still description (never the action), keyed by the clip id, often right, not always.
  by_id = {r.video_id: r for r in train}
  alts = {r.video_id: r.captions[0] for r in data_lib.read(os.path.join(d, data_lib.ALT_TEXT))}
  assert set(alts) == set(by_id)
  verbs = {w for vs in synthetic.ACTION_VERBS.values() for v in vs for w in v.split() if len(w) > 4}
  assert not any(w in verbs for a in alts.values() for w in a.split()), alts
  right = [by_id[v].extra["attributes"]["shape"] in a for v, a in alts.items()]
  assert 0 < sum(right) < len(right)
  assert data_lib.alt_text(by_id["vid00000"], 0) == data_lib.alt_text(by_id["vid00000"], 0)
  own = by_id["vid00000"]
  own.extra["alt_text"] = " a user's own alt-text "
  assert data_lib.alt_text(own, 0) == "a user's own alt-text"

  # The stages: the teacher on the labelled file, then pseudo-labelling into <workdir>/pseudo_label.
  names = [s["name"] for s in config.stages]
  assert names == ["teacher_joint", "pseudo_label"]
  teacher = config.stages[0]
  assert teacher["overrides"]["data"]["annotations"] == os.path.join(d, data_lib.LABELLED)
  assert config.teacher.workdir == os.path.join(workdir, "teacher_joint")
  assert config.pseudo.dir == os.path.join(workdir, "pseudo_label")
  assert config.stages[1]["run"] == "t5video.recipes.distill.pseudo_label:run_stage"
  assert os.path.isfile(config.model.tokenizer)  # the student's tokenizer, trained on labelled text
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["pseudo"]["dir"] == config.pseudo.dir and len(saved["stages"]) == 2

  # V->L: visual adaptation (T5 frozen) then language adaptation (vision frozen) from it; L->V reversed.
  vl = stages.prepare(_config(root, "tiny,order=vl,textonly"), os.path.join(workdir, "vl"))
  assert [s["name"] for s in vl.stages] == ["teacher_visual", "teacher_language", "pseudo_label",
                                            "control_text_only"]
  v, l = vl.stages[0]["overrides"], vl.stages[1]["overrides"]
  assert v["eval"]["qa"] == l["eval"]["qa"] == "true"  # the teacher is measured on QA after either stage
  assert v["optim"]["trainable"].startswith("^(clip|") and l["optim"]["trainable"] == "^t5/"
  # Captions alone in visual adaptation; video QA joins them in language adaptation.
  assert v["tasks"] == {"caption": 1.0, "classify": 0.0, "tags": 0.0, "qa": 0.0}
  assert l["tasks"]["qa"] == vl.teacher.qa_weight > 0 and l["tasks"]["caption"] > 0
  assert l["init_from"]["path"] == os.path.join(workdir, "vl", "teacher_visual")
  lv = stages.prepare(_config(root, "tiny,order=lv"), os.path.join(workdir, "lv"))
  assert [s["name"] for s in lv.stages][:2] == ["teacher_language", "teacher_visual"]
  with pytest.raises(FileNotFoundError, match="not a finished pseudo-labelled dataset"):
    bad_dir = _config(root, "tiny,mixed")
    bad_dir.pseudo.dir = os.path.join(workdir, "nowhere")
    stages.prepare(bad_dir, os.path.join(workdir, "nodir"))
  # Sources without pseudo-captions need no teacher.
  assert not stages.prepare(_config(root, "tiny,labelled_only"), os.path.join(workdir, "lab")).stages
  with pytest.raises(ValueError, match="student.sources"):
    bad = _config(root)
    bad.student.sources = ("captions",)
    config_lib.validate(bad)


def test_unlabelled_videos_of_ones_own_and_the_real_data_config(root, tmp_path, monkeypatch):
  """``student.unlabelled``: a folder of the user's videos is the unlabelled set, the whole training
  split the labelled one; stand-ins set both models' starting points; configs/distill/msrvtt.py
  lists V->L teacher stages on real checkpoints."""
  import shutil
  mine = tmp_path / "my_videos"
  (mine / "trip").mkdir(parents=True)
  shutil.copy(os.path.join(root, "videos", "vid00000.mp4"), mine / "trip" / "a.mp4")
  shutil.copy(os.path.join(root, "videos", "vid00001.mp4"), mine / "b.MP4")
  (mine / "notes.txt").write_text("not a video")
  config = _config(root)
  config.student.unlabelled = str(mine)
  config.student.labelled_fraction = 1.0
  prepared = stages.prepare(config, str(tmp_path / "run"))
  unlabelled = data_lib.read(os.path.join(prepared.student.data_dir, data_lib.UNLABELLED))
  assert [r.video_id for r in unlabelled] == ["b", os.path.join("trip", "a")]
  assert unlabelled[0].path == str(mine / "b.MP4") and not unlabelled[0].captions
  train = [r for r in layouts.read_generic(os.path.join(root, "annotations.jsonl")) if r.split == "train"]
  assert len(data_lib.read(os.path.join(prepared.student.data_dir, data_lib.LABELLED))) == len(train)
  clash = _config(root)
  clash.student.unlabelled = os.path.join(root, "annotations.jsonl")  # the dataset's own clips
  with pytest.raises(ValueError, match="also in data.train_split"):
    stages.prepare(clash, str(tmp_path / "clash"))

  # Stand-ins (a finished directory here; `t5video standins` builds one): the student takes the CLIP's
  # sizes, tokenizer and weights, the teacher stages its CLIP and T5 directories.
  standins = tmp_path / "standins"
  for part in ("clip", "t5"):
    (standins / part).mkdir(parents=True)
  (standins / "t5" / "config.json").write_text("{}")
  (standins / "clip" / "config.json").write_text(json.dumps({
      "model_type": "clip", "projection_dim": 24,
      "vision_config": {"hidden_size": 40, "intermediate_size": 80, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
      "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "max_position_embeddings": 20, "vocab_size": 300, "eos_token_id": 2}}))
  with_standins = _config(root)
  with_standins.standins.dir = str(standins)
  with_standins.model.tokenizer = "/not/used.model"
  from t5video.recipes.distill import task as task_lib
  # The student's assets need a loadable tokenizer; only the resolved config is looked at here.
  monkeypatch.setattr(task_lib.ViFiCLIPTask, "prepare", classmethod(lambda cls, config, workdir: config))
  resolved = task_lib.DistillTask.prepare(with_standins, str(tmp_path / "with_standins"))
  assert resolved.model.vision.hidden_size == 40 and resolved.model.text.vocab_size == 300
  assert resolved.model.projection_dim == 24 and resolved.model.text_len == 20
  assert resolved.model.tokenizer == resolved.init_from.path == str(standins / "clip")
  assert resolved.stages[0]["overrides"]["model"]["clip_init"] == str(standins / "clip")
  assert resolved.stages[0]["overrides"]["model"]["t5_init"] == str(standins / "t5")

  # The synthetic default's teacher sees through its own video-text CLIP stage (the demo's design): the
  # stand-in T5 through the HF path, no HF CLIP (its tower and video token come from the stage, which
  # starts from the stand-in CLIP); the first teacher stage trains that CLIP stage, the second reads it.
  for order, first in (("vl", "teacher_visual"), ("lv", "teacher_language")):
    seeing = _config(root, f"pseudo,order={order}")
    seeing.standins.dir = str(standins)
    seeing.model.tokenizer = "/not/used.model"
    resolved = task_lib.DistillTask.prepare(seeing, str(tmp_path / f"seeing_{order}"))
    one, two = (stages.stage_config(s) for s in resolved.stages[:2])
    assert resolved.stages[0]["name"] == first
    for c in (one, two):
      assert c.model.t5_init == str(standins / "t5") and not c.model.clip_init
      assert c.thoughts.clip_stage.init_vision and c.model.video_token == "ordered"
    assert not one.thoughts.clip_workdir
    assert two.thoughts.clip_workdir == str(tmp_path / f"seeing_{order}" / first / "vificlip")
    visual = one if order == "vl" else two
    assert "video_token_projection" in visual.optim.trainable  # the bridge trains in visual adaptation
  folded = _config(root, "pseudo")
  folded.teacher.config += ",concepts"  # a cross-fitted CLIP stage: each teacher stage trains its own
  assert not any(s["overrides"]["thoughts"].get("clip_workdir")
                 for s in task_lib.teacher_stages(folded, str(tmp_path / "folded")))

  real = config_lib.load_config_file(os.path.join(ROOT, "configs", "distill", "msrvtt.py"))
  with real.unlocked():
    real.student.data_dir, real.data.root = str(tmp_path / "d"), str(tmp_path)
  from t5video.recipes.distill.task import teacher_stages
  listed = teacher_stages(real, "/runs/x")
  assert [s["name"] for s in listed] == ["teacher_visual", "teacher_language"]
  visual, language = (stages.stage_config(s) for s in listed)
  assert (visual.train.batch_size, language.train.batch_size) == (64, 256)
  assert visual.optim.name == language.optim.name == "adafactor" and language.tasks.qa > 0 == visual.tasks.qa
  assert language.init_from.path == "/runs/x/teacher_visual" and language.model.t5_init.endswith("flan-t5-base")
  for c in (visual, language):
    config_lib.validate(c)


def test_video_qa_pairs_and_the_teachers_qa_task(prepared, teacher):
  """QA pairs about the rendered events go with the labelled clips (not the unlabelled ones), and
  CaptionT5's 'qa' task reads the question and writes the answer."""
  from t5video.data import qa as qa_lib
  from t5video.recipes.captiont5 import data as captiont5_data
  config, _ = prepared
  labelled = data_lib.read(os.path.join(config.student.data_dir, data_lib.LABELLED), None)
  assert all(r.extra["qa"] for r in labelled)
  two = next(r for r in labelled if len(r.extra["attributes"]["actions"]) == 2)
  first, second = two.extra["attributes"]["actions"]
  pairs = {p["question"]: p for p in two.extra["qa"]}
  after = pairs[f"what does the {two.extra['attributes']['shape']} do after it {first}?"]
  assert after["answer"] == second and after["type"] == "temporal"
  assert {p["type"] for p in two.extra["qa"]} == set(qa_lib.TYPES)
  mc = next(p for p in two.extra["qa"] if p.get("choices"))
  assert len(mc["choices"]) == 4 and mc["answer"] in mc["choices"]
  assert qa_lib.synthetic_pairs(two.extra["attributes"], two.video_id) == qa_lib.synthetic_pairs(
      two.extra["attributes"], two.video_id)
  assert qa_lib.is_correct("The shrinks.", {"answer": "shrinks"}) and not qa_lib.is_correct(first, after)
  acc = qa_lib.accuracy([{"type": "counting", "correct": True}, {"type": "temporal", "correct": False}])
  assert acc == {"qa_accuracy": 0.5, "qa_count": 2.0, "qa_accuracy_counting": 1.0, "qa_accuracy_temporal": 0.0}
  from t5video.evaluate import controls
  assert set(controls.prefixed("other_frames", acc)) == {  # every per-type accuracy has its control
      "control_other_frames_qa_accuracy", "control_other_frames_qa_accuracy_counting",
      "control_other_frames_qa_accuracy_temporal"}
  with pytest.raises(ValueError, match="choices"):
    qa_lib.check_pairs([{"question": "q?", "answer": "a", "choices": ["b"]}], "x")

  from t5video.data import thoughts as thoughts_lib
  task, params = teacher
  tok = task.tokenizer
  transform = captiont5_data.TextTransform(
      tok, tasks={"caption": 0.0, "qa": 1.0}, thought_cfg=thoughts_lib.ThoughtConfig(sources=("subtitle",)),
      max_input_len=48, max_target_len=12, seed=0, qa={two.video_id: [after]})
  ex = transform({"video_id": two.video_id, "captions": two.captions, "label": two.label, "tags": [],
                  "metadata": {}, "subtitle": "hello there", "frames": np.zeros((2, 8, 8, 3), np.uint8),
                  "frame_mask": np.ones(2, bool), "valid": True, "index": 0, "epoch": 0, "position": 0,
                  "failure": "", "path": two.path})
  assert ex["task_id"] == captiont5_data.TASK_IDS["qa"]
  assert tok.decode_batch(ex["input_ids"][None])[0].startswith(f"question: {after['question']}")
  assert tok.decode_batch(ex["decoder_target"][None])[0] == second

  # The teacher's evaluation answers each clip's questions: accuracy, its prior, per type.
  records = [r for r in task.eval_records() if r.extra.get("qa")][:2]
  metrics, rows = task.run_eval(params, records)
  assert sum(len(r["qa"]) for r in rows) == metrics["qa_count"] == sum(len(r.extra["qa"]) for r in records)
  assert all(isinstance(q["predicted"], str) and q["correct"] == qa_lib.is_correct(q["predicted"], q)
             for r in rows for q in r["qa"])
  assert 0.0 <= metrics["qa_accuracy"] <= 1.0
  assert {k for k in metrics if k.startswith("qa_accuracy_")} == {
      f"qa_accuracy_{p['type']}" for r in records for p in r.extra["qa"]}
  # Open-ended answers are also scored by WUPS (at least as lenient as exact match at 0.0).
  from t5video.evaluate import wups
  open_rows = [q for r in rows for q in r["qa"] if q["open"]]
  assert open_rows and metrics["qa_wups@0.0"] == pytest.approx(
      np.mean([wups.wups(q["predicted"], q["answer"], 0.0) for q in open_rows]))
  assert metrics["qa_wups@0.0"] >= metrics["qa_wups@0.9"] >= np.mean([q["correct"] for q in open_rows]) - 1e-9
  base = task.baselines(records)
  assert 0.0 <= base["baseline_prior_qa_accuracy"] <= 1.0
  assert 0.0 <= base["baseline_prior_qa_wups@0.0"] <= 1.0
  # eval.qa: 'auto' answers them when the teacher trains on QA, 'true' always, 'false' never.
  from t5video.recipes.captiont5 import config as captiont5_config
  saved = (task.config.tasks.qa, task.config.eval.qa)
  try:
    with task.config.unlocked():
      for tasks_qa, flag, answered in ((0.0, "auto", False), (0.0, "true", True), (0.5, "false", False)):
        task.config.tasks.qa, task.config.eval.qa = tasks_qa, flag
        assert captiont5_config.evaluates_qa(task.config) == answered
        assert ("qa_accuracy" in task.run_eval(params, records[:1])[0]) == answered
      task.config.eval.qa = "sometimes"
      with pytest.raises(ValueError, match="eval.qa"):
        captiont5_config.evaluates_qa(task.config)
  finally:
    with task.config.unlocked():
      task.config.tasks.qa, task.config.eval.qa = saved


def test_per_row_sampling_keys_do_not_depend_on_the_batch():
  """decoding.sample with one key per row: a row's samples are the same whatever its batch-mates."""
  vocab, eos = 7, 1

  def step_fn(tokens, cache, step):  # logits depend on the row's own context vector and the step
    logits = cache["ctx"] + 0.3 * step + 0.1 * tokens[:, -1:].astype(jnp.float32)
    return logits, cache

  ctx = jax.random.normal(jax.random.PRNGKey(3), (5, vocab))
  keys = pseudo_label.clip_keys([f"clip{i}" for i in range(5)], seed=0)

  @jax.jit
  def draw(ctx, keys):
    res = decoding.sample(step_fn, {"ctx": ctx}, keys, batch_size=ctx.shape[0], num_samples=3,
                          max_len=6, start_id=0, eos_id=eos, top_p=0.95)
    return res.tokens

  full = np.asarray(draw(ctx, keys))
  rows = np.array([3, 0])
  assert (np.asarray(draw(ctx[rows], keys[rows])) == full[rows]).all()
  assert len({tuple(full[0, s]) for s in range(3)}) > 1  # the K samples of a clip differ
  other_seed = pseudo_label.clip_keys([f"clip{i}" for i in range(5)], seed=1)
  assert (np.asarray(draw(ctx, other_seed)) != full).any()


def test_run_stages_are_called_instead_of_trained(tmp_path, monkeypatch):
  calls = []

  def fake_train(config, wd):
    calls.append(("train", os.path.basename(wd)))
    return {"step": 1, "preempted": False}

  monkeypatch.setattr(stages.trainer, "train", fake_train)
  monkeypatch.setattr(stages, "prepare", lambda config, wd: config)
  config = ml_collections.ConfigDict({"task": "x", "stages": (
      {"name": "label", "config": "", "workdir": "label", "run": f"{__name__}:_toy_stage", "overrides": {"seed": 5}},)})
  stages.train(config, str(tmp_path / "run"))
  assert calls == [("train", "run")]
  assert json.load(open(tmp_path / "run" / "label" / workdir_lib.FINAL_METRICS)) == {"seed": 5}
  stages.train(config, str(tmp_path / "run"))  # done: not called again
  assert json.load(open(tmp_path / "run" / "label" / workdir_lib.FINAL_METRICS)) == {"seed": 5}
  with pytest.raises(ValueError, match="nope"):
    stages.stage_function("t5video.recipes.distill.pseudo_label:nope")


def _toy_stage(config, workdir):
  assert not os.path.exists(os.path.join(workdir, workdir_lib.FINAL_METRICS)), "a finished stage ran again"
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.FINAL_METRICS), "w") as f:
    json.dump({"seed": config.seed}, f)
  return {}


def _random_params(task, seed: int = 0):
  """Params of ``task``'s shapes drawn at random (compiling the initialiser costs more than the
  whole test of the machinery that uses them)."""
  abstract = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.PRNGKey(0))))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


@pytest.fixture(scope="module")
def teacher(prepared):
  """The teacher stage's CaptionT5, prepared in its workdir and saved untrained (random params, step 0)."""
  from t5video.train import checkpoint as checkpoint_lib
  config, _ = prepared
  stage = dict(config.stages[0])
  tconfig = stages.prepare(stages.stage_config(stage, parent=config), config.teacher.workdir)
  from t5video.recipes.captiont5.task import CaptionT5Task
  task = CaptionT5Task(tconfig)
  params = _random_params(task)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(config.teacher.workdir, "checkpoints"), async_save=False)
  ckpt.save(0, {"params": params})
  ckpt.manager.wait_until_finished()
  return pseudo_label.restore_teacher(config.teacher.workdir)


def test_pseudo_labels_resume_to_the_same_captions_and_load_as_a_dataset(prepared, teacher, tmp_path,
                                                                          monkeypatch):
  config, _ = prepared
  monkeypatch.setattr(pseudo_label, "restore_teacher", lambda wd: teacher)  # one compiled teacher
  k = int(config.pseudo.num_captions)
  straight = str(tmp_path / "straight")
  pseudo_label.run_stage(config, straight)

  # Killed after the first part, restarted: the finished part is kept, the captions are the same.
  killed = str(tmp_path / "killed")
  real_chunk, calls = pseudo_label.Sampler.chunk, []

  def dies_on_second(self, records, batch_size):
    calls.append(len(records))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_chunk(self, records, batch_size)

  monkeypatch.setattr(pseudo_label.Sampler, "chunk", dies_on_second)
  with pytest.raises(KeyboardInterrupt):
    pseudo_label.run_stage(config, killed)
  parts = sorted(os.listdir(os.path.join(killed, "parts")))
  assert parts == ["part-00000.jsonl"] and not os.path.exists(os.path.join(killed, workdir_lib.FINAL_METRICS))
  stamp = os.path.getmtime(os.path.join(killed, "parts", parts[0]))
  monkeypatch.setattr(pseudo_label.Sampler, "chunk", real_chunk)
  pseudo_label.run_stage(config, killed)
  assert os.path.getmtime(os.path.join(killed, "parts", parts[0])) == stamp
  a = open(os.path.join(straight, "annotations.jsonl")).read()
  assert a == open(os.path.join(killed, "annotations.jsonl")).read()

  # A generic-layout dataset: K captions per unlabelled clip, nothing but side information beside them.
  unlabelled = data_lib.read(os.path.join(config.student.data_dir, data_lib.UNLABELLED))
  records = layouts.read_dataset("generic", straight, "train")
  assert [r.video_id for r in records] == [r.video_id for r in unlabelled]
  assert all(len(r.captions) == k and len(r.extra["pseudo_logprobs"]) == k for r in records)
  assert all(r.label is None and not r.moments and "attributes" not in r.extra for r in records)
  assert len({c for r in records for c in r.captions}) > len(records)  # sampled, not one caption each
  manifest = json.load(open(os.path.join(straight, "manifest.json")))
  assert manifest["teacher"]["workdir"] == config.teacher.workdir and manifest["teacher"]["step"] is None
  assert len(manifest["teacher"]["config_sha256"]) == 64
  assert manifest["sampling"]["num_captions"] == k and manifest["sampling"]["top_p"] == config.pseudo.top_p
  assert manifest["counts"] == {"clips": len(unlabelled), "labelled": len(unlabelled), "failed": 0,
                                "captions": k * len(unlabelled)}
  assert manifest["throughput"]["clips_per_s"] > 0
  assert json.load(open(os.path.join(straight, workdir_lib.FINAL_METRICS)))["eval"]["pseudo_clips"] == len(unlabelled)

  # What the pseudo-captions say, scored against the generator's truth of the same clips: the
  # untrained teacher's are mostly wrong; the clips' own reference captions are right.
  from t5video.recipes.distill import evaluate as evaluate_lib
  noise = evaluate_lib.pseudo_attribute_accuracy(straight, config.data.root)
  assert 0 <= noise["pseudo_attribute_colour_accuracy"] < 0.5 and "pseudo_attribute_action_accuracy" in noise
  truth = {r.video_id: r for r in layouts.read_generic(os.path.join(config.data.root, "annotations.jsonl"))}
  own = tmp_path / "own"
  own.mkdir()
  with open(own / "annotations.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps({"video_id": r.video_id, "path": r.path, "split": "train",
                          "captions": truth[r.video_id].captions[:2]}) + "\n")
  right = evaluate_lib.pseudo_attribute_accuracy(str(own), config.data.root)
  assert right["pseudo_attribute_colour_accuracy"] == right["pseudo_attribute_action_accuracy"] == 1.0
  assert evaluate_lib.pseudo_attribute_accuracy(str(own), str(tmp_path)) == {}  # no truth: nothing

  # Two hosts (simulated one after the other, barriers off): each labels its chunks, host 0 merges
  # them into the same dataset.
  sharded = str(tmp_path / "sharded")
  monkeypatch.setattr(pseudo_label, "_barrier", lambda name: None)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with pytest.raises(FileNotFoundError):  # host 1 reads host 0's manifest after the last barrier
    pseudo_label.run_stage(config, sharded)
  n_chunks = -(-len(unlabelled) // int(config.pseudo.chunk_size))
  assert sorted(p for p in os.listdir(os.path.join(sharded, "parts")) if p.startswith("part-")) == [
      f"part-{i:05d}.jsonl" for i in range(1, n_chunks, 2)]
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  pseudo_label.run_stage(config, sharded)
  assert open(os.path.join(sharded, "annotations.jsonl")).read() == a
  assert json.load(open(os.path.join(sharded, "manifest.json")))["throughput"]["processes"] == 2
  monkeypatch.undo()
  monkeypatch.setattr(pseudo_label, "restore_teacher", lambda wd: teacher)

  # The command line labels a file of clips; a clip's captions do not depend on its batch-mates.
  cli_out = str(tmp_path / "cli")
  assert pseudo_label.main(["--teacher", config.teacher.workdir, "--videos",
                            os.path.join(config.student.data_dir, data_lib.UNLABELLED), "--out", cli_out,
                            "--num-captions", str(k), "--top-p", str(config.pseudo.top_p), "--batch-size", "8",
                            "--chunk-size", "8", "--max-clips", "5"]) == 0
  by_id = {r.video_id: r.captions for r in records}
  cli_records = layouts.read_dataset("generic", cli_out, "train")
  assert len(cli_records) == 5 and all(r.captions == by_id[r.video_id] for r in cli_records)

  # Another seed draws other captions; a folder started with other settings is refused.
  other = ml_collections.ConfigDict(config.to_dict())
  other.pseudo.seed = 1
  with pytest.raises(ValueError, match="other settings"):
    pseudo_label.run_stage(other, straight)
  pseudo_label.run_stage(other, str(tmp_path / "seed1"))
  assert open(os.path.join(tmp_path, "seed1", "annotations.jsonl")).read() != a

  # The student: trained on the pseudo-captions, evaluated zero-shot with chance and the controls.
  with config.unlocked():
    config.pseudo.dir = straight
  task = DistillTask(config)
  train = task.train_records()
  assert len(train) == len(unlabelled) and all(r.extra["source"] == "pseudo" and r.label is None for r in train)
  # Its loss is ViFi-CLIP's InfoNCE (tests/test_vificlip.py trains it); here its evaluation,
  # with random params: every metric in range, chance and the controls beside them.
  params = _random_params(task)
  from t5video.recipes.distill import evaluate as evaluate_lib
  metrics = evaluate_lib.run(task, jax.device_get(params))
  n = int(metrics["zeroshot_count"])
  for key in ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MedianR", "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_MedianR",
              "zeroshot_top1", "control_other_frames_t2v_R@1", "control_other_frames_v2t_R@1"):
    assert 0 <= metrics[key] <= max(100, n), key
  assert metrics["baseline_chance_t2v_R@1"] == pytest.approx(100 / n)
  assert metrics["baseline_chance_zeroshot_top1"] == pytest.approx(100 / len(task.novel_classes))
  assert metrics["pseudo_clips"] == len(unlabelled) and "hm" not in metrics
  table = evaluate_lib.format_table(metrics, config)
  assert "control: other clip's frames" in table and "chance" in table

  # The other sources: labelled captions, alt-text, a mixture (each clip once per source).
  with config.unlocked():
    config.student.sources = ("labelled",)
  assert {r.extra["source"] for r in task.train_records()} == {"labelled"}
  with config.unlocked():
    config.student.sources = ("pseudo", "labelled", "alt_text")
  mixed = task.train_records()
  assert len(mixed) == 2 * len(unlabelled) + len(data_lib.read(os.path.join(config.student.data_dir,
                                                                              data_lib.LABELLED))) * 2


@pytest.mark.long
@pytest.mark.slow
def test_the_whole_pipeline_through_the_stage_driver(root, tmp_path, monkeypatch):
  """``t5video train --config configs/distill/synthetic.py:tiny,order=vl`` from tiny stand-ins:
  the teacher's visual then language adaptation, pseudo-labels, the student, its evaluation; run
  again, everything is done and nothing reruns."""
  from t5video import cli
  monkeypatch.setenv("T5VIDEO_STANDINS_CACHE", str(tmp_path / "standins_cache"))
  workdir = str(tmp_path / "run")
  argv = ["train", "--config", f"{CONFIG}:tiny,order=vl", "--workdir", workdir, f"--config.data.root={root}",
          "--config.data.synthetic.num_videos=0", f"--config.standins.dir={tmp_path / 'standins'}",
          "--config.standins.config=configs/standins/default.py:tiny"]
  assert cli.main(argv) == 0
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))["eval"]
  for key in ("t2v_R@1", "t2v_R@5", "t2v_R@10", "v2t_R@1", "zeroshot_top1", "control_other_frames_t2v_R@1",
              "baseline_chance_t2v_R@1", "teacher_CIDEr", "teacher_qa_accuracy", "pseudo_clips_per_s"):
    assert key in final and np.isfinite(final[key]), key
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["init_from"]["path"] == str(tmp_path / "standins" / "clip")
  language = json.load(open(os.path.join(workdir, "teacher_language", "config.json")))
  assert language["optim"]["trainable"] == "^t5/" and language["model"]["t5_init"].endswith("t5")
  for sub in ("teacher_visual", "teacher_language", "pseudo_label"):
    assert os.path.isfile(os.path.join(workdir, sub, "final_metrics.json"))
  # `t5video eval` needs only the workdir and reproduces the run's own evaluation.
  task, params = cli.restore_task(cli.load_run_config(workdir), workdir)
  again = task.evaluate(params, step=-1, workdir=workdir)
  assert again["t2v_R@1"] == final["t2v_R@1"] and again["zeroshot_top1"] == final["zeroshot_top1"]
  assert cli.main(["eval", "--workdir", workdir]) == 0
  stamp = os.path.getmtime(os.path.join(workdir, "pseudo_label", "annotations.jsonl"))
  assert cli.main(argv) == 0
  assert os.path.getmtime(os.path.join(workdir, "pseudo_label", "annotations.jsonl")) == stamp
