"""ViFi-CLIP: model shapes and pooling, losses against numpy, prompts, training, concept scorer."""

from __future__ import annotations

import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests import tiny_hf

from t5video import cli
from t5video.models import clip as clip_lib
from t5video.models import temporal as temporal_lib
from t5video.models import vificlip as vifi
from t5video.train import optim as optim_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = np.array([[97, 5, 6, 98, 1, 1], [97, 7, 98, 1, 1, 1], [97, 7, 8, 9, 98, 1]], np.int32)


def _init(temporal="mean", prompts=vifi.PromptSpec(), frames=4, seed=0):
  cfg = vifi.ViFiCLIPConfig.from_variant("tiny", temporal=temporal, num_frames=frames, prompts=prompts)
  model = vifi.ViFiCLIP(cfg)
  px = jnp.zeros((2, frames, 32, 32, 3))
  init = jax.jit(lambda rng: model.init(rng, px, IDS, (IDS != 1).astype(np.int32))["params"])
  params = nn.unbox(init(jax.random.PRNGKey(seed)))
  return model, params


def _pixels(seed=0, frames=4, batch=2):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, frames, 32, 32, 3))


def _load_config(arg):
  return cli.load_config_file(os.path.join(REPO, f"configs/vificlip/synthetic.py:{arg}"))


@pytest.mark.parametrize("temporal", vifi.TEMPORAL_MODES)
def test_shapes_and_normalisation(temporal):
  model, params = _init(temporal)
  mask = (IDS != 1).astype(np.int32)
  out = model.apply({"params": params}, _pixels(), IDS, mask)
  assert out.logits_per_video.shape == (2, 3)
  assert out.video_embeds.shape == (2, 16) and out.text_embeds.shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(out.video_embeds, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out.text_embeds, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out.logit_scale, np.exp(2.6592), rtol=1e-5)
  np.testing.assert_allclose(out.logits_per_video, out.logit_scale * out.video_embeds @ out.text_embeds.T,
                             rtol=1e-5, atol=1e-5)
  expected_frames = {"mean": (2, 4, 16), "single": (2, 1, 16), "spacetime": None,
                     "ordered": (2, 4, 16)}[temporal]
  assert (None if out.frame_embeds is None else out.frame_embeds.shape) == expected_frames


