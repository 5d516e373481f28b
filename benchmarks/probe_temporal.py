"""What the pixels carry: probes of per-frame tokens, and temporal designs compared.

Single-action clips from the project's synthetic renderer (one object that moves
left/right/up/down, grows/shrinks, appears/disappears; 8 classes, uniform prior),
8 frames sampled uniformly over each clip, resized to ``--res``² (64 by default).
Three evaluation sets, each rendered with its own seed:

* ``test``: in distribution (64x64 renders, plain backgrounds, no other objects,
  2-3 s at 8/10/12 fps);
* ``geometry``: other frame sizes and aspect ratios (96x72, 128x96, 80x80, resized,
  so the object is squeezed and its speed in pixels differs), 3-4 s at 6/15 fps;
* ``scene``: textured backgrounds (gradient, striped, checkered, noisy, dotted)
  and up to two still distractor objects.

Every design is trained end to end from pixels only (no text), on the action
class and on the key object's colour, shape and size (four linear heads on one
clip vector), with AdamW for ``--steps`` steps.

Subcommands::

  # probes: position from one frame's pooled token, action from the sequence of
  # frame tokens, and the frame-shuffle test (towers: untrained, mean-trained,
  # transformer-trained)
  nice -n 5 python benchmarks/probe_temporal.py probe --out runs/probe_temporal/probe.json

  # designs, 3 seeds each
  nice -n 5 python benchmarks/probe_temporal.py compare --seeds 0,1,2 \\
      --designs mean,tf_nopos,tf,motion,patch_tf,spacetime,diff_mean \\
      --out runs/probe_temporal/compare.json

Designs (``--designs``): per-frame CLIP vision tower (``t5video.models.clip``)
then a temporal module (``t5video.models.temporal``), except ``spacetime``:

=============  ===============================================================
``mean``       pooled frame tokens, mean over frames (the ViFi-CLIP paper)
``tf_nopos``   pooled frame tokens, 1-layer transformer over frames without
               temporal position embeddings, then mean
``tf``         the same with learned temporal position embeddings
``motion``     ``tf`` plus frame-difference tokens (``kind='motion'``)
``patch_tf``   patch tokens, temporal attention per patch location (divided:
               space in the tower, then time), then mean over tokens
``spacetime``  joint space-time attention over all frames' patches inside the
               tower (``t5video.models.vificlip``, ``temporal='spacetime'``)
``diff_mean``  frame differences as extra input channels, then ``mean``
``diff_tf``    frame differences as extra input channels, then ``tf``
``flat_mean``  one token per frame that keeps where things are
               (``frame_tokens='flatten'``: Dense over the frame's patch tokens),
               mean over frames
``flat_tf``    ``flatten`` + transformer, then mean
``tf_cat``     ``tf`` with the frame tokens concatenated (the readout keeps order)
``flat_tf_cat`` ``flatten`` + transformer + concatenation
``diff_flat_tf_cat`` frame differences + ``flat_tf_cat``
=============  ===============================================================

Datasets are cached under ``--cache`` (npz). Runs on 2 CPU cores; with the
defaults one design trains in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

ACTION_CLASSES = ("moves left", "moves right", "moves up", "moves down",
                  "grows", "shrinks", "appears", "disappears")
ORDER_PAIRS = (("moves left", "moves right"), ("moves up", "moves down"),
               ("grows", "shrinks"), ("appears", "disappears"))
DESIGNS = ("mean", "tf_nopos", "tf", "motion", "patch_tf", "spacetime", "diff_mean", "diff_tf",
           "flat_mean", "flat_tf", "tf_cat", "flat_tf_cat", "diff_flat_tf_cat")

_SETS = {
    # name: (seed offset, render_dataset settings)
    "train": (0, dict(sizes=((64, 64),), backgrounds=("plain",), max_distractors=0,
                      min_seconds=2.0, max_seconds=3.0, fps_choices=(8, 10, 12))),
    "test": (1, dict(sizes=((64, 64),), backgrounds=("plain",), max_distractors=0,
                     min_seconds=2.0, max_seconds=3.0, fps_choices=(8, 10, 12))),
    "geometry": (2, dict(sizes=((96, 72), (128, 96), (80, 80)), backgrounds=("plain",),
                         max_distractors=0, min_seconds=3.0, max_seconds=4.0, fps_choices=(6, 15))),
    "scene": (3, dict(sizes=((64, 64),), max_distractors=2,
                      backgrounds=("gradient", "striped", "checkered", "noisy", "dotted"),
                      min_seconds=2.0, max_seconds=3.0, fps_choices=(8, 10, 12))),
}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def _resize(frames: np.ndarray, res: int) -> np.ndarray:
  """Area/bilinear resize of uint8 [T, H, W, 3] to float32 [T, res, res, 3] in [0, 1]."""
  import jax
  x = frames.astype(np.float32) / 255.0
  if x.shape[1:3] == (res, res):
    return x
  return np.asarray(jax.image.resize(x, (x.shape[0], res, res, 3), "linear", antialias=True))


def render_set(name: str, num: int, seed: int, res: int, frames: int, cache: str) -> dict[str, np.ndarray]:
  """Renders (or loads) one evaluation set: pixels [N, T, res, res, 3] uint8 and labels."""
  from t5video.data import synthetic
  offset, kw = _SETS[name]
  path = os.path.join(cache, f"{name}_n{num}_s{seed}_r{res}_t{frames}_v{synthetic.GENERATOR_VERSION}.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return dict(z)
  specs = synthetic.sample_specs(num, seed * 10 + offset + 1000, classes=ACTION_CLASSES,
                                 class_prior="uniform", splits=(1.0, 0.0, 0.0), **kw)
  pix, pos = [], []
  for s in specs:
    clip = synthetic.render_frames(s)  # [T0, H, W, 3]
    idx = np.linspace(0, len(clip) - 1, frames).round().astype(int)
    pix.append((_resize(clip[idx], res) * 255 + 0.5).astype(np.uint8))
    tr = synthetic._track(s, idx / s.fps)  # pylint: disable=protected-access
    short = min(s.width, s.height)
    pos.append(np.stack([tr["x"] / s.width, tr["y"] / s.height, tr["radius"] / short,
                         tr["alpha"]], -1))  # [T, 4]
  out = {
      "pixels": np.stack(pix),
      "position": np.stack(pos).astype(np.float32),
      "action": np.array([ACTION_CLASSES.index(s.label) for s in specs]),
      "colour": np.array([list(synthetic.COLOURS).index(s.key.colour) for s in specs]),
      "shape": np.array([synthetic.SHAPES.index(s.key.shape) for s in specs]),
      "size": np.array([list(synthetic.SIZES).index(s.key.size) for s in specs]),
  }
  os.makedirs(cache, exist_ok=True)
  np.savez_compressed(path, **out)
  return out


HEADS = {"action": len(ACTION_CLASSES), "colour": 8, "shape": 8, "size": 3}


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelConfig:
  design: str = "tf"
  res: int = 64
  patch: int = 16
  width: int = 64
  layers: int = 2
  heads: int = 4
  frames: int = 8
  temporal_layers: int = 1


def build_model(mc: ModelConfig):
  """A Flax module: pixels [b, t, H, W, 3] in [0, 1] -> (logits per head, frame tokens [b, t, w])."""
  import flax.linen as nn
  import jax.numpy as jnp
  from t5video.models import clip as clip_lib
  from t5video.models import temporal as temporal_lib
  from t5video.models import vificlip as vificlip_lib

  if mc.design not in DESIGNS:
    raise ValueError(f"unknown design {mc.design!r}; known: {DESIGNS}")
  diff = mc.design.startswith("diff_")
  vision = clip_lib.CLIPVisionConfig(
      hidden_size=mc.width, intermediate_size=2 * mc.width, num_hidden_layers=mc.layers,
      num_attention_heads=mc.heads, image_size=mc.res, patch_size=mc.patch,
      num_channels=6 if diff else 3, hidden_act="gelu")
  kind = {"mean": "mean", "tf_nopos": "transformer", "tf": "transformer", "motion": "motion",
          "patch_tf": "transformer", "diff_mean": "mean", "diff_tf": "transformer",
          "flat_mean": "mean", "flat_tf": "transformer", "tf_cat": "transformer",
          "flat_tf_cat": "transformer", "diff_flat_tf_cat": "transformer"}.get(mc.design)
  # '_cat': the clip vector is the concatenation of the frame tokens (the readout keeps
  # frame order) instead of their mean
  concat = mc.design.endswith("_cat")
  flatten_frames = "flat_" in mc.design
  tcfg = temporal_lib.TemporalConfig(kind=kind or "mean", num_layers=mc.temporal_layers,
                                     num_heads=mc.heads, mlp_ratio=2, max_frames=mc.frames,
                                     temporal_embedding=mc.design != "tf_nopos",
                                     frame_tokens="flatten" if flatten_frames else "keep")

  class Classifier(nn.Module):
    @nn.compact
    def __call__(self, pixels, deterministic=True):
      b, t = pixels.shape[:2]
      x = (pixels - 0.5) / 0.25
      if mc.design == "spacetime":
        # joint attention over [1 + t * patches] tokens: [b, 1, w]
        pooled = vificlip_lib.VideoVisionTransformer(vision, temporal="spacetime", num_frames=t,
                                                     name="tower")(x, deterministic)
        feats, frame_tokens = pooled[:, 0], None
      else:
        if diff:
          x = temporal_lib.frame_differences(x)  # [b, t, H, W, 6]
        # [b, t, H, W, C] -> [b * t, H, W, C]
        flat = x.reshape((b * t,) + x.shape[2:])
        last, pooled, _ = clip_lib.CLIPVisionTransformer(vision, name="tower")(flat, False, deterministic)
        # [b * t, w] -> [b, t, w]
        frame_tokens = pooled.reshape(b, t, -1)
        if flatten_frames:
          # [b * t, 1 + L, w] -> [b, t, L, w]; the temporal module flattens each frame
          tokens = last[:, 1:].reshape(b, t, last.shape[1] - 1, last.shape[2])
          frame_tokens = None
        elif mc.design == "patch_tf":
          # [b * t, 1 + L, w] -> [b, t, L, w]
          tokens = last[:, 1:].reshape(b, t, last.shape[1] - 1, last.shape[2])
        else:
          tokens = frame_tokens[:, :, None, :]  # [b, t, 1, w]
        out, mask = temporal_lib.TemporalModule(tcfg, name="temporal")(
            tokens, jnp.ones((b, t), jnp.int32), deterministic)
        if concat:
          feats = out.reshape(b, -1)  # [b, t, w] -> [b, t * w]
        else:
          feats = out.mean(axis=1)  # [b, n, w] -> [b, w]
      feats = nn.LayerNorm(name="head_norm")(feats)
      logits = {k: nn.Dense(n, name=f"head_{k}")(feats) for k, n in HEADS.items()}
      return logits, frame_tokens

  return Classifier()


def _unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def train(mc: ModelConfig, data: dict[str, np.ndarray], *, steps: int, seed: int, batch: int = 32,
          lr: float = 1e-3, shuffle_frames: bool = False, log_every: int = 0):
  """Trains from scratch; returns (model, params, seconds)."""
  import jax
  import jax.numpy as jnp
  import optax
  model = build_model(mc)
  rng = np.random.default_rng(seed)
  x0 = jnp.zeros((2,) + data["pixels"].shape[1:], jnp.float32)
  params = _unbox(model.init(jax.random.PRNGKey(seed), x0)["params"])
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps, lr * 0.05)
  opt = optax.adamw(sched, weight_decay=0.05)
  opt_state = opt.init(params)

  def loss_fn(p, x, labels):
    logits, _ = model.apply({"params": p}, x, False)
    losses = [optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean()
              for k in HEADS]
    return sum(losses), logits["action"]

  @jax.jit
  def step(p, s, x, labels):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, labels)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  n = len(data["pixels"])
  t0 = time.perf_counter()
  order = rng.permutation(n)
  cursor = 0
  for i in range(steps):
    if cursor + batch > n:
      order, cursor = rng.permutation(n), 0
    idx = order[cursor:cursor + batch]
    cursor += batch
    x = data["pixels"][idx].astype(np.float32) / 255.0
    if shuffle_frames:
      perm = np.argsort(rng.random(x.shape[:2]), axis=1)  # [b, t]
      x = np.take_along_axis(x, perm[:, :, None, None, None], axis=1)
    labels = {k: jnp.asarray(data[k][idx]) for k in HEADS}
    params, opt_state, loss = step(params, opt_state, jnp.asarray(x), labels)
    if log_every and (i + 1) % log_every == 0:
      print(f"  step {i + 1}: loss {float(loss):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
  return model, params, time.perf_counter() - t0


def predict(model, params, pixels: np.ndarray, *, batch: int = 64, shuffle_seed: Optional[int] = None):
  """(logits per head [N, k], frame tokens [N, t, w] or None)."""
  import jax
  import jax.numpy as jnp
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x, True))
  rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
  outs, toks = {k: [] for k in HEADS}, []
  for i in range(0, len(pixels), batch):
    x = pixels[i:i + batch].astype(np.float32) / 255.0
    if rng is not None:
      perm = np.argsort(rng.random(x.shape[:2]), axis=1)
      x = np.take_along_axis(x, perm[:, :, None, None, None], axis=1)
    logits, tokens = fn(params, jnp.asarray(x))
    for k in HEADS:
      outs[k].append(np.asarray(logits[k]))
    if tokens is not None:
      toks.append(np.asarray(tokens))
  return {k: np.concatenate(v) for k, v in outs.items()}, (np.concatenate(toks) if toks else None)


def metrics(logits: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
  """Action top-1, each order pair (binary choice between the pair's two logits, on the
  pair's clips), colour/shape/size top-1; in percent."""
  out = {}
  for k in HEADS:
    out[k] = 100.0 * float((logits[k].argmax(1) == data[k]).mean())
  y = data["action"]
  for a, b in ORDER_PAIRS:
    ia, ib = ACTION_CLASSES.index(a), ACTION_CLASSES.index(b)
    sel = (y == ia) | (y == ib)
    pred = np.where(logits["action"][sel, ia] >= logits["action"][sel, ib], ia, ib)
    out[f"{a.split()[-1]}/{b.split()[-1]}"] = 100.0 * float((pred == y[sel]).mean())
  return out


# ---------------------------------------------------------------------------
# Probes (closed-form ridge on standardised features)
# ---------------------------------------------------------------------------

def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float):
  mu, sd = x.mean(0), x.std(0) + 1e-6
  a = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
  reg = lam * np.eye(a.shape[1])
  reg[-1, -1] = 0.0
  w = np.linalg.solve(a.T @ a + reg, a.T @ y)
  return lambda z: np.concatenate([(z - mu) / sd, np.ones((len(z), 1))], 1) @ w


