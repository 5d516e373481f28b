"""CaptionT5 end to end on real encoded (synthetic) videos: train, evaluate,
restore, caption files, cached features, PEFT wiring."""

from __future__ import annotations

import json
import os

import flax.linen
import jax
import numpy as np
import pytest

from t5video import cli
from t5video.data import synthetic

# Independent, heavy tests: xdist may run them on different workers (tests/conftest.py).
XDIST_SPLIT = True

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base_config(data_root, **overrides):
  c = cli.load_config_file(os.path.join(ROOT, "configs", "captiont5", "synthetic.py:runlocal"))
  c.eval.rerank.candidates = 0  # no CLIP stage unless a test asks for one
  c.data.root = data_root
  c.data.num_videos = 40
  c.data.num_frames = 4
  c.data.size = 32
  c.model.clip.image_size = 32
  c.model.clip.patch_size = 16
  c.model.clip.hidden_size = 32
  c.model.clip.intermediate_size = 64
  c.model.clip.num_hidden_layers = 1
  c.model.t5.d_model = 32
  c.model.t5.d_kv = 8
  c.model.t5.d_ff = 64
  c.model.t5.num_layers = 1
  c.model.t5.num_decoder_layers = 1
  c.text.max_input_len = 40
  c.text.max_target_len = 16
  c.train.num_steps = 16
  c.train.batch_size = 8
  c.train.log_every = 4
  c.train.checkpoint_every = 8
  c.train.progress = False
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 2
  c.eval.max_examples = 8
  c.eval.batch_size = 8
  c.eval.meteor = "false"
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth"))
  synthetic.render_dataset(root, 40, 0, min_seconds=1.0, max_seconds=2.0,
                           sizes=((48, 32), (64, 48)), fps_choices=(8,),
                           backgrounds=("plain",), max_distractors=0)  # as the synthetic config
  return root


