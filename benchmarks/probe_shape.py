"""Can the stand-in-sized CLIP vision tower learn the key object's shape from stills at all?

A supervised probe of the question docs/standins.md leaves open: the stand-in CLIP (and every
video model built on it) names shapes at chance. Here the same tower (CLIP ViT, 128 wide,
2 layers, 64x64 stills) is trained directly on shape (8 classes) and size (3) labels of
single-object stills from the synthetic world's renderer, with two linear heads on the pooled
output, and scored on 1000 held-out stills every 250 steps. ``--train-stills N`` draws batches
from a fixed set of N stills (what the stand-in build does); ``--train-stills 0`` renders a
fresh still for every example (no still is seen twice)::

  python benchmarks/probe_shape.py --patch 16 --steps 1500 --train-stills 0
  python benchmarks/probe_shape.py --patch 16 --steps 1500 --train-stills 3500
  python benchmarks/probe_shape.py --patch 8 --steps 1500 --train-stills 0

Plain backgrounds, no distractors, AdamW (peak 1e-3, cosine, weight decay 0.05), batch 64.
Rendering takes about 2 ms a still on one core (96,000 stills for 1500 fresh steps).
"""

from __future__ import annotations

import argparse
import json
import time

SEEDS = {"train": 1, "heldout": 2}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--patch", type=int, default=16)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--train-stills", type=int, default=0, help="a fixed training set of N stills; 0: fresh")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--eval-every", type=int, default=250)
  p.add_argument("--out", default="")
  args = p.parse_args()

  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from t5video.data import synthetic  # pylint: disable=g-import-not-at-top
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from t5video.recipes.standins import data as stills_lib  # pylint: disable=g-import-not-at-top

  def render(num: int, seed: int):
    stills, pixels = [], []
    for start in range(0, num, stills_lib.CHUNK):
      s, px = stills_lib.rendered_chunk(min(stills_lib.CHUNK, num - start), seed * 1_000_003 + start,
                                        max_distractors=0, backgrounds=("plain",))
      stills += s
      pixels.append(px)
    shapes = np.asarray([list(synthetic.SHAPES).index(s.spec.key.shape) for s in stills])
    sizes = np.asarray([list(synthetic.SIZES).index(s.spec.key.size) for s in stills])
    return np.concatenate(pixels), shapes, sizes  # uint8 [N, 64, 64, 3], [N], [N]

  start = time.perf_counter()
  fresh = args.train_stills == 0
  num_train = args.steps * args.batch_size if fresh else args.train_stills
  train_x, train_shape, train_size = render(num_train, SEEDS["train"])
  test_x, test_shape, test_size = render(1000, SEEDS["heldout"])
  print(f"rendered {num_train + 1000} stills in {time.perf_counter() - start:.0f} s", flush=True)

  cfg = clip_lib.CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=64, patch_size=args.patch)

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, pixels):
      pooled = clip_lib.CLIPVisionModel(cfg, name="clip")(pixels).pooler_output  # [B, 128]
      return nn.Dense(len(synthetic.SHAPES), name="shape")(pooled), nn.Dense(len(synthetic.SIZES), name="size")(pooled)

  model = Probe()
  params = model.init(jax.random.PRNGKey(0), clip_lib.clip_preprocess(train_x[:2]))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, min(50, args.steps // 2), args.steps), weight_decay=0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, shape, size):
    def loss_fn(p):
      shape_logits, size_logits = model.apply(p, clip_lib.clip_preprocess(x))
      return (optax.softmax_cross_entropy_with_integer_labels(shape_logits, shape).mean()
              + optax.softmax_cross_entropy_with_integer_labels(size_logits, size).mean())
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def predict(params, x):
    shape_logits, size_logits = model.apply(params, clip_lib.clip_preprocess(x))
    return shape_logits.argmax(-1), size_logits.argmax(-1)

  def evaluate():
    preds = [predict(params, test_x[i:i + 250]) for i in range(0, len(test_x), 250)]
    shape = np.concatenate([np.asarray(a) for a, _ in preds])
    size = np.concatenate([np.asarray(b) for _, b in preds])
    return 100.0 * float((shape == test_shape).mean()), 100.0 * float((size == test_size).mean())

  rng = np.random.default_rng(0)
  history, start = [], time.perf_counter()
  for i in range(args.steps):
    idx = (np.arange(i * args.batch_size, (i + 1) * args.batch_size) if fresh
           else rng.integers(0, num_train, args.batch_size))
    params, opt_state, loss = step(params, opt_state, train_x[idx], train_shape[idx], train_size[idx])
    if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
      shape_acc, size_acc = evaluate()
      history.append({"step": i + 1, "loss": round(float(loss), 3), "shape": round(shape_acc, 1),
                      "size": round(size_acc, 1)})
      print(f"step {i + 1}: loss {float(loss):.3f}, held-out shape {shape_acc:.1f}%, size {size_acc:.1f}% "
            f"({time.perf_counter() - start:.0f} s)", flush=True)
  result = {"patch": args.patch, "steps": args.steps, "train_stills": num_train, "fresh": fresh,
            "chance": {"shape": 100.0 / len(synthetic.SHAPES), "size": 100.0 / len(synthetic.SIZES)},
            "history": history}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
