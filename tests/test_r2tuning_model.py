"""R²-Tuning model, losses and inference: shapes, parameter count, hand-computed losses,
NMS/top-k, padding invariance, and a small end-to-end learning test on planted features."""

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5video.evaluate import grounding
from t5video.models import r2tuning as r2
from t5video.models import r2tuning_losses as L

# Independent, heavy tests: xdist may run them on different workers (tests/conftest.py).
XDIST_SPLIT = True

TINY = r2.R2TuningConfig.variant("tiny")


def _inputs(cfg, b, t, l, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  video = jax.random.normal(k1, (b, cfg.num_layers, t, cfg.num_tokens, cfg.video_dim))
  query = jax.random.normal(k2, (b, cfg.num_layers, l, cfg.query_dim))
  return video, query


def _count(cfg):
  model = r2.R2Tuning(cfg)
  video, query = _inputs(cfg, 1, 16, 8)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), video, jnp.ones((1, 16)), query,
                          jnp.ones((1, 8)))
  return r2.count_params(nn.meta.unbox(shapes["params"]))


def test_parameter_count_at_vit_b32_dims():
  """2,836,242 trainable parameters at ViT-B/32 dims (768-d × 50 tokens, 4 layers; 512-d query).

  Our hand count of the public code's modules gives the same number: adapter 1,648,907
  (video MLP 265,220 with 770 = 768 + 2 end-point inputs, query MLP 198,656, v/q maps 131,584,
  scale 4 + gate 3, decoder layer 1,053,440), pyramid 791,040, class head 197,633, coordinate
  head 198,402, query pooling 256, level coefficients 4. The paper's "2.7M" is this count in
  units of 2^20 (2.705); in decimal it is 2.84M.
  """
  n = _count(r2.R2TuningConfig.variant("B/32"))
  assert n == 2_836_242
  assert round(n / 2 ** 20, 1) == 2.7
  meanpool = _count(r2.R2TuningConfig.variant("B/32", head="meanpool"))
  assert meanpool < n - 1_000_000       # no v/q maps, no decoder


def test_shapes_and_pyramid():
  t, l, b = 13, 6, 2
  video, query = _inputs(TINY, b, t, l)
  model = r2.R2Tuning(TINY)
  vm, qm = jnp.ones((b, t)), jnp.ones((b, l))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), video, vm, query, qm)
  apply = jax.jit(model.apply, static_argnames="deterministic")
  out = apply(params, video, vm, query, qm)
  n = 13 + 6 + 3 + 1
  assert [x for x in r2.pyramid_lengths(t, TINY.strides)] == [(1, 13), (2, 6), (4, 3), (8, 1)]
  assert out["video_emb"].shape == (b, t, TINY.dim)
  assert out["query_emb"].shape == (b, TINY.dim)
  assert out["class_logits"].shape == (b, n)
  assert out["coords"].shape == (b, n, 2) and bool((out["coords"] > 0).all())
  assert out["layer_cls"].shape == (TINY.num_layers, b, t, TINY.dim)
  assert out["layer_query"].shape == (TINY.num_layers, b, TINY.dim)
  assert L.point_table(t, TINY.strides).shape == (n, 4)
  # Short videos drop the levels whose stride exceeds them.
  assert r2.pyramid_lengths(3, TINY.strides) == [(1, 3), (2, 1)]
  # The untrained block passes CLS through its pooling (scale starts at 0), and dropout is live
  # only when not deterministic.
  out2 = apply(params, video, vm, query, qm, deterministic=False,
               rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(out["video_emb"], out2["video_emb"])
  mp = r2.R2Tuning(r2.R2TuningConfig.variant("tiny", head="meanpool"))
  p = jax.jit(mp.init)(jax.random.PRNGKey(1), video, vm, query, qm)
  o = jax.jit(mp.apply)(p, video, vm, query, qm)
  assert o["class_logits"].shape == (b, n) and o["layer_cls"].shape == (1, b, t, TINY.dim)


def test_batched_video_equals_the_lone_video():
  """A video's outputs, saliency and moments do not depend on the padding it is batched with."""
  t_short, t, l_short, l = 9, 14, 4, 7
  video, query = _inputs(TINY, 2, t, l, seed=3)
  model = r2.R2Tuning(TINY)
  vm = jnp.array([[1] * t_short + [0] * (t - t_short), [1] * t], jnp.float32)
  qm = jnp.array([[1] * l_short + [0] * (l - l_short), [1] * l], jnp.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), video, vm, query, qm)
  apply = jax.jit(model.apply)
  batched = apply(params, video, vm, query, qm)
  alone = apply(params, video[:1, :, :t_short], jnp.ones((1, t_short)),
                query[:1, :, :l_short], jnp.ones((1, l_short)))
  np.testing.assert_allclose(batched["video_emb"][0, :t_short], alone["video_emb"][0], atol=2e-5)
  np.testing.assert_allclose(batched["query_emb"][0], alone["query_emb"][0], atol=2e-5)
  sal_b = L.predict_saliency(batched, vm, TINY.strides)
  sal_a = L.predict_saliency(alone, jnp.ones((1, t_short)), TINY.strides)
  np.testing.assert_allclose(sal_b[0, :t_short], sal_a[0], atol=2e-5)
  assert float(jnp.abs(sal_b[0, t_short:]).max()) == 0.0
  mom_b = np.asarray(L.predict_moments(batched, vm, 0.5, TINY.strides, max_moments=50))
  mom_a = np.asarray(L.predict_moments(alone, jnp.ones((1, t_short)), 0.5, TINY.strides))
  valid = np.isfinite(mom_b[0, :, 2])
  assert valid.sum() == 9 + 4 + 2 + 1 == mom_a.shape[1]
  np.testing.assert_allclose(mom_b[0, valid], mom_a[0], atol=1e-4)