@pytest.mark.slow
def test_train_evaluate_restore_caption(data_root, tmp_path, capsys):
  from t5video.train import trainer
  config = _base_config(data_root)
  workdir = str(tmp_path / "run")
  cli.save_run_config(config, workdir)
  result = trainer.train(config, workdir)
  assert result["step"] == 16
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 4 and np.isfinite(losses).all()
  assert losses[-1] < losses[0], losses
  ev = json.load(open(os.path.join(workdir, "eval_metrics.json")))
  for key in ("CIDEr", "BLEU-4", "ROUGE-L", "top1", "macro_f1", "tags_micro_f1",
              "baseline_caption_CIDEr", "baseline_prior_top1"):
    assert key in ev and np.isfinite(ev[key]), key
  samples = [json.loads(l) for l in open(os.path.join(workdir, "samples_step16.jsonl"))]
  assert samples and all(isinstance(s["caption"], str) for s in samples)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "16"))

  # The restored params equal the trained ones: evaluation reproduces the metrics.
  task, params = cli.restore_task(cli.load_run_config(workdir), workdir)
  metrics, _ = task.run_eval(params, task.eval_records())
  assert abs(metrics["CIDEr"] - ev["CIDEr"]) < 1e-9
  assert abs(metrics["top1"] - ev["top1"]) < 1e-9
  # Rank classification is also reported with each class name's score divided by its length.
  from t5video.evaluate import classification
  labelled = [r for r in task.eval_rows(params, task.eval_records()) if "label" in r]
  lengths = task.class_name_lengths()
  assert lengths.shape == (len(task.class_names),) and (lengths >= 2).all()  # a word and EOS at least
  preds, _ = classification.rank_classification(np.stack([r["_class_scores"] for r in labelled]), lengths,
                                                 length_normalize=True)
  assert metrics["length_normalised_top1"] == pytest.approx(
      np.mean([task.class_names[p] == r["label"] for p, r in zip(preds, labelled)]))
  assert "length_normalised_tail_mean_recall" in metrics and "length_normalised_top1" in ev

  # `t5video caption` prints text for the user's files, and names a bad one.
  videos = sorted(os.listdir(os.path.join(data_root, "videos")))[:2]
  paths = [os.path.join(data_root, "videos", v) for v in videos]
  bad = str(tmp_path / "broken.mp4")
  open(bad, "wb").write(b"\x00not a video")
  capsys.readouterr()
  rc = cli.main(["caption", "--workdir", workdir] + paths + [bad])
  out = capsys.readouterr().out
  assert rc == 1  # one file could not be decoded
  assert out.count("caption:") == 2 and "class:" in out and "tags:" in out
  assert f"{bad}: could not decode (corrupt)" in out

  # `t5video eval --robustness` writes the frame-drop / noise curves; `t5video report` the PNGs.
  assert cli.main(["eval", "--workdir", workdir, "--robustness"]) == 0
  curves = json.load(open(os.path.join(workdir, "robustness.json")))
  assert [r["rate"] for r in curves["drop"]] == [0.0, 0.25, 0.5, 0.75]
  assert [r["std"] for r in curves["noise"]] == [0.0, 10.0, 25.0, 50.0]
  assert abs(curves["drop"][0]["CIDEr"] - ev["CIDEr"]) < 1e-9  # level 0 = the clean evaluation
  assert os.path.isfile(os.path.join(workdir, "robustness.png"))
  capsys.readouterr()
  assert cli.main(["report", "--workdir", workdir]) == 0
  for name in ("report_curves.png", "report_classes.png", "report_samples.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000, name


@pytest.mark.slow
def test_train_on_cached_features(data_root, tmp_path):
  """Features extracted once by a frozen CLIP tower replace pixels in training and eval."""
  import flax.linen as nn
  from t5video.data import decode, features
  from t5video.models import clip as clip_lib
  from t5video.recipes import captiont5
  from t5video.train import trainer
  vcfg = clip_lib.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, image_size=32, patch_size=16)
  tower = clip_lib.CLIPVisionModel(vcfg, with_projection=False)
  tparams = nn.unbox(tower.init(jax.random.PRNGKey(0), np.zeros((1, 2, 32, 32, 3), np.float32)))["params"]
  config = _base_config(data_root)
  feats = str(tmp_path / "features")
  for split in ("train", "test"):
    recs = captiont5.read_split(config.data, data_root, split)
    features.extract_features(recs, tower, tparams, spec=decode.SamplingSpec(num_frames=4, size=32),
                              out_dir=os.path.join(feats, split), layers=("pooled",),
                              preprocess=clip_lib.clip_preprocess, batch_size=8)
  config = _base_config(data_root, **{"data.features_dir": feats, "train.num_steps": 8,
                                      "train.checkpoint_every": 8})
  workdir = str(tmp_path / "run")
  result = trainer.train(config, workdir)
  assert result["step"] == 8 and np.isfinite(result["loss"])
  task = captiont5.CaptionT5Task(config)
  assert task.model_config.vision is None and task.model_config.feature_dim == 32
  assert "features" in task.batch_spec() and "frames" not in task.batch_spec()
  ev = json.load(open(os.path.join(workdir, "eval_metrics.json")))
  assert np.isfinite(ev["CIDEr"]) and ev["num_examples"] > 0


def test_peft_method_sets_trainable_regex(data_root, tmp_path):
  from t5video.models import peft
  from t5video.recipes import captiont5
  config = _base_config(data_root, **{"peft.method": "lora"})
  before = config.to_dict()
  task = captiont5.CaptionT5Task(config)
  # Building the Task changes nothing in the config (pure construction) ...
  assert config.to_dict() == before and config.optim.trainable == ""
  want = peft.trainable_regex("lora", last_n=config.peft.last_n, num_layers=1, num_decoder_layers=1)
  assert task.trainable() == want
  assert task.model_config.lora is not None and task.model_config.t5.lora is not None
  # ... prepare writes the derived set into the config that is saved and trains.
  prepared = captiont5.CaptionT5Task.prepare(config, str(tmp_path / "run"))
  assert prepared.optim.trainable == want and config.optim.trainable == ""
  # An explicit optim.trainable wins over the PEFT default.
  config = _base_config(data_root, **{"peft.method": "lora", "optim.trainable": "^t5/"})
  assert captiont5.CaptionT5Task(config).trainable() == "^t5/"


def test_bad_config_values_are_named(data_root):
  from t5video.recipes import captiont5
  config = _base_config(data_root, **{"model.t5_init": "/nonexistent/flan-t5-base"})
  with pytest.raises(FileNotFoundError, match="config.model.t5_init"):
    captiont5.CaptionT5Task(config)
  config = _base_config(data_root, **{"data.layout": "msrvtt", "data.root": ""})
  with pytest.raises(ValueError, match="config.data.root is empty"):
    captiont5.CaptionT5Task(config)
  config = _base_config(data_root, **{"thoughts.sources": ("metadata", "dreams")})
  with pytest.raises(ValueError, match="unknown thought sources"):
    captiont5.CaptionT5Task(config)


