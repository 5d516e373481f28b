"""A small but real Task for the engine's tests: a residual MLP classifier.

Data: a deterministic in-memory array source (features and labels drawn from a
fixed seed) read through a Grain ``MapDataset`` pipeline (per-process shard →
shuffle → repeat → batch), so checkpoints hold a real Grain iterator state.
Model: ``Dense`` layers with logical axes and a LayerNorm, activations
constrained with ``nn.with_logical_constraint``.

Every batch carries ``index`` (the example ids) and the loss reports
``batch_fingerprint`` = sum_i (i + 1) * index_i, which pins down the batch order
in ``metrics.jsonl``.

Run directly: ``PYTHONPATH=tests python -m engine_toy --workdir DIR [--set key=json ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5video.models.layers import Dense
from t5video.train import task as task_lib


class ToyModel(nn.Module):
  """x [batch, len, embed] -> residual MLP -> LayerNorm -> mean over len -> logits."""
  embed: int
  mlp: int
  classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    h = Dense(self.mlp, kernel_axes=("embed", "mlp"), name="mlp_in")(x)
    h = nn.with_logical_constraint(nn.gelu(h), ("act_batch", "act_len", "act_mlp"))
    x = x + Dense(self.embed, kernel_axes=("mlp", "embed"), name="mlp_out")(h)
    x = nn.LayerNorm(name="norm", scale_init=nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(x)
    pooled = x.mean(axis=1)  # [batch, embed]
    logits = Dense(self.classes, kernel_axes=("embed", "vocab"), name="head")(pooled)
    return nn.with_logical_constraint(logits, ("act_batch", "act_vocab"))


class ArraySource:
  """A random-access source over in-memory arrays (Grain's RandomAccessDataSource protocol)."""

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    self.features, self.labels = features, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i):
    i = int(i)
    return {"x": self.features[i], "y": self.labels[i], "index": np.int32(i)}


def make_arrays(num: int, length: int, embed: int, classes: int, seed: int):
  """Features and labels with a learnable rule (labels from a fixed projection)."""
  rs = np.random.RandomState(seed)
  x = rs.normal(size=(num, length, embed)).astype(np.float32)
  w = rs.normal(size=(embed, classes)).astype(np.float32)
  y = np.argmax(x.mean(axis=1) @ w, axis=-1).astype(np.int32)
  return x, y