def ridge_r2(x_tr, y_tr, x_te, y_te, lam=10.0) -> list[float]:
  """Held-out R² of a linear probe, per target column."""
  pred = _ridge_fit(x_tr, y_tr, lam)(x_te)
  ss = ((y_te - y_te.mean(0)) ** 2).sum(0)
  return [float(v) for v in 1.0 - ((y_te - pred) ** 2).sum(0) / np.maximum(ss, 1e-9)]


def ridge_classify(x_tr, y_tr, x_te, y_te, k, lam=10.0) -> tuple[float, np.ndarray]:
  """Held-out accuracy (percent) of a one-vs-rest ridge classifier, and its scores."""
  target = np.eye(k)[y_tr] * 2 - 1
  scores = _ridge_fit(x_tr, target, lam)(x_te)
  return 100.0 * float((scores.argmax(1) == y_te).mean()), scores


def probe_tokens(tok_tr, d_tr, tok_te, d_te, seed: int = 0) -> dict[str, Any]:
  """Position from one frame's token; action from the frame sequence, its mean, and shuffled."""
  n, t, w = tok_tr.shape
  res: dict[str, Any] = {}
  # Position: every frame's token -> (x, y, radius, alpha) of the key object in that frame.
  # Frames where the object is invisible (alpha < 0.2) have no position.
  vis_tr = d_tr["position"][..., 3].reshape(-1) > 0.2
  vis_te = d_te["position"][..., 3].reshape(-1) > 0.2
  ptr, pte = d_tr["position"].reshape(-1, 4), d_te["position"].reshape(-1, 4)
  r2 = ridge_r2(tok_tr.reshape(-1, w)[vis_tr], ptr[vis_tr, :3], tok_te.reshape(-1, w)[vis_te], pte[vis_te, :3])
  res["position_r2"] = dict(zip(("x", "y", "radius"), r2))
  res["alpha_r2"] = ridge_r2(tok_tr.reshape(-1, w), ptr[:, 3:], tok_te.reshape(-1, w), pte[:, 3:])[0]
  k = len(ACTION_CLASSES)
  rng = np.random.default_rng(seed)

  def shuffled(tok):
    perm = np.argsort(rng.random(tok.shape[:2]), axis=1)
    return np.take_along_axis(tok, perm[:, :, None], axis=1)

  variants = {
      "sequence": (tok_tr.reshape(n, -1), tok_te.reshape(len(tok_te), -1)),
      "mean": (tok_tr.mean(1), tok_te.mean(1)),
      "sequence_shuffled_test": (tok_tr.reshape(n, -1), shuffled(tok_te).reshape(len(tok_te), -1)),
      "sequence_shuffled_both": (shuffled(tok_tr).reshape(n, -1), shuffled(tok_te).reshape(len(tok_te), -1)),
  }
  for name, (a, b) in variants.items():
    acc, scores = ridge_classify(a, d_tr["action"], b, d_te["action"], k)
    m = metrics({"action": scores, **{h: np.zeros((len(b), 1)) for h in HEADS if h != "action"}},
                {**d_te})
    res[f"action_{name}"] = {"top1": acc, **{p: m[p] for p in m if "/" in p}}
  return res


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