@pytest.mark.slow
@pytest.mark.long  # two CLIP folds and a CaptionT5 run, about 2 minutes on 2 cores
def test_clip_stage_concepts_and_reranking(data_root, tmp_path):
  """A cross-fitted ViFi-CLIP stage (2 folds) trains first in <workdir>/vificlip_fold*; the
  CLIP that never saw a training clip picks its concept thoughts, and sampled captions are
  re-ranked by log-prob + weight x cos(video, caption)."""
  from t5video.data.records import fold_of
  from t5video.recipes import vificlip
  config = _base_config(data_root, **{
      "thoughts.sources": ("concepts", "metadata"), "thoughts.top_k": 3,
      "thoughts.clip_stage.config": "configs/vificlip/synthetic.py:mean,tiny",
      "thoughts.clip_stage.num_steps": 6, "thoughts.clip_stage.folds": 2,
      "train.num_steps": 8, "train.checkpoint_every": 8,
      "eval.rerank.candidates": 4, "eval.rerank.source": "sample", "eval.rerank.weight": 2.0})
  config.thoughts.clip_stage.init_vision = True
  workdir = str(tmp_path / "run")
  from t5video.train import stages as stages_lib
  result = stages_lib.train(config, workdir)
  assert result["step"] == 8
  stages = [os.path.join(workdir, f"vificlip_fold{k}") for k in range(2)]
  # init_vision: CaptionT5's vision tower has the stage's sizes and starts from fold 0's weights.
  from t5video.train import task as task_lib
  fresh = task_lib.get_task("captiont5")(cli.load_run_config(workdir))
  fresh.workdir = workdir
  assert fresh.has_pretrained(fresh.config.init_from) and fresh.vision_init_dir() == stages[0]
  assert fresh.model_config.vision.patch_size == 8  # the tiny stage's, not model.clip's 16
  loaded = fresh.load_pretrained(jax.jit(lambda r: flax.linen.unbox(fresh.init_params(r)))(
      jax.random.PRNGKey(1)), fresh.config.init_from)
  _, stage_params = vificlip.restore(stages[0])
  for name in ("embeddings/patch_embedding/kernel", "encoder/layers_0/mlp/fc1/kernel", "post_layernorm/scale"):
    node_a, node_b = loaded["clip"]["vision_model"], stage_params["vision_model"]
    for key in name.split("/"):
      node_a, node_b = node_a[key], node_b[key]
    np.testing.assert_array_equal(np.asarray(node_a), np.asarray(node_b))
  for k, stage in enumerate(stages):
    assert json.load(open(os.path.join(stage, "final_metrics.json")))["step"] == 6
    stage_cfg = json.load(open(os.path.join(stage, "config.json")))
    assert stage_cfg["data"]["root"] == data_root and stage_cfg["data"]["novel_classes"] == []
    assert stage_cfg["data"]["holdout_fold"] == [k, 2]

  task, params = cli.restore_task(cli.load_run_config(workdir), workdir)
  vocab = task.concept_vocabulary()
  concepts = task.concepts()
  train_ids = {r.video_id for r in task.records[task.config.data.train_split]}
  assert set(concepts) == train_ids  # only the training clips are precomputed
  assert all(len(c) == 3 and set(c) <= set(vocab) for c in concepts.values())
  # Each fold's CLIP trained without that fold's clips and labels exactly them.
  scorers = [vificlip.ConceptScorer.from_workdir(s) for s in stages]
  for k, scorer in enumerate(scorers):
    seen = {r.video_id for r in scorer.task.train_records()}
    assert seen and all(fold_of(v, 2) != k for v in seen)
  train = task.records[task.config.data.train_split][:6]
  from t5video.data import decode
  spec = decode.SamplingSpec(num_frames=scorers[0].num_frames, size=scorers[0].image_size)  # as concepts()
  for r in train:
    frames = decode.decode_video(r.path, spec).frames[None]
    row = scorers[fold_of(r.video_id, 2)].scores(frames, vocab)[0]
    assert concepts[r.video_id] == [vocab[j] for j in np.argsort(-row, kind="stable")[:3]]

  samples = [json.loads(l) for l in open(os.path.join(workdir, "samples_step8.jsonl"))]
  assert samples
  batch = next(iter(task._eval_loader(task.eval_records(), 8)))
  sims = task.video_text_similarity(batch, [[s["caption"]] for s in samples[:1]])
  for s in samples:
    cands = s["candidates"]
    assert 1 <= len(cands) <= 4 and s["caption"] == cands[0]["caption"]
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    for c in cands:
      assert abs(c["score"] - (c["logprob"] + 2.0 * c["clip"])) < 1e-5
      assert -1.0 - 1e-5 <= c["clip"] <= 1.0 + 1e-5 and c["logprob"] <= 0.0
  # The similarity is the mean of the folds' CLIP cosines for the same frames.
  assert batch["video_id"][0] == samples[0]["video_id"]
  expected = np.mean([s.scores(s.fit_frames(np.asarray(batch["frames"][:1])), [samples[0]["caption"]])[0, 0]
                      for s in scorers])
  assert abs(float(sims[0][0]) - float(expected)) < 1e-5
  # Each sample row keeps the concept thought its clip's frames got.
  assert all(len(s["concepts"]) == 3 and set(s["concepts"]) <= set(vocab) for s in samples)
  assert task.batch_concepts(batch)[0] == samples[0]["concepts"]
  # A user's file (an id the dataset does not have) gets concepts from its frames.
  user = dict(batch, video_id=["user-file:0:x.mp4"] + list(batch["video_id"][1:]))
  got = task.batch_concepts(user)[0]
  assert len(got) == 3 and set(got) <= set(vocab)
  # So does an evaluation clip: every fold's CLIP on the batch's frames, similarities averaged.
  sims_eval = np.mean([s.scores(s.fit_frames(np.asarray(batch["frames"])), vocab) for s in scorers], axis=0)
  assert task.batch_concepts(batch)[1] == [vocab[j] for j in np.argsort(-sims_eval[1], kind="stable")[:3]]

  # Beam candidates: weight 0 keeps the model's own order (best beam first).
  hidden, mask = task._jitted["encode"](
      params, {"frames": np.asarray(batch["frames"])}, jax.numpy.asarray(batch["frame_mask"], jax.numpy.int32),
      *map(jax.numpy.asarray, task._encoder_inputs(batch, "caption")))
  beams = task.caption_candidates(params, hidden, mask, source="beam", num=3)
  task.config.eval.rerank.weight = 0.0
  ranked = task.ranked_candidates(batch, beams)
  assert [d["caption"] for d in ranked[0]] == [c for c, _ in beams[0]]
  # Sampling is seeded: the same seed gives the same candidates, pseudo-labels included.
  a = task.caption_candidates(params, hidden, mask, source="sample", num=5, seed=3)
  b = task.caption_candidates(params, hidden, mask, source="sample", num=5, seed=3)
  assert a == b


