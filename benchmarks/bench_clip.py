"""CLIP vision forward: t5video (jit) against HF PyTorch on the same CPU and the same inputs.

A randomly initialised HF ``CLIPVisionModelWithProjection`` of the chosen size
is converted with :func:`t5video.models.convert_clip.clip_from_hf`, so both
sides hold the same weights. Input: one video of ``--frames`` frames at
``--size``² (t5video takes ``[1, T, H, W, 3]`` NHWC and folds the frames into
the batch; PyTorch takes the same pixels as ``[T, 3, H, W]``). Both compute
every hidden state and the projected embedding. After warm-up the two are
timed alternately (so background load hits both alike) and the medians and
the ratio ours / torch are printed.

It also prints the roofline: each framework's own attainable fp32 matmul rate on this machine
(``--matmul-size``² x ``--matmul-size``², timed the same way) and the forward's rate (its FLOPs
from XLA's cost analysis of our jitted forward, the same count for both sides) as a share of
it. When both sides run the forward near their matmul ceiling, the ratio ours / torch cannot
fall much below ``torch ceiling / ours ceiling`` whatever either side does (docs/performance.md).

Run (from the repository root)::

  .venv/bin/python benchmarks/bench_clip.py                 # B/32, 8 frames of 224², 20 runs
  .venv/bin/python benchmarks/bench_clip.py --variant B/16 --runs 10
  .venv/bin/python benchmarks/bench_clip.py --dtype bfloat16  # our compute dtype (torch stays fp32)
  .venv/bin/python benchmarks/bench_clip.py --single-thread   # 1 thread each: less sensitive to other load
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="B/32", help="a key of t5video.models.clip.VARIANTS")
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--dtype", default="float32", help="t5video compute dtype")
  parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
  parser.add_argument("--matmul-size", type=int, default=2048, help="square fp32 matmul for the ceiling")
  parser.add_argument("--single-thread", action="store_true",
                      help="one thread on both sides (XLA's Eigen pool off, torch.set_num_threads(1))")
  args = parser.parse_args()
  if args.single_thread:
    # Must precede the first JAX import.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()
    args.torch_threads = 1

  import jax
  import numpy as np
  import torch
  import transformers

  from t5video.models import clip, convert_clip

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  vision = clip.CLIPVisionConfig.from_variant(args.variant)
  hf_config = transformers.CLIPVisionConfig(**vision.to_hf())
  torch.manual_seed(0)
  hf = transformers.CLIPVisionModelWithProjection(hf_config).eval()
  state_dict = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  module, params = convert_clip.clip_from_hf(
      state_dict, {**hf_config.to_dict(), "architectures": ["CLIPVisionModelWithProjection"]}, dtype=args.dtype)
  params = jax.device_put(params)

  pixels = np.random.default_rng(0).normal(size=(1, args.frames, args.size, args.size, 3)).astype(np.float32)
  ours_x = jax.device_put(pixels)
  torch_x = torch.from_numpy(np.ascontiguousarray(pixels[0].transpose(0, 3, 1, 2)))  # [T, 3, H, W]

  forward = jax.jit(lambda p, x: module.apply({"params": p}, x))

  def run_ours():
    return jax.block_until_ready(forward(params, ours_x))

  def run_torch():
    with torch.inference_mode():
      return hf(pixel_values=torch_x)

  t0 = time.perf_counter()
  ours_out = run_ours()
  compile_s = time.perf_counter() - t0
  torch_out = run_torch()
  diff = float(np.max(np.abs(np.asarray(ours_out.image_embeds, np.float32)[0] - torch_out.image_embeds.numpy())))
  for _ in range(args.warmup):
    run_ours()
    run_torch()

  ours_t, torch_t = [], []
  for _ in range(args.runs):
    t0 = time.perf_counter()
    run_ours()
    t1 = time.perf_counter()
    run_torch()
    t2 = time.perf_counter()
    ours_t.append(t1 - t0)
    torch_t.append(t2 - t1)
  ours_med, torch_med = statistics.median(ours_t), statistics.median(torch_t)

  print(f"CLIP ViT-{args.variant} vision forward, {args.frames} frames of {args.size}x{args.size}, "
        f"{args.runs} runs after {args.warmup} warm-up")
  print(f"  CPU cores visible: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"t5video compute dtype: {args.dtype}")
  print(f"  first call (compile) t5video: {compile_s:.2f} s; max |image_embeds diff| vs torch: {diff:.2e}")
  print(f"  t5video (jit) median: {ours_med * 1e3:8.1f} ms   (min {min(ours_t) * 1e3:.1f})")
  print(f"  torch         median: {torch_med * 1e3:8.1f} ms   (min {min(torch_t) * 1e3:.1f})")
  print(f"  ratio ours/torch: {ours_med / torch_med:.3f}")

  # The roofline: each side's attainable matmul rate, and the forward's share of it.
  flops = float(forward.lower(params, ours_x).compile().cost_analysis()["flops"])
  n = args.matmul_size
  a = jax.device_put(np.ones((n, n), np.float32))
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  ta = torch.ones(n, n)
  _ = ta @ ta
  mm_ours, mm_torch = [], []
  for _ in range(max(5, args.runs // 2)):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    t1 = time.perf_counter()
    _ = ta @ ta
    t2 = time.perf_counter()
    mm_ours.append(t1 - t0)
    mm_torch.append(t2 - t1)
  peak_ours = 2 * n ** 3 / statistics.median(mm_ours) / 1e9
  peak_torch = 2 * n ** 3 / statistics.median(mm_torch) / 1e9
  rate_ours, rate_torch = flops / ours_med / 1e9, flops / torch_med / 1e9
  print(f"  roofline: forward {flops / 1e9:.1f} GFLOP (XLA cost analysis); fp32 {n}^2 matmul ceiling "
        f"t5video {peak_ours:.0f} GFLOP/s, torch {peak_torch:.0f} GFLOP/s")
  print(f"  forward rate: t5video {rate_ours:.0f} GFLOP/s ({rate_ours / peak_ours:.0%} of its ceiling), "
        f"torch {rate_torch:.0f} GFLOP/s ({rate_torch / peak_torch:.0%} of its ceiling)")
  print(f"  lowest ratio ours/torch with ours at its ceiling: {rate_torch / peak_ours:.3f}")


if __name__ == "__main__":
  main()
