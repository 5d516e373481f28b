"""What the input pipeline costs a training run: steps/s fed by the run's own loader against the
same step fed one batch kept in device memory, measured in alternating rounds in one process.

On an accelerator the host prepares batches while the device computes, so the loader costs
only the time the device waits. On a CPU-only machine the loader's threads also take cores
from XLA's compute threads, a cost no idle-time figure shows; this benchmark measures both at
once (``cost = 1 - pipeline / in-memory``). The trainer's own end-of-run line reports the
device's idle time and the host's time in the pipeline.

  python benchmarks/bench_input.py --workdir runs/demo        # a finished (or started) run
  python benchmarks/bench_input.py --workdir runs/demo --steps 60 --rounds 3

The run's ``config.json`` is read as it is (recipe, data, batch size, frozen parameters); the
parameters are freshly initialised (a step costs the same either way) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a run whose config.json is benchmarked")
  p.add_argument("--steps", type=int, default=60, help="steps per round and feeding mode")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (pipeline, in-memory, ...)")
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--out", default="", help="also write the figures to this JSON file")
  args = p.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from t5video import config as config_lib  # pylint: disable=g-import-not-at-top
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top

  config = config_lib.load_run_config(args.workdir)
  engine = trainer.Engine.create(config)
  engine.task.workdir = args.workdir
  batch_size = config.train.batch_size // jax.process_count()
  it = engine.task.train_loader(seed=config.seed, process_index=jax.process_index(),
                                process_count=jax.process_count(), batch_size=batch_size)
  state = engine.init_state()
  fixed = engine.global_batch(next(it))
  for _ in range(args.warmup):  # compile, and fill the loader's caches and buffers
    state, _ = engine.train_step(state, engine.global_batch(next(it)))
  jax.block_until_ready(state)

  def run(feed) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(args.steps):
      state, _ = engine.train_step(state, feed())
    jax.block_until_ready(state)
    return args.steps / (time.perf_counter() - start)

  rates = {"pipeline": [], "in_memory": []}
  for r in range(args.rounds):
    rates["pipeline"].append(run(lambda: engine.global_batch(next(it))))
    rates["in_memory"].append(run(lambda: fixed))
    print(f"round {r + 1}: pipeline {rates['pipeline'][-1]:.2f} steps/s, "
          f"in memory {rates['in_memory'][-1]:.2f} steps/s", flush=True)
  pipe, mem = float(np.mean(rates["pipeline"])), float(np.mean(rates["in_memory"]))
  result = {"workdir": args.workdir, "task": config.task, "batch_size": config.train.batch_size,
            "steps_per_round": args.steps, "rounds": args.rounds, "steps_per_sec": rates,
            "pipeline_steps_per_sec": pipe, "in_memory_steps_per_sec": mem,
            "input_cost": 1.0 - pipe / mem, "cpu_count": os.cpu_count(),
            "device": jax.devices()[0].device_kind}
  print(f"pipeline / in-memory = {pipe / mem:.3f} (input pipeline cost {100 * (1 - pipe / mem):.1f}% "
        f"of the step rate; {pipe:.2f} vs {mem:.2f} steps/s, {args.rounds} x {args.steps} steps each)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