@pytest.mark.slow
def test_hf_towers_are_loaded_when_training_starts(data_root, tmp_path):
  """``model.clip_init`` / ``model.t5_init`` (HF directories) are what a fresh run starts
  from: with a zero learning rate the first checkpoint holds the converted HF weights."""
  import torch
  import transformers
  from tests import tiny_hf
  from t5video.data import tokenizer as tokenizer_lib
  from t5video.models import hf
  from t5video.recipes import captiont5
  from t5video.train import trainer
  torch.manual_seed(0)
  clip_dir, t5_dir = str(tmp_path / "clip"), str(tmp_path / "t5")
  transformers.CLIPModel(tiny_hf.clip_config()).eval().save_pretrained(clip_dir)
  transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
      feed_forward_proj="gated-gelu")).eval().save_pretrained(t5_dir)  # tied (transformers 5 keeps them so)
  spm = str(tmp_path / "spiece.model")
  config = _base_config(data_root)
  texts = [c for r in captiont5.read_split(config.data, data_root, "train") for c in r.captions]
  tokenizer_lib.train_sentencepiece(texts + ["caption:", "classify:", "tags:"], spm, 200)
  config = _base_config(data_root, **{
      "model.clip_init": clip_dir, "model.t5_init": t5_dir, "text.tokenizer": spm,
      "optim.param_groups": ((".*", 0.0),), "train.num_steps": 1,
      "train.checkpoint_every": 1, "eval.max_examples": 2, "eval.refine": False})
  workdir = str(tmp_path / "run")
  cli.save_run_config(config, workdir)
  trainer.train(config, workdir)
  task, params = cli.restore_task(cli.load_run_config(workdir), workdir)
  assert task.model_config.vision.patch_size == 8 and task.model_config.t5.d_model == 32
  _, clip_params = hf.load_hf(clip_dir)
  _, t5_params = hf.load_hf(t5_dir)
  np.testing.assert_allclose(params["clip"]["vision_model"]["embeddings"]["patch_embedding"]["kernel"],
                             clip_params["vision_model"]["embeddings"]["patch_embedding"]["kernel"])
  np.testing.assert_allclose(params["t5"]["shared"]["embedding"], t5_params["shared"]["embedding"])