def _load(args) -> dict[str, dict[str, np.ndarray]]:
  sets = {"train": args.train}
  for name in ("test", "geometry", "scene"):
    sets[name] = args.eval
  t0 = time.perf_counter()
  out = {name: render_set(name, n, args.data_seed, args.res, args.frames, args.cache)
         for name, n in sets.items()}
  counts = ", ".join(f"{k} {len(v['action'])}" for k, v in out.items())
  print(f"data: {counts} ({time.perf_counter() - t0:.0f} s)", flush=True)
  return out


def _mc(args, design: str) -> ModelConfig:
  return ModelConfig(design=design, res=args.res, patch=args.patch, width=args.width,
                     layers=args.layers, frames=args.frames)


def cmd_probe(args) -> dict[str, Any]:
  import jax
  data = _load(args)
  results: dict[str, Any] = {}
  for tower in [t for t in args.towers.split(",") if t]:
    design = "tf" if tower == "untrained" else tower
    mc = _mc(args, design)
    if tower == "untrained":
      model = build_model(mc)
      x0 = np.zeros((2,) + data["train"]["pixels"].shape[1:], np.float32)
      params = _unbox(model.init(jax.random.PRNGKey(args.seed), x0)["params"])
    else:
      model, params, secs = train(mc, data["train"], steps=args.steps, seed=args.seed,
                                  log_every=args.log_every)
      print(f"{tower}: trained in {secs:.0f} s", flush=True)
    _, tok_tr = predict(model, params, data["train"]["pixels"])
    _, tok_te = predict(model, params, data["test"]["pixels"])
    results[tower] = probe_tokens(tok_tr, data["train"], tok_te, data["test"], args.seed)
    if tower != "untrained":
      logits, _ = predict(model, params, data["test"]["pixels"])
      results[tower]["end_to_end"] = metrics(logits, data["test"])
      logits, _ = predict(model, params, data["test"]["pixels"], shuffle_seed=args.seed)
      results[tower]["end_to_end_shuffled_test"] = metrics(logits, data["test"])
    print(json.dumps({tower: results[tower]}, indent=1), flush=True)
  # The pixels themselves (8x8 box-pooled frames), as a reference for the tokens.
  def pooled_pixels(p):
    n, t, h, w, c = p.shape
    return p.reshape(n, t, 8, h // 8, 8, w // 8, c).mean((3, 5)).reshape(n, t, -1).astype(np.float32)
  results["pixels_8x8"] = probe_tokens(pooled_pixels(data["train"]["pixels"]), data["train"],
                                       pooled_pixels(data["test"]["pixels"]), data["test"], args.seed)
  print(json.dumps({"pixels_8x8": results["pixels_8x8"]}, indent=1), flush=True)
  return results


def cmd_compare(args) -> dict[str, Any]:
  data = _load(args)
  seeds = [int(s) for s in args.seeds.split(",")]
  results: dict[str, Any] = {}
  if args.out and os.path.exists(args.out) and args.resume:
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f).get("runs", {})
  for design in args.designs.split(","):
    for seed in seeds:
      key = f"{design}/p{args.patch}/r{args.res}/seed{seed}"
      if key in results:
        continue
      mc = _mc(args, design)
      model, params, secs = train(mc, data["train"], steps=args.steps, seed=seed,
                                  shuffle_frames=args.shuffle_train, log_every=args.log_every)
      row: dict[str, Any] = {"seconds": round(secs, 1)}
      for name in ("test", "geometry", "scene"):
        logits, _ = predict(model, params, data[name]["pixels"])
        row[name] = metrics(logits, data[name])
      logits, tok_te = predict(model, params, data["test"]["pixels"], shuffle_seed=seed)
      row["test_shuffled"] = metrics(logits, data["test"])
      if args.probe and seed == seeds[0] and tok_te is not None:
        # Probes of this trained tower's per-frame pooled tokens (frames in order).
        _, tok_tr = predict(model, params, data["train"]["pixels"])
        _, tok_te = predict(model, params, data["test"]["pixels"])
        row["probe"] = probe_tokens(tok_tr, data["train"], tok_te, data["test"], seed)
      results[key] = row
      print(key, json.dumps(row), flush=True)
      if args.out:
        _save(args.out, {"args": vars(args), "runs": results})
  summary = summarise(results)
  print(format_table(summary), flush=True)
  return {"args": vars(args), "runs": results, "summary": summary}


