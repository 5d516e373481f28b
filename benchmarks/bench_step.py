"""CaptionT5's real-size training step on whatever accelerator is here: step time, TFLOP/s, MFU.

The step is configs/captiont5/msrvtt.py's stage 2 (``:stage=2``): a CLIP ViT-B/16 vision tower
and FLAN-T5-base at their published sizes (random weights: nothing is downloaded), LoRA rank
16 on T5's attention queries and values (the config's targets), the 2-layer temporal
transformer and the bridge trained, the rest frozen, 12 frames of 224x224 per clip, bf16 compute over fp32 master weights, AdamW;
the same step function the trainer jits (:func:`t5video.train.step.make_train_step`) and
CaptionT5's loss (:func:`t5video.models.captiont5.caption_loss`). The batch is data-parallel
over the local devices.

It prints the JAX version and the device, the compile time, the median step time of the
timed steps, the model's matmul FLOPs per step (:mod:`t5video.train.flops`, frozen weights
forward only) as TFLOP/s per device and MFU against the chip's peak
(:mod:`t5video.train.chips`), and the ratio of the step time to XLA's roofline of the
compiled step (its FLOPs over the peak, its bytes over the memory bandwidth, the larger).

It imports jax, flax, optax, numpy and t5video's model and step modules only (no
ml-collections, Grain or PyAV), so it runs on an accelerator image without them::

  python benchmarks/bench_step.py                      # the real size, batch 64 per device
  python benchmarks/bench_step.py --batch 32 --steps 20 --remat
  python benchmarks/bench_step.py --size tiny          # seconds on a CPU (a check that it runs)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import t5video  # noqa: E402,F401  (first: it picks the CPU where no accelerator is attached)
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from t5video.models import clip as clip_lib  # noqa: E402
from t5video.models import t5 as t5_lib  # noqa: E402
from t5video.models.captiont5 import CaptionT5, CaptionT5Config, caption_loss  # noqa: E402
from t5video.models.layers import LoraSpec  # noqa: E402
from t5video.models import peft  # noqa: E402
from t5video.models.temporal import TemporalConfig  # noqa: E402
from t5video.train import chips as chips_lib  # noqa: E402
from t5video.train import flops as flops_lib  # noqa: E402
from t5video.train import optim as optim_lib  # noqa: E402
from t5video.train import step as step_lib  # noqa: E402

SIZES = {
    # configs/captiont5/msrvtt.py:stage=2
    "real": dict(clip="B/16", t5="flan-t5-base", frames=12, image=224, text_in=48, text_out=32,
                 temporal=dict(kind="transformer", num_layers=2, num_heads=12), batch=64),
    "tiny": dict(clip="tiny", t5="tiny", frames=2, image=32, text_in=8, text_out=8,
                 temporal=dict(kind="transformer", num_layers=1, num_heads=4), batch=2),
}
LORA = LoraSpec(rank=16, alpha=32.0, targets=r"(SelfAttention|EncDecAttention)/(q|v)$")


def build(size: dict, *, remat: bool, dtype: str):
  vision = clip_lib.CLIPVisionConfig.from_variant(size["clip"], image_size=size["image"], dtype=dtype,
                                                  lora=LORA, remat=remat)
  t5 = t5_lib.T5Config.variant(size["t5"], dtype=dtype, lora=LORA, remat=remat, scan_layers=True)
  temporal = TemporalConfig(**size["temporal"], dtype=jnp.dtype(dtype))
  return CaptionT5(CaptionT5Config(vision=vision, t5=t5, temporal=temporal, lora=LORA))


def batch_of(size: dict, rows: int, vocab: int, rng: np.random.Generator) -> dict:
  t, s = size["frames"], size["image"]
  return {
      "frames": rng.integers(0, 256, (rows, t, s, s, 3), dtype=np.uint8),
      "frame_mask": np.ones((rows, t), np.int32),
      "input_ids": rng.integers(2, vocab, (rows, size["text_in"]), dtype=np.int32),
      "attention_mask": np.ones((rows, size["text_in"]), np.int32),
      "decoder_input_ids": rng.integers(2, vocab, (rows, size["text_out"]), dtype=np.int32),
      "decoder_target": rng.integers(2, vocab, (rows, size["text_out"]), dtype=np.int32),
      "decoder_mask": np.ones((rows, size["text_out"]), np.int32),
      "weight": np.ones((rows,), np.float32),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="real")
  parser.add_argument("--batch", type=int, default=0, help="rows per device (default: the size's)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 untimed)")
  parser.add_argument("--remat", action="store_true", help="recompute each layer in the backward pass")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args(argv)
  size = SIZES[args.size]
  devices = jax.local_devices()
  per_device = args.batch or size["batch"]
  rows = per_device * len(devices)
  print(f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind} ({devices[0].platform})", flush=True)

  model = build(size, remat=args.remat, dtype=args.dtype)
  cfg = model.config
  mesh = Mesh(np.asarray(devices), ("data",))
  rep, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  rng = np.random.default_rng(0)
  batch = batch_of(size, rows, cfg.t5.vocab_size, rng)
  batch = {k: jax.device_put(v, data) for k, v in batch.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}

  def init(key):
    dummy = {k: v[:1] for k, v in batch.items()}
    return model.init({"params": key, "dropout": key}, dummy["input_ids"], dummy["attention_mask"],
                      dummy["decoder_input_ids"], dummy["decoder_mask"],
                      pixel_values=clip_lib.clip_preprocess(dummy["frames"]), frame_mask=dummy["frame_mask"])["params"]

  params = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=rep)(jax.random.PRNGKey(0))
  trainable = peft.trainable_regex("lora", bridge=True)
  ocfg = optim_lib.OptimConfig(name="adamw", learning_rate=3e-4, schedule="cosine", warmup_steps=5,
                               trainable=trainable)
  tx, labels, schedule = optim_lib.make_optimizer(params, ocfg, 1000)

  def loss_fn(p, b, key, *, train):
    return caption_loss(model, p, b, key, train=train)

  step = step_lib.make_train_step(loss_fn, tx, labels, schedule, compute_dtype=jnp.dtype(args.dtype))
  zero = lambda dtype: jax.device_put(np.zeros((), dtype), rep)  # noqa: E731
  state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=rep)(params),
           "step": zero(np.int32), "nonfinite_streak": zero(np.int32), "nonfinite_total": zero(np.int32),
           "stopped": zero(np.bool_)}
  jitted = jax.jit(step, donate_argnums=(0,))
  started = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - started

  for _ in range(2):  # untimed: first transfers, autotuning
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics["loss"])
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)

  flags = jax.tree_util.tree_map(lambda l: l != optim_lib.FROZEN, labels)
  abstract_params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  model_flops = flops_lib.matmul_flops(
      lambda p, b: loss_fn(optim_lib.cast_floating(p, jnp.dtype(args.dtype)), b, jax.random.PRNGKey(0),
                           train=True)[0],
      (abstract_params, abstract_batch), (flags, jax.tree_util.tree_map(lambda _: False, abstract_batch))).total
  chip = chips_lib.chip(devices[0].device_kind)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  xla_flops, xla_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  result = {
      "jax": jax.__version__, "device": devices[0].device_kind, "devices": len(devices),
      "size": args.size, "rows_per_device": per_device, "dtype": args.dtype, "remat": args.remat,
      "compile_s": compile_s, "step_s": step_s, "step_s_all": times,
      "model_flops_per_step": model_flops,
      "tflops_per_device": model_flops / step_s / len(devices) / 1e12,
      "xla_flops_per_device": xla_flops, "xla_bytes_per_device": xla_bytes,
      "loss": float(metrics["loss"]),
  }
  if chip is not None:
    roofline = max(xla_flops / chip.peak_flops, xla_bytes / chip.hbm_bytes_per_s if chip.hbm_bytes_per_s else 0)
    result.update(peak_tflops=chip.peak_flops / 1e12,
                  mfu=model_flops / len(devices) / step_s / chip.peak_flops,
                  roofline_step_s=roofline, step_over_roofline=step_s / roofline if roofline else None)
  print(f"compile {compile_s:.1f} s; step {1e3 * step_s:.1f} ms (median of {len(times)}); "
        f"{rows} rows ({per_device} per device); model {model_flops / 1e12:.2f} TFLOP/step = "
        f"{result['tflops_per_device']:.1f} TFLOP/s per device", flush=True)
  if chip is not None:
    print(f"MFU {100 * result['mfu']:.1f}% of {chip.peak_flops / 1e12:.0f} TFLOP/s; XLA's roofline "
          f"{1e3 * result['roofline_step_s']:.1f} ms: the step takes {result['step_over_roofline']:.2f}x it")
  else:
    print(f"no published peak for {devices[0].device_kind!r} (t5video/train/chips.py): no MFU")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