def test_synthetic_cache_is_rendered_again_when_its_settings_change(tmp_path):
  import ml_collections
  from t5video.recipes import captiont5
  data = ml_collections.ConfigDict(dict(
      layout="synthetic", root=str(tmp_path / "synth"), num_videos=6, synthetic_seed=0,
      synthetic_backgrounds=("plain",), synthetic_max_distractors=0))
  done = os.path.join(captiont5.prepare_data(data), "DONE")
  first = json.load(open(done))["config"]
  assert first["backgrounds"] == ["plain"] and first["max_distractors"] == 0
  stamp = os.path.getmtime(done)
  captiont5.prepare_data(data)  # the same settings: used as it is
  assert os.path.getmtime(done) == stamp
  data.synthetic_backgrounds, data.synthetic_max_distractors = (), 2  # the full renderer's scenes
  captiont5.prepare_data(data)
  again = json.load(open(done))["config"]
  assert "backgrounds" not in again and "max_distractors" not in again


def test_clip_stage_trains_on_the_same_fraction_of_clips(data_root, tmp_path):
  """With data.train_fraction the ViFi-CLIP stage sees exactly CaptionT5's seeded subset."""
  from t5video.recipes import captiont5
  from t5video.recipes import vificlip
  config = _base_config(data_root, **{"data.train_fraction": 0.5,
                                      "thoughts.clip_stage.config": "configs/vificlip/synthetic.py:mean,tiny"})
  task = captiont5.CaptionT5Task(config)
  task.workdir = str(tmp_path / "run")
  stage = task.clip_stage_config()
  stage.model.tokenizer = str(tmp_path / "spiece.model")
  seen = [r.video_id for r in vificlip.ViFiCLIPTask(stage).train_records()]
  subset = captiont5.fraction_subset(task.records["train"], 0.5, config.seed)
  assert seen == [r.video_id for r in subset] and 0 < len(seen) < len(task.records["train"])
  # The stage samples its clips as thoughts.clip_stage.balance says, not as data.balance.
  assert stage.data.balance == ""
  task.config.data.balance = "class_balanced"
  assert task.clip_stage_config().data.balance == ""
  task.config.thoughts.clip_stage.balance = "oversample"
  assert task.clip_stage_config().data.balance == "oversample"
  # Its frames per clip: the stage config's own, unless thoughts.clip_stage.num_frames says.
  assert task.clip_stage_config().data.num_frames == 4  # ':tiny'
  task.config.thoughts.clip_stage.num_frames = 2
  assert task.clip_stage_config().data.num_frames == 2


def test_concept_vocabulary_file_or_caption_words(data_root, tmp_path):
  from t5video.recipes import captiont5
  task = captiont5.CaptionT5Task(_base_config(data_root))
  assert task.concept_vocabulary() == open(os.path.join(data_root, "concepts.txt")).read().split("\n")[:-1]
  task.root = str(tmp_path)  # a dataset without concepts.txt: the captions' frequent content words
  vocab = task.concept_vocabulary()
  assert 0 < len(vocab) <= task.config.thoughts.vocab_size
  assert "the" not in vocab and "and" not in vocab and "background" in vocab
  task.config.thoughts.concepts_file = str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="thoughts.concepts_file"):
    task.concept_vocabulary()