def test_mean_pooling_equals_clip_per_frame():
  """Params are named like HF CLIPModel's: the same tree runs in clip.CLIPModel."""
  model, params = _init("mean")
  cfg = model.config
  clip_model = clip_lib.CLIPModel(cfg.vision, cfg.text, projection_dim=cfg.projection_dim)
  px = _pixels(1)
  frames = clip_model.apply({"params": params}, px, method=clip_lib.CLIPModel.get_image_features)  # [2, 4, P]
  text = clip_model.apply({"params": params}, IDS, (IDS != 1).astype(np.int32),
                          method=clip_lib.CLIPModel.get_text_features)
  video, per_frame = model.apply({"params": params}, px, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(per_frame, frames, atol=1e-5)
  np.testing.assert_allclose(video, np.mean(np.asarray(frames), axis=1), atol=1e-5)
  ours = model.apply({"params": params}, IDS, (IDS != 1).astype(np.int32), method=vifi.ViFiCLIP.encode_text)
  np.testing.assert_allclose(ours, text, atol=1e-5)
  # frame_mask: a masked frame does not enter the mean.
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  masked, _ = model.apply({"params": params}, px, mask, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(masked[0], np.mean(np.asarray(frames)[0, :2], axis=0), atol=1e-5)


@pytest.mark.long  # order sensitivity of space-time is also checked in test_temporal.py
def test_temporal_modes_differ():
  model_mean, params = _init("mean")
  model_single, _ = _init("single")
  px = _pixels(2)
  mean, _ = model_mean.apply({"params": params}, px, method=vifi.ViFiCLIP.encode_video)
  single, _ = model_single.apply({"params": params}, px, method=vifi.ViFiCLIP.encode_video)
  assert np.max(np.abs(np.asarray(mean) - np.asarray(single))) > 1e-3
  # single = the middle frame (index T // 2) only; the other frames do not matter.
  px2 = px.at[:, 0].set(0.0).at[:, 3].set(1.0)
  single2, _ = model_single.apply({"params": params}, px2, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(single, single2, atol=1e-6)
  _, frames = model_mean.apply({"params": params}, px, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(single, frames[:, 2], atol=1e-5)
  # mean pooling ignores frame order; space-time with a temporal embedding does not.
  reverse = px[:, ::-1]
  mean_rev, _ = model_mean.apply({"params": params}, reverse, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(mean, mean_rev, atol=1e-5)
  model_st, params_st = _init("spacetime")
  params_st = flax.core.unfreeze(params_st)
  params_st["vision_model"]["temporal_embedding"] = jax.random.normal(jax.random.PRNGKey(3), (4, 32))
  st, _ = model_st.apply({"params": params_st}, px, method=vifi.ViFiCLIP.encode_video)
  st_rev, _ = model_st.apply({"params": params_st}, reverse, method=vifi.ViFiCLIP.encode_video)
  assert np.max(np.abs(np.asarray(st) - np.asarray(st_rev))) > 1e-4


def test_ordered_starts_as_the_mean_and_then_sees_order():
  """'ordered' = the mean + a zero-initialised ordered read-out: equal to 'mean' at init (so a
  pretrained CLIP starts where ViFi-CLIP does), not invariant to reversing the frames after."""
  model_mean, params_mean = _init("mean")
  model_ord, params_ord = _init("ordered")
  params_ord = flax.core.unfreeze(params_ord)
  assert set(params_ord) - set(params_mean) == {"ordered"}
  for name in params_mean:            # the shared towers, as a converter would merge them
    params_ord[name] = params_mean[name]
  px = _pixels(4)
  mean, _ = model_mean.apply({"params": params_mean}, px, method=vifi.ViFiCLIP.encode_video)
  ordered, frames = model_ord.apply({"params": params_ord}, px, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(ordered, mean, atol=1e-6)
  assert frames.shape == (2, 4, 16)
  kernel = params_ord["ordered"]["order_projection"]["kernel"]
  assert not np.any(np.asarray(kernel))
  params_ord["ordered"]["order_projection"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
  fwd, _ = model_ord.apply({"params": params_ord}, px, method=vifi.ViFiCLIP.encode_video)
  rev, _ = model_ord.apply({"params": params_ord}, px[:, ::-1], method=vifi.ViFiCLIP.encode_video)
  assert np.max(np.abs(np.asarray(fwd) - np.asarray(rev))) > 1e-3
  with pytest.raises(ValueError, match="num_frames=4, got 3 frames"):
    model_ord.apply({"params": params_ord}, px[:, :3], method=vifi.ViFiCLIP.encode_video)
  # a padded frame's pixels do not matter
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  a, _ = model_ord.apply({"params": params_ord}, px, mask, method=vifi.ViFiCLIP.encode_video)
  b, _ = model_ord.apply({"params": params_ord}, px.at[0, 3].set(5.0), mask, method=vifi.ViFiCLIP.encode_video)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_ordered_pools_a_patch_grid_unevenly():
  """Adaptive average pooling: a 4x4 grid to 3x3 cells (bins [0,2), [1,3), [2,4)), as torch's."""
  m = temporal_lib.adaptive_pool_matrix(4, 3)
  np.testing.assert_allclose(m, [[.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5]])
  np.testing.assert_allclose(temporal_lib.adaptive_pool_matrix(14, 4).sum(axis=1), 1.0)
  assert temporal_lib.adaptive_pool_matrix(2, 4).shape == (2, 2)
  cfg = vifi.ViFiCLIPConfig.from_variant("tiny", temporal="ordered", num_frames=4, order_grid=3)
  model = vifi.ViFiCLIP(cfg)
  px = _pixels(5)
  params = model.init(jax.random.PRNGKey(0), px, IDS, (IDS != 1).astype(np.int32))["params"]
  kernel = nn.unbox(params["ordered"]["temporal"]["frame_flatten"]["kernel"])
  assert kernel.shape[0] == 9 * cfg.vision.hidden_size   # 3x3 cells a frame


def _np_log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_info_nce_equals_numpy():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(5, 8)).astype(np.float32)
  t = rng.normal(size=(5, 8)).astype(np.float32)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  scale = 14.3
  loss, logits = vifi.info_nce(jnp.asarray(v), jnp.asarray(t), jnp.float32(scale))
  sim = scale * v @ t.T
  v2t = -np.mean([_np_log_softmax(sim[i])[i] for i in range(5)])
  t2v = -np.mean([_np_log_softmax(sim[:, i])[i] for i in range(5)])
  np.testing.assert_allclose(logits, sim, rtol=1e-5)
  np.testing.assert_allclose(float(loss), (v2t + t2v) / 2, rtol=1e-5)


def test_class_prompt_cross_entropy_with_smoothing():
  rng = np.random.default_rng(1)
  v = rng.normal(size=(4, 6)).astype(np.float32)
  c = rng.normal(size=(3, 6)).astype(np.float32)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  labels = np.array([0, 2, 1, 2])
  scale, eps = 10.0, 0.1
  loss, logits = vifi.class_prompt_loss(jnp.asarray(v), jnp.asarray(c), jnp.float32(scale),
                                        jnp.asarray(labels), smoothing=eps)
  logp = _np_log_softmax(scale * v @ c.T)
  target = np.full((4, 3), eps / 3)
  target[np.arange(4), labels] += 1 - eps
  np.testing.assert_allclose(float(loss), -np.mean(np.sum(target * logp, axis=1)), rtol=1e-5)
  plain, _ = vifi.class_prompt_loss(jnp.asarray(v), jnp.asarray(c), jnp.float32(scale), jnp.asarray(labels))
  np.testing.assert_allclose(float(plain), -np.mean(logp[np.arange(4), labels]), rtol=1e-5)


def test_prompts_change_outputs_and_only_prompts_train():
  prompts = vifi.PromptSpec(vision_tokens=3, text_tokens=2, vision_depth=2, text_depth=2, init_std=0.5)
  model, params = _init("mean", prompts)
  plain_model, _ = _init("mean")
  plain_params = {k: v for k, v in params.items()}
  plain_params["vision_model"] = {k: v for k, v in params["vision_model"].items() if k != "prompts"}
  plain_params["text_model"] = {k: v for k, v in params["text_model"].items() if k != "prompts"}
  px, mask = _pixels(4), (IDS != 1).astype(np.int32)
  with_p = jax.jit(model.apply)({"params": params}, px, IDS, mask)
  without = jax.jit(plain_model.apply)({"params": plain_params}, px, IDS, mask)
  assert np.max(np.abs(np.asarray(with_p.video_embeds - without.video_embeds))) > 1e-3
  assert np.max(np.abs(np.asarray(with_p.text_embeds - without.text_embeds))) > 1e-3

  def loss_fn(p):
    out = model.apply({"params": p}, px, IDS[:2], mask[:2])
    loss, _ = vifi.info_nce(out.video_embeds, out.text_embeds, out.logit_scale)
    return loss

  grads = jax.jit(jax.grad(loss_fn))(params)
  assert float(jnp.abs(grads["vision_model"]["prompts"]).sum()) > 0
  assert float(jnp.abs(grads["text_model"]["prompts"]).sum()) > 0
  cfg = optim_lib.OptimConfig(learning_rate=1e-2, schedule="constant", trainable=r"(^|/)prompts$")
  tx, labels, _ = optim_lib.make_optimizer(params, cfg, num_steps=10)
  new = jax.jit(lambda g, p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(grads, params)
  flat_old = flax.traverse_util.flatten_dict(params, sep="/")
  flat_new = flax.traverse_util.flatten_dict(new, sep="/")
  for name, old in flat_old.items():
    changed = bool(np.any(np.asarray(flat_new[name]) != np.asarray(old)))
    assert changed == name.endswith("/prompts"), name


# -----------------------------------------------------------------------------
# Training on rendered synthetic videos, held-out classes, concept scorer
# -----------------------------------------------------------------------------

COLOURS = {"red": (220, 35, 35), "green": (35, 185, 60), "blue": (40, 80, 235), "yellow": (240, 215, 30)}
# Held-out classes: their colour pairs are trained only in the other order
# ("green then red" ...), and no two of them share both colours.
NOVEL = ("red then green", "blue then yellow", "green then blue", "yellow then red")


def _write_colour_dataset(root: str, clips_per_base: int = 5, clips_per_novel: int = 4) -> None:
  """Clips whose first half is one colour and second half another, class "<a> then <b>".

  Written as H.264 mp4 files plus a generic-layout ``annotations.jsonl``, so
  the test goes through the real reader and decoder. Each clip gets noise, a
  random darker square and a random length, so no two are alike.
  """
  import json
  from t5video.data import synthetic
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  rows = []
  pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
  for a, b in pairs:
    name = f"{a} then {b}"
    for k in range(clips_per_novel if name in NOVEL else clips_per_base):
      t = int(rng.integers(8, 13))
      frames = np.zeros((t, 48, 64, 3), np.float32)
      frames[: t // 2] = COLOURS[a]
      frames[t // 2:] = COLOURS[b]
      y, x, side = int(rng.integers(0, 32)), int(rng.integers(0, 48)), int(rng.integers(8, 16))
      frames[:, y:y + side, x:x + side] *= 0.6
      frames += rng.normal(0, 12, frames.shape)
      vid = f"{a}_{b}_{k}"
      synthetic.write_mp4(os.path.join(root, "videos", vid + ".mp4"),
                          np.clip(frames, 0, 255).astype(np.uint8), fps=8)
      split = "test" if name in NOVEL or k == 0 else "train"
      rows.append({"video_id": vid, "path": f"videos/{vid}.mp4", "label": name, "split": split,
                   "captions": [f"the screen is {a} and then turns {b}", f"{a} first, {b} after"]})
  with open(os.path.join(root, "annotations.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny ViFi-CLIP trained 100 steps on 56 encoded clips; four classes held out."""
  from t5video.recipes import vificlip as recipe
  root = str(tmp_path_factory.mktemp("vifi_colours"))
  _write_colour_dataset(root)
  config = _load_config("mean,tiny")
  with config.unlocked():
    config.data.root = root
    config.data.synthetic = {}
    config.data.novel_classes = NOVEL
    config.model.tokenizer = os.path.join(root, "spiece.model")
    config.model.prompt_template = "a video that is {}."
    config.eval.protocols = ("closed", "zero_shot", "retrieval")
    config.eval.chunk = 5  # several decode chunks
  task = recipe.ViFiCLIPTask(config)
  records = task.train_records()
  assert not any(r.label in NOVEL for r in records)
  views, ok = task.predictor.decode_views(records)
  frames = views[:, 0]  # [N, T, S, S, 3]
  labels = np.array([task.class_index[r.label] for r in records], np.int32)
  ids, mask = task.tokenizer([r.captions[0] for r in records], task.text_len)
  params = nn.unbox(task.init_params(jax.random.PRNGKey(0)))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 100), b2=0.98, weight_decay=1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: task.loss_fn(p, batch, rng, train=True), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  losses = []
  for i in range(100):
    idx = rng.choice(len(records), 16, replace=False)
    batch = {"frames": frames[idx], "frame_mask": np.ones(frames.shape[:2], bool)[idx],
             "valid": ok[idx], "label_id": labels[idx], "caption_ids": ids[idx], "caption_mask": mask[idx]}
    params, opt_state, loss = step(params, opt_state, batch, jax.random.PRNGKey(i))
    losses.append(float(loss))
  return task, params, losses, root


@pytest.mark.slow
def test_training_beats_chance_on_held_out_classes(trained, tmp_path):
  task, params, losses, _ = trained
  assert np.isfinite(losses).all()
  assert np.mean(losses[-10:]) < np.mean(losses[:10])
  metrics = task.evaluate(params, step=80, workdir=str(tmp_path))
  saved = json.load(open(tmp_path / "eval_metrics.json"))  # what `t5video eval` leaves in the workdir
  assert saved["step"] == 80 and saved["split"] == task.config.eval.split
  assert saved["novel/top1"] == pytest.approx(metrics["novel/top1"])
  print("held-out metrics", metrics)
  chance = 100.0 / len(NOVEL)
  assert metrics["novel/count"] == 16
  assert metrics["novel/top1"] >= 2 * chance, metrics  # measured: 100% (16 clips)
  assert 0 < metrics["t2v/R@10"] <= 100


@pytest.mark.slow
@pytest.mark.long  # 1200 steps on 600 clips, about 5 minutes on 2 cores
def test_rendered_actions_held_out_classes_beat_chance(tmp_path):
  """The synthetic recipe through the real trainer, smaller: 600 rendered clips, 1200 steps.

  The four held-out action classes (grows, changes colour, moves down,
  disappears) occur in training only inside two-event classes; zero-shot
  accuracy over them must beat chance (25%). Measured: 38.4% on 151 clips
  (binomial s.d. at chance: 3.5 points).
  """
  from t5video.train import trainer
  config = _load_config("mean")
  root = str(tmp_path / "data")
  with config.unlocked():
    config.data.root = root
    config.model.tokenizer = os.path.join(root, "spiece.model")
    config.data.synthetic.num_videos = 600
    config.train.num_steps = 1200
    config.train.progress = False
    config.eval.protocols = ("zero_shot",)
  result = trainer.train(config, str(tmp_path / "run"))
  ev = result["eval"]
  print("held-out rendered actions", ev)
  assert ev["novel/count"] >= 140
  assert ev["novel/top1"] > 31.0, ev  # chance 25


@pytest.mark.slow
def test_concept_scorer_from_workdir(trained, tmp_path):
  from t5video.recipes import vificlip as recipe
  from t5video.train import checkpoint as checkpoint_lib
  task, params, _, _ = trained
  workdir = str(tmp_path / "run")
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(80, {"params": params, "step": np.int32(80)})
  ckpt.close()
  recipe.save_workdir_assets(task, workdir)
  scorer = recipe.ConceptScorer.from_workdir(workdir)
  concepts = ["grows", "shrinks", "red", "circle", "moves left", "spins"]
  frames = np.random.default_rng(0).integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
  top = scorer.top_concepts(frames, concepts, k=3)
  assert len(top) == 2 and all(len(t) == 3 and set(t) <= set(concepts) for t in top)
  emb = scorer.embed_videos(frames)
  assert top == scorer.top_concepts(emb, concepts, k=3)
  # The restored params score like the trained ones.
  np.testing.assert_allclose(emb, task.predictor.embed_frames(params, frames), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(scorer.embed_texts(concepts), axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_train_loader_and_zero_shot_cli(trained, tmp_path):
  """The Grain loader yields exactly batch_spec's keys; zero_shot() scores a user's files."""
  from t5video.recipes import vificlip as recipe
  from t5video.train import checkpoint as checkpoint_lib
  task, params, _, root = trained
  it = task.train_loader(seed=0, process_index=0, process_count=1, batch_size=4)
  batch = next(it)
  assert set(batch) == set(task.batch_spec())
  assert batch["frames"].shape == (4, 4, 32, 32, 3) and batch["frames"].dtype == np.uint8
  assert batch["caption_ids"].shape == (4, task.text_len)
  assert all(0 <= l < len(task.train_classes) for l in batch["label_id"])
  state = it.get_state()
  second = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["frames"], second["frames"])
  del it
  workdir = str(tmp_path / "run")
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(100, {"params": params, "step": np.int32(100)})
  ckpt.close()
  recipe.save_workdir_assets(task, workdir)
  videos = [os.path.join(root, "videos", "red_green_0.mp4"), os.path.join(root, "videos", "blue_yellow_1.mp4")]
  probs = recipe.zero_shot(workdir, list(NOVEL), videos)
  assert len(probs) == 2
  for p in probs:
    assert set(p) == set(NOVEL) and abs(sum(p.values()) - 1.0) < 1e-5
  assert max(probs[0], key=probs[0].get) == "red then green"
  assert max(probs[1], key=probs[1].get) == "blue then yellow"


def test_class_balanced_sampling_evens_out_a_long_tail(trained, monkeypatch):
  """data.balance='class_balanced': each batch row picks a class uniformly, then a clip of it."""
  import dataclasses
  from t5video.recipes import vificlip as recipe
  task0, _, _, _ = trained
  records = task0.train_records()
  head = records[0].label
  skewed = [r for r in records if r.label == head]
  skewed += [next(r for r in records if r.label == c) for c in task0.train_classes if c != head]
  share = {}
  for balance in ("", "class_balanced"):
    config = ml_collections.ConfigDict(task0.config.to_dict())
    config.data.balance = balance
    task = recipe.ViFiCLIPTask(config)
    monkeypatch.setattr(task, "train_records", lambda: skewed)
    it = task.train_loader(seed=0, process_index=0, process_count=1, batch_size=8)
    labels = np.concatenate([next(it)["label_id"] for _ in range(8)])
    share[balance] = float(np.mean(labels == task.class_index[head]))
  classes = len(task0.train_classes)
  assert share[""] == pytest.approx(len([r for r in skewed if r.label == head]) / len(skewed), abs=0.1)
  assert share["class_balanced"] < 1.0 / classes + 0.12 < share[""], (share, classes)
  # A clip without a label cannot be sampled by class: one line that names the key.
  config = ml_collections.ConfigDict(task0.config.to_dict())
  config.data.balance = "class_balanced"
  task = recipe.ViFiCLIPTask(config)
  monkeypatch.setattr(task, "train_records", lambda: skewed + [dataclasses.replace(skewed[0], label="")])
  with pytest.raises(ValueError, match="1 of the .* no label; pass --config.data.balance="):
    task.train_loader(seed=0, process_index=0, process_count=1, batch_size=8)


def test_k_shot_is_seeded_and_balanced():
  from t5video.data.records import VideoRecord
  from t5video.recipes import vificlip as recipe
  records = [VideoRecord(video_id=f"{c}{i}", path="x", label=c) for c in "abc" for i in range(10)]
  records += [VideoRecord(video_id="d0", path="x", label="d")]
  picked = recipe.k_shot(records, 4, seed=3)
  assert [r.label for r in picked].count("a") == 4 and [r.label for r in picked].count("d") == 1
  assert [r.video_id for r in picked] == [r.video_id for r in recipe.k_shot(records[::-1], 4, seed=3)]
  assert [r.video_id for r in picked] != [r.video_id for r in recipe.k_shot(records, 4, seed=4)]
  from t5video.evaluate import classification as cls_metrics
  assert cls_metrics.harmonic_mean(80.0, 40.0) == pytest.approx(53.3333, rel=1e-4)


@pytest.mark.parametrize("name,arg", [("synthetic.py", "mean"), ("synthetic.py", "spacetime,tiny"),
                                      ("k400.py", "supervised"), ("k400.py", "zeroshot"),
                                      ("hmdb51.py", "fewshot-8"), ("hmdb51.py", "prompt"),
                                      ("ucf101.py", "base2novel"), ("ucf101.py", "zeroshot"),
                                      ("msrvtt_retrieval.py", None)])
def test_configs_load_and_validate(name, arg):
  from t5video.train import trainer
  config = cli.load_config_file(os.path.join(REPO, "configs/vificlip", name) + (f":{arg}" if arg else ""))
  trainer.validate_config(config)
  assert config.task == "vificlip"
  text = open(os.path.join(REPO, "configs/vificlip", name)).read()
  assert "Hardware" in text or "CPU" in text  # the command itself: tests/test_hygiene.py


def test_synthetic_config_zooms_training_clips_only():
  from t5video.recipes.vificlip import task as task_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "configs/vificlip/synthetic.py")
  on, off = cli.load_config_file(path + ":ordered,tiny"), cli.load_config_file(path + ":ordered,tiny,nozoom")
  assert tuple(on.data.zoom) == (0.8, 1.25) and tuple(off.data.zoom) == ()
  spec = task_lib.ViFiCLIPTask.sampling_spec  # reads only self.config
  holder = type("Holder", (), {"config": on})()
  assert spec(holder, True).zoom == (0.8, 1.25) and spec(holder, False).zoom is None
  assert spec(type("Holder", (), {"config": off})(), True).zoom is None
  with pytest.raises(ValueError, match="nozoom"):
    cli.load_config_file(path + ":ordered,zoomed")


@pytest.mark.slow
def test_multi_view_decoding_and_scores(trained):
  task, params, _, root = trained
  records = [r for r in task.records("test") if r.label in NOVEL][:2]
  with task.config.unlocked():
    e = task.config.eval
    saved = (e.num_clips, e.num_crops, e.crop_square)
    e.num_clips, e.num_crops, e.crop_square = 2, 3, 40
  try:
    views, ok = task.predictor.decode_views(records)
    assert ok.all() and views.shape == (2, 6, 4, 32, 32, 3)
    # The three crops of one clip differ (different windows of a textured frame) ...
    assert np.any(views[0, 0] != views[0, 2])
    # ... and the two temporal views interleave frames of one uniform sampling.
    assert np.any(views[:, 0] != views[:, 3])
    scores = task.predictor.classify(params, views, list(NOVEL), task.config.model.prompt_template)
    np.testing.assert_allclose(scores.sum(axis=1), 6.0, rtol=1e-5)  # one softmax per view, summed
  finally:
    with task.config.unlocked():
      e.num_clips, e.num_crops, e.crop_square = saved


@pytest.mark.parity
def test_hf_clip_weights_merge_and_match_torch(tmp_path):
  """A tiny HF CLIPModel's weights load by name; per-frame and text features equal torch's."""
  torch = pytest.importorskip("torch")
  import transformers
  from t5video.models import hf
  torch.manual_seed(0)
  hf_cfg = tiny_hf.clip_config()
  ref = transformers.CLIPModel(hf_cfg).eval()
  ref.save_pretrained(str(tmp_path))
  _, clip_params = hf.load_hf(str(tmp_path))
  cfg_json = hf.read_hf_config(str(tmp_path))
  cfg = vifi.ViFiCLIPConfig(vision=clip_lib.CLIPVisionConfig.from_hf(cfg_json),
                            text=clip_lib.CLIPTextConfig.from_hf(cfg_json), projection_dim=16, num_frames=3)
  model = vifi.ViFiCLIP(cfg)
  ids = np.array([[97, 5, 6, 98, 1, 1], [97, 7, 98, 1, 1, 1]], np.int64)
  mask = (ids != 1).astype(np.int64)
  px = np.random.default_rng(0).normal(size=(2, 3, 32, 32, 3)).astype(np.float32)
  init = nn.unbox(model.init(jax.random.PRNGKey(1), px, ids.astype(np.int32), mask.astype(np.int32))["params"])
  params, missing = vifi.merge_clip_params(init, clip_params)
  assert missing == []
  video, frames = model.apply({"params": params}, px, method=vifi.ViFiCLIP.encode_video)
  text = model.apply({"params": params}, ids.astype(np.int32), mask.astype(np.int32), method=vifi.ViFiCLIP.encode_text)
  with torch.no_grad():
    # [B, T, H, W, C] -> [B * T, C, H, W]
    nchw = torch.from_numpy(px.reshape(6, 32, 32, 3).transpose(0, 3, 1, 2).copy())
    ref_frames = ref.get_image_features(pixel_values=nchw)
    ref_frames = getattr(ref_frames, "pooler_output", ref_frames).numpy().reshape(2, 3, 16)
    ref_text = ref.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ref_text = getattr(ref_text, "pooler_output", ref_text).numpy()
  np.testing.assert_allclose(frames, ref_frames, atol=1e-5)
  np.testing.assert_allclose(video, ref_frames.mean(axis=1), atol=1e-5)
  np.testing.assert_allclose(text, ref_text, atol=1e-5)
  np.testing.assert_allclose(float(params["logit_scale"]), float(ref.logit_scale.detach()), rtol=1e-6)