def summarise(runs: dict[str, Any]) -> dict[str, Any]:
  """Mean and std over seeds for every (design, set, metric)."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for key, row in runs.items():
    groups.setdefault(key.rsplit("/seed", 1)[0], []).append(row)
  out = {}
  for name, rows in groups.items():
    out[name] = {"seeds": len(rows), "seconds": float(np.mean([r["seconds"] for r in rows]))}
    for split in ("test", "geometry", "scene", "test_shuffled"):
      out[name][split] = {m: (float(np.mean([r[split][m] for r in rows])),
                              float(np.std([r[split][m] for r in rows])))
                          for m in rows[0][split]}
  return out


def format_table(summary: dict[str, Any]) -> str:
  cols = ["action", "left/right", "up/down", "grows/shrinks", "appears/disappears", "colour", "shape", "size"]
  lines = []
  for split in ("test", "geometry", "scene", "test_shuffled"):
    lines.append(f"\n{split}\n| design | seeds | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for name, s in summary.items():
      cells = [f"{s[split][c][0]:.1f} ± {s[split][c][1]:.1f}" for c in cols]
      lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _save(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".part"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("command", choices=("probe", "compare"))
  p.add_argument("--out", default="")
  p.add_argument("--cache", default="/tmp/t5video_probe_temporal")
  p.add_argument("--train", type=int, default=1024, help="training clips")
  p.add_argument("--eval", type=int, default=256, help="clips per evaluation set")
  p.add_argument("--data-seed", type=int, default=0)
  p.add_argument("--res", type=int, default=64)
  p.add_argument("--patch", type=int, default=16)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--designs", default=",".join(DESIGNS))
  p.add_argument("--shuffle-train", action="store_true", help="train on shuffled frames")
  p.add_argument("--resume", action="store_true", help="skip runs already in --out")
  p.add_argument("--probe", action="store_true",
                 help="compare: also probe the first seed's per-frame tokens")
  p.add_argument("--towers", default="untrained,mean,tf",
                 help="probe: which towers (untrained, or a design trained first)")
  p.add_argument("--log-every", type=int, default=0)
  args = p.parse_args(argv)
  result = cmd_probe(args) if args.command == "probe" else cmd_compare(args)
  if args.out:
    _save(args.out, result if args.command == "compare" else {"args": vars(args), "probe": result})
  return 0


if __name__ == "__main__":
  sys.exit(main())