@pytest.mark.slow
def test_refine_drafts_and_caption_need_only_the_workdir(data_root, tmp_path, capsys):
  """Self-refinement's training drafts come from an earlier checkpoint (stages draft_model and
  drafts), never from the references; and a prepared run keeps its tokenizer and class list in
  its workdir: `t5video caption` works after the dataset folder is deleted. (One run for both:
  each CaptionT5 compile costs CI time.)"""
  import shutil
  from t5video.recipes.captiont5 import drafts as drafts_lib
  from t5video.train import stages
  root = str(tmp_path / "dataset")
  shutil.copytree(data_root, root)
  config = _base_config(root, **{"train.num_steps": 4, "train.checkpoint_every": 4, "eval.max_examples": 2,
                                 "thoughts.sources": ("metadata", "subtitle", "draft"), "eval.refine": True,
                                 "thoughts.drafts.num_steps": 2, "thoughts.dropout": 0.0,
                                 "thoughts.drop_all": 0.0})
  workdir = str(tmp_path / "run")
  stages.train(config, workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert [s["name"] for s in saved["stages"]] == ["draft_model", "drafts"]
  model_cfg = json.load(open(os.path.join(workdir, "draft_model", "config.json")))
  assert "draft" not in model_cfg["thoughts"]["sources"] and model_cfg["train"]["num_steps"] == 2
  assert json.load(open(os.path.join(workdir, "draft_model", "final_metrics.json")))["step"] == 2
  drafts = drafts_lib.read(saved["thoughts"]["drafts"]["file"])
  from t5video.data import thoughts as thoughts_lib
  from t5video.recipes.captiont5.task import CaptionT5Task
  task = CaptionT5Task(cli.load_run_config(workdir))
  assert set(drafts) == {r.video_id for r in task.records["train"]}
  # The training input's draft is the draft model's caption of that clip, whatever the references say.
  rec = next((r for r in task.records["train"] if drafts[r.video_id]), task.records["train"][0])
  transform = task._text_transform(seed=0)  # pylint: disable=protected-access
  expected = task.tokenizer.encode_batch([thoughts_lib.encoder_text("caption", thoughts_lib.build_thoughts(
      rec.metadata, rec.subtitle, task.thought_cfg, draft=drafts[rec.video_id], rng=None))],
      task.config.text.max_input_len)[0][0]
  drawn = 0
  for position in range(12):
    ex = transform({"video_id": rec.video_id, "captions": rec.captions, "label": rec.label, "tags": rec.tags,
                    "metadata": rec.metadata, "subtitle": rec.subtitle, "frames": np.zeros((4, 32, 32, 3), np.uint8),
                    "frame_mask": np.ones(4, bool), "valid": True, "index": 0, "epoch": 0, "position": position,
                    "failure": "", "path": rec.path})
    if int(ex["task_id"]) == 0:  # the caption task
      np.testing.assert_array_equal(ex["input_ids"], expected)
      drawn += 1
  assert drawn
  assert saved["text"]["tokenizer"] == os.path.join(workdir, "assets", "spiece.model")
  assert saved["data"]["class_names"] and os.path.isfile(saved["text"]["tokenizer"])
  videos = str(tmp_path / "videos")
  os.makedirs(videos)
  for name in sorted(os.listdir(os.path.join(root, "videos")))[:2]:
    shutil.copy(os.path.join(root, "videos", name), videos)
  shutil.rmtree(root)
  capsys.readouterr()
  files = [os.path.join(videos, v) for v in sorted(os.listdir(videos))]
  assert cli.main(["caption", "--workdir", workdir] + files) == 0
  out = capsys.readouterr().out
  assert out.count("caption:") == 2 and out.count("class:") == 2
  classes = [line.split("class:", 1)[1].strip() for line in out.splitlines() if "class:" in line]
  assert all(c in saved["data"]["class_names"] for c in classes)


@pytest.mark.slow
def test_grid_tokens_and_video_token_start_from_the_ordered_stage(data_root, tmp_path):
  """After an ordered ViFi-CLIP stage: with visual_tokens='grid' CaptionT5's grid norm and temporal
  module are the stage's read-out, so its frame tokens equal the read-out's for the same pixels; with
  video_token='ordered' its last visual token reads the stage's (normalised) video embedding."""
  from t5video.models import captiont5 as captiont5_model
  from t5video.models import peft
  from t5video.models import temporal as temporal_lib
  from t5video.models import vificlip as vifi_model
  from t5video.recipes import vificlip
  from t5video.train import stages as stages_lib
  from t5video.train import task as task_lib
  config = _base_config(data_root, **{
      "thoughts.clip_stage.config": "configs/vificlip/synthetic.py:ordered,tiny",
      "thoughts.clip_stage.num_steps": 3, "train.num_steps": 1, "train.checkpoint_every": 1,
      "eval.max_examples": 2, "eval.controls": (), "model.visual_tokens": "grid",
      "model.video_token": "ordered",
      # the tiny stage: 32 wide (1 read-out head), 4 frames, a 4x4 patch grid
      "model.temporal": dict(kind="transformer", num_layers=1, num_heads=1, frame_tokens="flatten",
                             max_frames=4)})
  config.thoughts.clip_stage.init_vision = True
  workdir = str(tmp_path / "run")
  stages_lib.train(config, workdir)
  fresh = task_lib.get_task("captiont5")(cli.load_run_config(workdir))
  fresh.workdir = workdir
  stage = fresh.vision_init_dir()
  loaded = fresh.load_pretrained(jax.jit(lambda r: flax.linen.unbox(fresh.init_params(r)))(
      jax.random.PRNGKey(1)), fresh.config.init_from)
  stage_task, stage_params = vificlip.restore(stage)
  assert "ordered" in stage_params
  got, want = dict(peft.path_strings(loaded["temporal"])), dict(
      peft.path_strings(stage_params["ordered"]["temporal"]))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
  rng = np.random.RandomState(0)
  px = rng.normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
  mask = np.ones((2, 4), np.int32)

  # the stage's frame tokens before its order_projection
  _, patches = stage_task.model.apply({"params": stage_params}, px, True, True,
                                      method=lambda mdl, *a: mdl.vision_model(*a))  # [2, 4, 4, 4, 32]
  readout = temporal_lib.TemporalModule(temporal_lib.TemporalConfig(
      kind="transformer", frame_tokens="flatten", num_layers=1,
      num_heads=vifi_model.ordered_readout_heads(patches.shape[-1]), max_frames=4))
  want_tokens, _ = readout.apply({"params": stage_params["ordered"]["temporal"]},
                                 temporal_lib.pool_patch_grid(patches, 4), mask)
  _, state = fresh.model.apply({"params": loaded}, px, frame_mask=mask, method=captiont5_model.CaptionT5.visual_tokens,
                               capture_intermediates=lambda mdl, name: mdl.name == "temporal" and name == "__call__",
                               mutable=["intermediates"])
  got_tokens = state["intermediates"]["temporal"]["__call__"][0][0]
  assert got_tokens.shape == (2, 4, 32)
  np.testing.assert_allclose(np.asarray(got_tokens), np.asarray(want_tokens), atol=2e-5)
  # the video token: the stage's video embedding (mean of projected frames + ordered read-out)
  want_video, _ = stage_task.model.apply({"params": stage_params}, px, mask, method=vifi_model.ViFiCLIP.encode_video)
  want_video = np.asarray(want_video) / np.linalg.norm(np.asarray(want_video), axis=-1, keepdims=True)
  _, state = fresh.model.apply({"params": loaded}, px, frame_mask=mask, method=captiont5_model.CaptionT5.visual_tokens,
                               capture_intermediates=lambda mdl, name: name == "video_embedding",
                               mutable=["intermediates"])
  got_video = np.asarray(state["intermediates"]["video_embedding"][0])
  np.testing.assert_allclose(got_video, want_video, atol=2e-5)
  assert np.abs(np.asarray(stage_params["ordered"]["order_projection"]["kernel"])).max() > 0  # trained
  # the grid tokens and the read-out share one pooled grid, whose size the read-out's weights fix
  mismatched = cli.load_run_config(workdir)
  mismatched.model.grid_cells = 2
  with pytest.raises(ValueError, match="model.grid_cells=2"):
    task_lib.get_task("captiont5")(mismatched).init_params(jax.random.PRNGKey(0))
  # the demo default freezes exactly stage 0's weights inside CaptionT5 (a renamed param would
  # silently train the encoder, which collapsed to the prior: docs/results.md)
  from t5video.train import optim as optim_lib
  demo = cli.load_config_file(os.path.join(ROOT, "configs", "captiont5", "synthetic.py"))
  assert demo.model.video_token == "ordered" and demo.optim.freeze
  labels = dict(peft.path_strings(optim_lib.param_labels(
      loaded, optim_lib.OptimConfig.from_config(demo.optim))))
  frozen = {k.split("/")[0] for k, v in labels.items() if v == optim_lib.FROZEN}
  assert frozen == {"clip", "ordered", "video_projection", "grid_norm"}, frozen
  assert labels["video_token_projection/kernel"] != optim_lib.FROZEN