class ToyTask(task_lib.Task):
  """The engine's test task (see the module docstring)."""

  def __init__(self, config, *, shapes_only: bool = False):
    super().__init__(config, shapes_only=shapes_only)
    m = config.model
    self.model = ToyModel(m.embed, m.mlp, m.classes)

  def init_params(self, rng):
    m = self.config.model
    x = jnp.zeros((1, m.length, m.embed), jnp.float32)
    return self.model.init(rng, x)["params"]

  def batch_spec(self):
    return {"x": ("act_batch", "act_len", "act_embed"), "y": ("act_batch",),
            "index": ("act_batch",)}

  def example_shapes(self):
    m = self.config.model
    return {"x": jax.ShapeDtypeStruct((m.length, m.embed), np.float32),
            "y": jax.ShapeDtypeStruct((), np.int32), "index": jax.ShapeDtypeStruct((), np.int32)}

  def train_loader(self, *, seed, process_index, process_count, batch_size):
    m, d = self.config.model, self.config.data
    x, y = make_arrays(d.num_examples, m.length, m.embed, m.classes, seed=1234)
    if d.get("global_order", False):
      ds = self._global_order(x, y, seed=seed, process_index=process_index,
                              process_count=process_count, batch_size=batch_size)
    else:
      ds = grain.MapDataset.source(ArraySource(x, y))
      ds = ds[process_index::process_count]
      ds = ds.shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)
    it_ds = ds.to_iter_dataset()
    delay = float(d.delay_s)
    if delay:
      # An IterDataset map runs in the consumer's thread on next(): each batch
      # really costs `delay` seconds of the training loop (read-ahead cannot hide it).
      def slow(batch):
        time.sleep(delay)
        return batch
      it_ds = it_ds.map(slow)
    return iter(it_ds)

  def _global_order(self, x, y, *, seed, process_index, process_count, batch_size):
    """Global batches in one order for any process count; each process reads its block.

    Process ``p`` of ``P`` holds rows ``[p*b, (p+1)*b)`` of every global batch of
    ``P*b`` rows (the rows its devices own), so 2 processes x 2 devices see the
    same global batches as 1 process x 4 devices. With ``data.indices_log`` set,
    each process appends ``{"batch": k, "indices": [...]}`` to
    ``<indices_log>/process_<p>.jsonl`` for every batch it reads.
    """
    log = self.config.data.get("indices_log", "")
    order = grain.MapDataset.range(len(y)).shuffle(seed=seed).repeat(None)
    order = order.batch(batch_size * process_count, drop_remainder=True)  # global batches of ids

    def read_block(k, ids):
      mine = np.asarray(ids[process_index * batch_size:(process_index + 1) * batch_size])
      if log:
        os.makedirs(log, exist_ok=True)
        with open(os.path.join(log, f"process_{process_index}.jsonl"), "a") as f:
          f.write(json.dumps({"batch": int(k), "indices": mine.tolist()}) + "\n")
      return {"x": x[mine], "y": y[mine], "index": mine.astype(np.int32)}

    return order.map_with_index(read_block)

  def loss_fn(self, params, batch, rng, *, train):
    del rng, train
    logits = self.model.apply({"params": params}, batch["x"]).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    loss = loss * self.config.model.loss_scale
    position = jnp.arange(1, batch["index"].shape[0] + 1, dtype=jnp.float32)
    fingerprint = jnp.sum(position * batch["index"].astype(jnp.float32))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32))
    return loss, {"accuracy": accuracy, "batch_fingerprint": fingerprint}

  def evaluate(self, params, *, step, workdir):
    """Loss and accuracy on held-out examples, each process evaluating its share."""
    del step, workdir
    from t5video.evaluate import hosts  # pylint: disable=g-import-not-at-top
    m, d = self.config.model, self.config.data
    x, y = make_arrays(d.num_eval, m.length, m.embed, m.classes, seed=4321)
    mine = np.asarray(hosts.share(range(len(y))), np.int64)
    local = hosts.local_params(params)
    logits = jax.jit(lambda p, v: self.model.apply({"params": p}, v))(local, x[mine])
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    losses = logz - logits[np.arange(len(mine)), y[mine]]
    correct = logits.argmax(-1) == y[mine]
    rows = hosts.gather(list(zip(losses.tolist(), correct.tolist())))
    return {"loss": float(np.mean([r[0] for r in rows])),
            "accuracy": float(np.mean([r[1] for r in rows])), "num_examples": len(rows)}


def read_metrics(workdir: str) -> dict[int, dict]:
  """step -> the last training record ``metrics.jsonl`` holds for it (a resumed run re-logs steps)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        out[record["step"]] = record
  return out


def load_config(arg: str | None = None, **overrides):
  """tests/configs/engine_toy.py's config with dotted-key overrides (``train.num_steps=5``)."""
  from t5video import cli  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "engine_toy.py")
  config = cli.load_config_file(path + (f":{arg}" if arg else ""))
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config_arg", default=None)
  parser.add_argument("--set", action="append", default=[],
                      help="KEY=JSON, e.g. train.num_steps=20 (repeatable)")
  args = parser.parse_args()
  config = load_config(args.config_arg, **dict(
      (item.split("=", 1)[0], json.loads(item.split("=", 1)[1])) for item in args.set))
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train(config, args.workdir)
  print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "eval"}), flush=True)


if __name__ == "__main__":
  main()