def test_focal_l1_and_info_nce_by_hand():
  # logit 0, target 1: BCE log 2, p_t = 1/2 -> log 2 / 4; a confident right answer costs ~0.
  assert math.isclose(float(L.focal_loss(jnp.array([0.0]), jnp.array([1.0]), jnp.array([1.0]))),
                      math.log(2) / 4, rel_tol=1e-6)
  # weights pick and average: (log2/4 + 0) / 2 with the second point masked out of the sum
  v = L.focal_loss(jnp.array([0.0, 5.0, 3.0]), jnp.array([1.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 1.0]))
  p = 1 / (1 + math.exp(-3.0))
  expect = (math.log(2) / 4 + (-math.log(p)) * (1 - p) ** 2) / 2
  assert math.isclose(float(v), expect, rel_tol=1e-5)
  # L1 over positives x 2 coordinates
  pred = jnp.array([[[1.0, 2.0], [5.0, 5.0]]])
  tgt = jnp.array([[[2.0, 4.0], [0.0, 0.0]]])
  assert math.isclose(float(L.l1_loss(pred, tgt, jnp.array([[1.0, 0.0]]))), 1.5)
  # InfoNCE on orthonormal pairs: each row is log(1 + e^{-1/τ}), both directions alike
  e = jnp.eye(2)
  s = 1 / 0.07
  # (the loss is ~6e-7 here: float32 resolves it to ~1e-7)
  assert math.isclose(float(L.info_nce_loss(e, e)), math.log(1 + math.exp(-s)), abs_tol=1e-7)
  # swapped pairs: the positive has similarity 0, the negative 1/τ
  assert math.isclose(float(L.info_nce_loss(e, e[::-1])), math.log(1 + math.exp(s)), rel_tol=1e-5)
  # batched leading axes average over all rows
  assert math.isclose(float(L.info_nce_loss(jnp.stack([e, e]), jnp.stack([e, e[::-1]]))),
                      (math.log(1 + math.exp(-s)) + math.log(1 + math.exp(s))) / 2, rel_tol=1e-5)


