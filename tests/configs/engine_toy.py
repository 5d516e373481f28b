"""Config of the engine's toy task (tests/engine_toy.py): a few seconds on CPU.

Run it (from the repository root):
  PYTHONPATH=tests python -m engine_toy --workdir /tmp/toy
or, once the CLI is wired:
  t5video train --config tests/configs/engine_toy.py --workdir /tmp/toy
"""

from __future__ import annotations

import ml_collections

from t5video.train import trainer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the toy config; ``arg='fsdp'`` uses a (2, 2, 2) mesh; ``arg='staged'`` trains a first
  stage (this config with another seed, in <workdir>/first) before the run itself."""
  c = trainer.default_config()
  c.task = "engine_toy:ToyTask"
  c.seed = 0
  c.mesh.shape = (2, 2, 2) if arg == "fsdp" else (-1, 1, 1)
  c.train.num_steps = 20
  c.train.batch_size = 16
  c.train.log_every = 1
  c.train.checkpoint_every = 10
  c.train.max_to_keep = 2
  c.train.max_nonfinite = 3
  c.train.progress = False
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 2
  c.optim.weight_decay = 1e-4
  c.model = ml_collections.ConfigDict({
      "embed": 16, "mlp": 32, "classes": 8, "length": 4,
      # Multiplies the loss: set to nan/inf to exercise non-finite handling.
      "loss_scale": 1.0,
  })
  c.data = ml_collections.ConfigDict({
      "num_examples": 256,
      # Seconds each batch takes to "load" (slows the run for kill tests).
      "delay_s": 0.0,
      "num_eval": 32,
      # Global batches in one order for any process count (the multi-host tests).
      "global_order": False,
      # With global_order: a folder where each process logs the example ids it reads.
      "indices_log": "",
  })
  if arg == "staged":
    c.stages = ({"name": "first", "config": __file__, "workdir": "first",
                 "overrides": {"seed": 1, "train": {"num_steps": 8, "checkpoint_every": 4}}},)
  return c
