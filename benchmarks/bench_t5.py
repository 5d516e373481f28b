"""T5 training-step speed: t5video (JAX/Flax) against HF PyTorch on the same machine.

One step = forward + backward + AdamW update of a t5-small-sized model
(d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 32128, ReLU, tied) on
batch 8 x 128 input / 32 target tokens, dropout 0.1 active in both. Ours is one
jitted step with the train state donated; the reference is
``T5ForConditionalGeneration`` + ``torch.optim.AdamW``. Both see the same
token ids. After warm-up, measurements alternate between the two frameworks in
rounds (so load drifts on a shared machine hit both alike) and the median step
time of each is printed with the ratio ours / torch (issue #18's goal: <= 0.67). Ours runs once
per ``--dropout-rng`` (default: the hashed dropout t5video uses, then Flax's threefry
``nn.Dropout``), so the effect of the dropout masks' generator is measured in the same run.

Run::

  .venv/bin/python benchmarks/bench_t5.py                 # CPU, fp32, both frameworks
  .venv/bin/python benchmarks/bench_t5.py --dtype bfloat16 --no-torch   # e.g. on a GPU
  .venv/bin/python benchmarks/bench_t5.py --steps 5 --rounds 2 --layers 2  # quick look

On an accelerator it also prints model FLOPs utilisation (matmul FLOPs per step
over the device's peak, pass --peak-tflops).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--src-len", type=int, default=128)
  p.add_argument("--tgt-len", type=int, default=32)
  p.add_argument("--layers", type=int, default=6, help="encoder and decoder blocks each")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5, help="steps per round and framework")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--scan", action="store_true", help="scan_layers=True")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--dropout-rng", default="hash,threefry",
                 help="comma-separated T5Config.dropout_rng values, each timed as its own 'ours' "
                      "(the first is the default's; 'threefry' is Flax's nn.Dropout)")
  p.add_argument("--threads", type=int, default=None,
                 help="1: single-threaded XLA CPU and torch (robust to a loaded machine); "
                      "default: each framework's own thread pool")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="device peak for MFU (e.g. 989 for H100 bf16 dense)")
  return p.parse_args()


def make_inputs(args, vocab: int):
  rng = np.random.RandomState(0)
  ids = rng.randint(2, vocab, size=(args.batch, args.src_len)).astype(np.int64)
  labels = rng.randint(2, vocab, size=(args.batch, args.tgt_len)).astype(np.int64)
  return ids, labels


class Ours:
  """t5video T5 with optax AdamW in one donated, jitted step."""

  def __init__(self, args, ids, labels, dropout_rng="hash"):
    import jax
    import jax.numpy as jnp
    import optax
    import flax.linen as nn

    from t5video.models import t5

    self.jax = jax
    cfg = t5.T5Config.variant("t5-small", num_layers=args.layers, dropout_rate=0.1,
                              dtype=jnp.dtype(args.dtype), scan_layers=args.scan,
                              remat=args.remat, dropout_rng=dropout_rng)
    self.cfg = cfg
    model = t5.T5ForConditionalGeneration(cfg)
    self.ids = jnp.asarray(ids, jnp.int32)
    self.labels = jnp.asarray(labels, jnp.int32)
    self.mask = jnp.ones_like(self.ids)
    dec = t5.shift_right(self.labels, cfg.decoder_start_token_id, cfg.pad_token_id)
    self.dec = dec
    params = jax.jit(lambda r: nn.unbox(model.init(r, input_ids=self.ids[:1, :4],
                                                   decoder_input_ids=dec[:1, :4])["params"]))(
        jax.random.PRNGKey(0))
    self.n_params = t5.param_count(params)
    # Matmul FLOPs per step ~ 6 x (params a token passes through) per token; attention
    # scores are left out. Encoder tokens see the encoder, target tokens the decoder + head.
    head = cfg.vocab_size * cfg.d_model
    self.flops = 6 * (t5.param_count(params["encoder"]) * ids.size
                      + (t5.param_count(params["decoder"]) + head) * labels.size)
    tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    opt_state = tx.init(params)

    def loss_fn(p, ids, mask, dec, labels, rng):
      logits = model.apply({"params": p}, input_ids=ids, attention_mask=mask,
                           decoder_input_ids=dec, deterministic=False,
                           rngs={"dropout": rng}).logits
      # Fused log-sum-exp cross-entropy (no [batch, tgt, vocab] log-prob gather).
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    def step(state, ids, mask, dec, labels, rng):
      p, o = state
      loss, grads = jax.value_and_grad(loss_fn)(p, ids, mask, dec, labels, rng)
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), loss

    self.step = jax.jit(step, donate_argnums=(0,))
    self.state = (params, opt_state)
    self.rng = jax.random.PRNGKey(1)
    self.i = 0

  def run(self) -> float:
    self.i += 1
    rng = self.jax.random.fold_in(self.rng, self.i)
    t0 = time.perf_counter()
    self.state, loss = self.step(self.state, self.ids, self.mask, self.dec, self.labels, rng)
    loss.block_until_ready()
    dt = time.perf_counter() - t0
    self.last_loss = float(loss)
    return dt


class Torch:
  """HF PyTorch T5ForConditionalGeneration + torch.optim.AdamW."""

  def __init__(self, args, ids, labels, cfg):
    import torch
    import transformers

    self.torch = torch
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout_rate=0.1,
        feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0)
    self.model = transformers.T5ForConditionalGeneration(hf_cfg).train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
    self.ids = torch.tensor(ids)
    self.mask = torch.ones_like(self.ids)
    self.labels = torch.tensor(labels)

  def run(self) -> float:
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    out = self.model(input_ids=self.ids, attention_mask=self.mask, labels=self.labels)
    out.loss.backward()
    self.opt.step()
    dt = time.perf_counter() - t0
    self.last_loss = float(out.loss.detach())
    return dt


def main():
  args = parse_args()
  if args.threads == 1:
    import os
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  import jax
  ours_dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {ours_dev.platform} ({ours_dev.device_kind}); "
        f"batch {args.batch}, {args.src_len} in / {args.tgt_len} out, {args.layers}+{args.layers} layers, "
        f"{args.dtype}, scan={args.scan}, remat={args.remat}")
  ids, labels = make_inputs(args, 32128)
  variants = {}
  for impl in [v for v in args.dropout_rng.split(",") if v]:
    t0 = time.perf_counter()
    name = f"ours[{impl}]"
    ours = variants[name] = Ours(args, ids, labels, dropout_rng=impl)
    ours.run()
    print(f"{name}: {ours.n_params / 1e6:.1f}M params, init + compile + first step "
          f"{time.perf_counter() - t0:.1f}s, loss {ours.last_loss:.3f}")
  first = next(iter(variants))
  ref = None
  if not args.no_torch:
    import torch
    if args.threads:
      torch.set_num_threads(args.threads)
    ref = Torch(args, ids, labels, variants[first].cfg)
    n = sum(p.numel() for p in ref.model.parameters())
    print(f"torch {torch.__version__}: {n / 1e6:.1f}M params, {torch.get_num_threads()} threads")
    variants["torch"] = ref
  for _ in range(args.warmup):
    for v in variants.values():
      v.run()
  times = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, v in variants.items():
      times[name] += [v.run() for _ in range(args.steps)]
  med = {name: statistics.median(t) for name, t in times.items()}
  for name, v in variants.items():
    print(f"{name:<16} median step {med[name] * 1e3:8.1f} ms  (n={len(times[name])}, "
          f"min {min(times[name]) * 1e3:.1f}, loss {v.last_loss:.3f})")
  flops = variants[first].flops
  for name in variants:
    if name != "torch" and ref:
      print(f"ratio {name}/torch = {med[name] / med['torch']:.3f}  (goal <= 0.67)")
  print("approx matmul TFLOP/s: " + ", ".join(f"{name} {flops / med[name] / 1e12:.3f}" for name in variants))
  if args.peak_tflops:
    print(f"MFU {first} = {flops / med[first] / 1e12 / args.peak_tflops:.1%}")


if __name__ == "__main__":
  main()