def test_sampled_nce_by_hand():
  s = 1 / 0.07
  # one video, clips with cosine 1, 0, -1 to the query; positive clip 0 (saliency 1); clip 2 has
  # higher saliency (2) so it is no negative; clip 1 (0.5) is.
  video = jnp.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
  query = jnp.array([[2.0, 0.0]])
  sal = jnp.array([[1.0, 0.5, 2.0]])
  loss = L.sampled_nce_loss(video, query, jnp.ones((1, 3)), sal, jnp.array([0]))
  assert math.isclose(float(loss), math.log(1 + math.exp(-s)), abs_tol=1e-7)
  # a padded clip is no negative either
  loss = L.sampled_nce_loss(video, query, jnp.array([[0, 1, 1]]), jnp.array([[1.0, 0.5, 0.0]]),
                            jnp.array([1]))
  # positive clip 1 (cos 0) against clip 2 (cos -1; saliency 0 <= 0.5); clip 0 is padding
  row = -(0 - math.log(math.exp(0) + math.exp(-s)))
  assert math.isclose(float(loss), row, abs_tol=1e-7)
  # two videos: the column term compares the same clip index across videos
  video2 = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
  query2 = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  loss = L.sampled_nce_loss(video2, query2, jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.array([0, 1]))
  # rows: each positive has cos 1 vs a cos-0 negative: log(1 + e^{-s}) each
  # cols: video 0 clip 0 (cos 1) vs video 1 clip 0 (cos 0); video 1 clip 1 (1) vs video 0 clip 1 (0)
  assert math.isclose(float(loss), 2 * math.log(1 + math.exp(-s)), abs_tol=2e-7)
  # a positive with cosine 0 against a negative with cosine 1 costs log(1 + e^{1/τ}) ≈ 1/τ
  loss = L.sampled_nce_loss(video2[:1], jnp.array([[0.0, 1.0]]), jnp.ones((1, 2)),
                            jnp.array([[1.0, 1.0]]), jnp.array([0]))
  assert math.isclose(float(loss), math.log(1 + math.exp(s)), rel_tol=1e-5)
  grad = jax.grad(lambda v: L.sampled_nce_loss(v, query, jnp.array([[0, 1, 1]]),
                                               jnp.array([[1.0, 0.5, 0.0]]), jnp.array([1])))(video)
  assert bool(jnp.isfinite(grad).all())


def test_targets_centre_sampling_and_ranges():
  points = L.point_table(8, (1, 2))
  # rows: stride 1 at 0..7 with range (0, 2]; stride 2 at 0, 2, 4, 6 with range (2, inf)
  np.testing.assert_array_equal(points[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6])
  np.testing.assert_array_equal(points[:, 1:3][[0, 8]], [[0, 2], [2, np.inf]])
  cls, reg = L.build_targets(jnp.asarray(points), jnp.array([[[2.0, 5.0]]]), jnp.array([[1.0]]))
  # stride 1: point 3 (1, 2) and 4 (2, 1) reach <= 2; point 2 reaches 3: no.
  # stride 2: point 2 (0, 3): reach 3 in [2, inf), inside the centre region [2, 5] -> (0, 1.5);
  #           point 4 (2, 1): reach 2 -> (1, 0.5).
  np.testing.assert_array_equal(cls[0], [0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_allclose(reg[0, 3], [1, 2])
  np.testing.assert_allclose(reg[0, 9], [0, 1.5])
  np.testing.assert_allclose(reg[0, 10], [1, 0.5])
  # centre sampling: a long moment [0, 8] at stride 1 only points within 1.5 of the centre 4
  cls, _ = L.build_targets(jnp.asarray(L.point_table(8, (1,))), jnp.array([[[0.0, 8.0]]]),
                           jnp.array([[1.0]]))
  # stride 1's range here is (0, inf): points 3, 4, 5 are within [2.5, 5.5]
  np.testing.assert_array_equal(cls[0], [0, 0, 0, 1, 1, 1, 0, 0])
  # overlapping moments: the shorter one is the target; a masked moment is ignored
  cls, reg = L.build_targets(jnp.asarray(L.point_table(8, (1,))),
                             jnp.array([[[0.0, 8.0], [3.0, 5.0], [3.0, 4.0]]]),
                             jnp.array([[1.0, 1.0, 0.0]]))
  np.testing.assert_allclose(reg[0, 4], [1, 1])   # from [3, 5], not [0, 8] or masked [3, 4]


def test_point_mask_train_and_test():
  vm = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]])
  # train: a window with any real clip; test: only the t_b // s points of a lone video
  np.testing.assert_array_equal(L.point_mask(vm, (1, 2), "train")[0],
                                [1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0])
  np.testing.assert_array_equal(L.point_mask(vm, (1, 2), "test")[0],
                                [1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0])


def test_saliency_spreads_levels_like_the_reference():
  # t = 5, strides (1, 2): level 2 has 2 points; repeat 5 // 2 = 2, the last clip carries point 1
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.0]])
  sig = lambda x: 1 / (1 + math.exp(-x))
  out = {"class_logits": logits, "video_emb": jnp.ones((1, 5, 3)), "query_emb": jnp.ones((1, 3))}
  sal = L.predict_saliency(out, jnp.ones((1, 5)), (1, 2))
  np.testing.assert_allclose(sal[0], [sig(2), sig(2), 0.5, 0.5, 0.5], rtol=1e-6)
  # the cosine multiplies: an opposite query flips the sign
  out["query_emb"] = -jnp.ones((1, 3))
  np.testing.assert_allclose(L.predict_saliency(out, jnp.ones((1, 5)), (1, 2))[0],
                             [-sig(2), -sig(2), -0.5, -0.5, -0.5], rtol=1e-6)


def test_top_k_and_nms():
  t = 8
  n = 8 + 4
  logits = jnp.linspace(-3, 3, n)[None]
  coords = jnp.ones((1, n, 2))
  out = {"class_logits": logits, "coords": coords}
  mom = np.asarray(L.predict_moments(out, jnp.ones((1, t)), fps=0.5, strides=(1, 2), max_moments=5))
  assert mom.shape == (1, 5, 3)
  assert np.all(np.diff(mom[0, :, 2]) <= 0)
  # the best point is the last of stride 2 (position 6): [6 - 2, 6 + 2] clips = [8, 16] s
  np.testing.assert_allclose(mom[0, 0, :2], [8, 16])
  # a padded video only offers its own points
  vm = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]])
  mom = np.asarray(L.predict_moments(out, vm, 0.5, (1, 2), max_moments=12))
  assert np.isfinite(mom[0, :, 2]).sum() == 4 + 2
  # NMS: the overlapping second window is suppressed (IoU 0.9 >= 0.7) and sinks to the end
  windows = np.array([[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7]])
  np.testing.assert_allclose(L.temporal_nms(windows, 0.7), [[0, 10, 0.9], [20, 30, 0.7], [1, 10, 0]])
  lin = L.temporal_nms(windows, kind="linear")
  np.testing.assert_allclose(lin[:, 2], [0.9, 0.7, 0.8 * (1 - 0.9)])
  # post-processing: clamp to the video, round to 2 s units except at the end, drop invalid rows
  raw = np.array([[-1.2, 5.1, 0.5], [140.7, 160.0, 0.4], [3.0, 4.0, -np.inf]])
  np.testing.assert_allclose(L.postprocess_moments(raw, 150, unit=2),
                             [[0, 6, 0.5], [140.7, 150, 0.4]])


def test_data_helpers():
  b = L.prepare_boundaries([[10, 30], [52, 50], [140, 170], [7, 7.5]], num_clips=75, fps=0.5)
  np.testing.assert_allclose(b, [[5, 15], [25, 26], [70, 75], [3.125, 4.125]])
  sal = L.clip_saliency(10, np.array([[2.0, 4.5]]))
  np.testing.assert_array_equal(sal, [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
  sal = L.clip_saliency(5, None, [1, 3], [[4, 4, 4], [1, 2, 0]])
  np.testing.assert_allclose(sal, [0, 1, 0, 0.25, 0])
  rng = np.random.default_rng(0)
  assert {L.sample_positive_clip(sal, rng) for _ in range(20)} == {1, 3}


# --------------------------------------------------------------------------------------------
# End to end on planted features
# --------------------------------------------------------------------------------------------


STEPS = 150
# XLA's CPU backend at optimisation level 0 compiles the training step in under half the time
# (measured here: 19 s vs 43 s of CPU), and the tiny steps do not need the faster code.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compile(f, *args):
  return jax.jit(f).lower(*args).compile(compiler_options=FAST_COMPILE)


def _world(rng, cfg, concepts=6):
  """Directions of `concepts` concepts in video-token and query-token space (see _sample)."""
  dirs_v = rng.normal(size=(concepts, cfg.video_dim)).astype(np.float32)
  dirs_q = rng.normal(size=(concepts, cfg.query_dim)).astype(np.float32)
  return dirs_v, dirs_q


def _sample(rng, n, cfg, dirs_v, dirs_q, t=16, l=5):
  """n videos of t clips: each query names one concept (in 3 of its l tokens); the video's CLS
  and first patch carry that concept on a window of 3-7 clips and other concepts elsewhere."""
  concepts = len(dirs_v)
  video = rng.normal(size=(n, cfg.num_layers, t, cfg.num_tokens, cfg.video_dim)).astype(np.float32)
  query = rng.normal(size=(n, cfg.num_layers, l, cfg.query_dim)).astype(np.float32) * 0.5
  windows = np.zeros((n, 2), np.float32)
  for i in range(n):
    c = rng.integers(concepts)
    length = int(rng.integers(3, 8))
    s = int(rng.integers(0, t - length + 1))
    windows[i] = (s, s + length)
    others = [k for k in range(concepts) if k != c]
    for j in range(t):
      k = c if s <= j < s + length else int(rng.choice(others))
      video[i, :, j, :2] += 1.5 * dirs_v[k]        # CLS and one patch carry the clip's concept
    query[i, :, :3] += dirs_q[c]
  return video, query, windows


def test_end_to_end_learns_planted_windows():
  start, cpu = time.time(), time.process_time()
  cfg = r2.R2TuningConfig.variant("tiny", dropout=0.1)
  rng = np.random.default_rng(0)
  t, l, fps = 16, 5, 1.0
  dirs_v, dirs_q = _world(rng, cfg)
  model = r2.R2Tuning(cfg)
  video, query, windows = _sample(rng, 512, cfg, dirs_v, dirs_q)
  vm, qm = jnp.ones((16, t)), jnp.ones((16, l))
  init_args = (jax.random.PRNGKey(0), jnp.asarray(video[:16]), vm, jnp.asarray(query[:16]), qm)
  params = _compile(model.init, *init_args)(*init_args)
  sched = optax.warmup_constant_schedule(0.0, 2e-3, 30)
  opt = optax.chain(optax.clip_by_global_norm(35.0), optax.adamw(sched, weight_decay=1e-4))
  opt_state = opt.init(params)
  sal = np.stack([L.clip_saliency(t, w[None]) for w in windows])
  pos = np.array([L.sample_positive_clip(s, rng) for s in sal])
  data = {"video": jnp.asarray(video), "query": jnp.asarray(query),
          "boundaries": jnp.asarray(windows[:, None]), "saliency": jnp.asarray(sal),
          "pos_clip": jnp.asarray(pos)}

  def step(carry, xs):
    params, opt_state = carry
    idx, key = xs
    batch = {k: v[idx] for k, v in data.items()}
    batch.update(video_mask=vm, query_mask=qm, boundary_mask=jnp.ones((16, 1)))

    def loss_fn(p):
      out = model.apply(p, batch["video"], vm, batch["query"], qm, deterministic=False,
                        rngs={"dropout": key})
      return L.r2tuning_loss(out, batch, cfg)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  # STEPS steps in chunks of 25 under one scan: one dispatch per chunk
  carry, losses, run = (params, opt_state), [], None
  for c in range(STEPS // 25):
    idx = jnp.asarray(np.stack([rng.choice(512, 16, replace=False) for _ in range(25)]))
    keys = jax.random.split(jax.random.PRNGKey(c), 25)
    if run is None:
      run = _compile(lambda carry, idx, keys: jax.lax.scan(step, carry, (idx, keys)),
                     carry, idx, keys)
    carry, chunk = run(carry, idx, keys)
    losses.extend(np.asarray(chunk).tolist())
    if c == 0:
      print(f"first chunk (compile) {time.time() - start:.1f}s wall, {time.process_time() - cpu:.1f}s cpu")
  params = carry[0]
  print(f"trained {time.time() - start:.1f}s wall, {time.process_time() - cpu:.1f}s cpu")
  assert np.isfinite(losses).all()

  # held-out videos, scored by the grounding metrics
  tv, tq, tw = _sample(np.random.default_rng(1), 64, cfg, dirs_v, dirs_q)
  eval_args = (params, jnp.asarray(tv), jnp.ones((64, t)), jnp.asarray(tq), jnp.ones((64, l)))
  out = _compile(model.apply, *eval_args)(*eval_args)
  moments = np.asarray(L.predict_moments(out, jnp.ones((64, t)), fps, cfg.strides))
  gt = [{"qid": i, "duration": t / fps, "relevant_windows": [tw[i].tolist()]} for i in range(64)]
  sub = [{"qid": i, "pred_relevant_windows":
          L.postprocess_moments(moments[i], t / fps, unit=1.0).tolist()} for i in range(64)]
  r1 = grounding.evaluate_grounding(sub, gt)["brief"]["MR-full-R1@0.5"]
  # random baseline: a random window of 3-7 clips
  rr = np.random.default_rng(2)
  rand = []
  for i in range(64):
    ln = rr.integers(3, 8)
    s = rr.integers(0, t - ln + 1)
    rand.append({"qid": i, "pred_relevant_windows": [[float(s), float(s + ln), 1.0]]})
  r1_random = grounding.evaluate_grounding(rand, gt)["brief"]["MR-full-R1@0.5"]
  print(f"R1@0.5 {r1} vs random {r1_random}; loss {np.mean(losses[:20]):.3f} -> "
        f"{np.mean(losses[-20:]):.3f}; {time.time() - start:.1f}s wall, "
        f"{time.process_time() - cpu:.1f}s cpu")
  assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])
  assert r1 >= 60 and r1 >= r1_random + 30
