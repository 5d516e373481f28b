"""The two pretraining loops: CLIP on captioned stills (symmetric InfoNCE), T5 on
span corruption.

Both run a compact jitted loop here rather than :mod:`t5video.train.trainer`.
The trainer's contract (a Grain iterator with ``get_state``/``set_state``,
Orbax checkpoints, a workdir with ``config.json``, one model per run) buys
resumption and sharding, which a build of a few minutes on one CPU does not
need: its corpora are numpy arrays in memory, it is atomic (a killed build
starts again from nothing, see :mod:`.cache`), and it trains two models. What
the trainer would share is shared: the optimizer (:func:`t5video.train.optim.
make_optimizer`: AdamW, warm-up + cosine, decay mask, clipping), the losses
(:func:`t5video.models.vificlip.info_nce`) and the models themselves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from t5video.models import clip as clip_lib
from t5video.models import t5 as t5_lib
from t5video.models import vificlip as vifi
from t5video.train import optim as optim_lib

Log = Callable[[str], None]

# CLIP clamps its temperature at 100 (logit_scale = log 100).
MAX_LOGIT_SCALE = math.log(100.0)


def _as_dict(section) -> dict:
  d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def optimizer_config(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict) -> optim_lib.OptimConfig:
  """The shared ``optim`` section with the stage's peak learning rate and warm-up."""
  return dataclasses.replace(optim_lib.OptimConfig.from_config(config.optim),
                             learning_rate=float(stage.learning_rate), warmup_steps=int(stage.warmup_steps))


class Jit:
  """``jax.jit(fn)`` compiled once per input structure and shapes, with XLA options.

  ``fast_compile``: XLA's CPU backend at optimisation level 0, which compiles in
  about half the time and runs slower (for tiny configs, where compiling dominates).
  """

  def __init__(self, fn: Callable, fast_compile: bool = False):
    self._jitted = jax.jit(fn)
    self._options = {"xla_backend_optimization_level": 0} if fast_compile else None
    self._compiled: dict = {}

  def __call__(self, *args):
    leaves, tree = jax.tree_util.tree_flatten(args)
    key = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves))
    if key not in self._compiled:
      self._compiled[key] = self._jitted.lower(*args).compile(compiler_options=self._options)
    return self._compiled[key](*args)


def fit(loss_fn, params, *, optim_cfg: optim_lib.OptimConfig, steps: int, next_batch: Callable[[int], dict],
        rng: jax.Array, name: str, log: Log, log_every: int = 50, fast_compile: bool = False,
        post_update: Optional[Callable] = None) -> tuple[dict, list[dict]]:
  """Runs ``steps`` jitted optimizer steps of ``loss_fn(params, batch, rng) -> (loss, metrics)``.

  Returns ``(params, history)``; ``history`` holds ``{step, loss, seconds}`` every
  ``log_every`` steps and at the last one (seconds include compiling the step).
  """
  tx, _, schedule = optim_lib.make_optimizer(params, optim_cfg, steps)
  opt_state = tx.init(params)

  def step(params, opt_state, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if post_update is not None:
      params = post_update(params)
    return params, opt_state, loss, metrics

  step = Jit(step, fast_compile)
  history, t0, running = [], time.perf_counter(), []
  for i in range(steps):
    params, opt_state, loss, metrics = step(params, opt_state, next_batch(i), jax.random.fold_in(rng, i))
    running.append(loss)
    if (i + 1) % log_every == 0 or i + 1 == steps:
      mean = float(np.mean(jax.device_get(running)))
      running = []
      seconds = time.perf_counter() - t0
      history.append({"step": i + 1, "loss": round(mean, 4), "seconds": round(seconds, 1)})
      extra = " ".join(f"{k} {float(v):.3g}" for k, v in jax.device_get(metrics).items())
      log(f"{name} step {i + 1}/{steps}: loss {mean:.4f} lr {float(schedule(i)):.2e} {extra} "
          f"({seconds:.0f} s)")
  return params, history


def _epoch_sampler(n: int, batch_size: int, seed: int, group: int = 1) -> Callable[[int], np.ndarray]:
  """Step -> row indices; each epoch a fresh permutation, the last partial batch dropped.

  ``group``: rows ``group * i ... group * i + group - 1`` always share a batch
  (minimal pairs of stills with ``group=2``).
  """
  groups, per_batch = n // group, batch_size // group
  per_epoch = groups // per_batch
  perms: dict[int, np.ndarray] = {}

  def indices(step: int) -> np.ndarray:
    epoch, k = divmod(step, per_epoch)
    if epoch not in perms:
      perms.clear()
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(groups)
    first = perms[epoch][k * per_batch:(k + 1) * per_batch] * group  # [per_batch]
    return (first[:, None] + np.arange(group)).reshape(-1)  # [per_batch * group]

  return indices


# =============================================================================
# CLIP
# =============================================================================

def clip_model(config: ml_collections.ConfigDict, text_overrides: dict) -> clip_lib.CLIPModel:
  """The CLIP of ``config.clip`` with the tokenizer's vocabulary and special ids."""
  c = config.clip
  dtype = config.train.dtype
  vision = clip_lib.CLIPVisionConfig(**_as_dict(c.vision), dtype=dtype)
  text = clip_lib.CLIPTextConfig(**{**_as_dict(c.text), **text_overrides}, dtype=dtype)
  return clip_lib.CLIPModel(vision, text, projection_dim=int(c.projection_dim))


def train_clip(config: ml_collections.ConfigDict, model: clip_lib.CLIPModel, pixels: np.ndarray,
               caption_ids: np.ndarray, caption_mask: np.ndarray, *, seed: int, log: Log
               ) -> tuple[dict, dict, list[dict]]:
  """Contrastive pretraining on stills.

  Args:
    config: the stand-ins config.
    model: from :func:`clip_model`.
    pixels: uint8 ``[N, H, W, 3]``.
    caption_ids, caption_mask: int32 ``[N, K, L]``: K captions per still; each
      step takes one at random per still.
    seed: seeds init, batches and caption choice.
    log: progress lines.

  Returns:
    ``(initial params, trained params, history)``.
  """
  c = config.clip
  n, k, length = caption_ids.shape
  rng = jax.random.PRNGKey(seed)
  fast = bool(config.xla_fast_compile)
  init_params = nn.unbox(Jit(lambda r: model.init(
      r, jnp.zeros((1, length), jnp.int32), jnp.zeros((1,) + pixels.shape[1:], jnp.float32),
      jnp.ones((1, length), jnp.int32)), fast)(rng)["params"])

  def loss_fn(params, batch, rng):
    del rng
    variables = {"params": params}
    # [B, H, W, 3] uint8 -> [B, P] ; [B, L] -> [B, P]
    images = model.apply(variables, clip_lib.clip_preprocess(batch["pixels"]),
                         method=clip_lib.CLIPModel.get_image_features)
    texts = model.apply(variables, batch["ids"], batch["mask"], method=clip_lib.CLIPModel.get_text_features)
    scale = jnp.exp(params["logit_scale"].astype(jnp.float32))
    loss, logits = vifi.info_nce(vifi.l2_normalize(images), vifi.l2_normalize(texts), scale)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.arange(logits.shape[0]))  # image -> text top-1
    return loss, {"temperature": scale, "i2t_top1": accuracy}

  def clamp(params):
    return {**params, "logit_scale": jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)}

  # Minimal pairs (config.stills.twins) are rows 2i, 2i + 1: one batch holds both.
  sampler = _epoch_sampler(n, int(c.batch_size), seed, group=2 if config.stills.twins else 1)

  def next_batch(step):
    idx = sampler(step)
    pick = np.random.default_rng([seed, 1, step]).integers(k, size=len(idx))
    return {"pixels": pixels[idx], "ids": caption_ids[idx, pick], "mask": caption_mask[idx, pick]}

  params, history = fit(loss_fn, init_params, optim_cfg=optimizer_config(config, c), steps=int(c.steps),
                        next_batch=next_batch, rng=rng, name="clip", log=log,
                        log_every=int(config.log_every), fast_compile=fast, post_update=clamp)
  return init_params, params, history


# =============================================================================
# T5
# =============================================================================

def t5_config(config: ml_collections.ConfigDict, vocab_size: int, *, pretraining: bool) -> t5_lib.T5Config:
  """The T5 of ``config.t5.model`` for a tokenizer of ``vocab_size`` ids (rounded up to 128,
  as T5's 32128). ``pretraining``: dropout ``t5.pretrain_dropout``, else the model's own."""
  fields = _as_dict(config.t5.model)
  fields["vocab_size"] = -(-int(vocab_size) // 128) * 128
  if pretraining:
    fields["dropout_rate"] = float(config.t5.pretrain_dropout)
  return t5_lib.T5Config(**fields, dtype=config.train.dtype)


def token_losses(model: t5_lib.T5ForConditionalGeneration, params, inputs, targets, *,
                 deterministic: bool = True, rng: Optional[jax.Array] = None) -> jax.Array:
  """Per-row mean cross-entropy per target token ``[B]`` (teacher forcing; rows have no padding)."""
  cfg = model.config
  out = model.apply({"params": params}, input_ids=inputs, attention_mask=jnp.ones_like(inputs),
                    decoder_input_ids=t5_lib.shift_right(targets, cfg.decoder_start_token_id, cfg.pad_token_id),
                    deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})
  # [B, Lt, vocab], [B, Lt] -> [B, Lt] -> [B]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, targets), axis=-1)


def train_t5(config: ml_collections.ConfigDict, model: t5_lib.T5ForConditionalGeneration,
             corrupt: Callable[[int], tuple[np.ndarray, np.ndarray]], *, seed: int, log: Log
             ) -> tuple[dict, dict, list[dict]]:
  """Span-corruption pretraining.

  Args:
    config: the stand-ins config.
    model: a T5 built from :func:`t5_config` (``pretraining=True``).
    corrupt: epoch -> ``(inputs [N, Li], targets [N, Lt])``, freshly corrupted each epoch.
    seed: seeds init and batches.
    log: progress lines.

  Returns:
    ``(initial params, trained params, history)``.
  """
  c = config.t5
  rng = jax.random.PRNGKey(seed)
  inputs, targets = corrupt(0)
  fast = bool(config.xla_fast_compile)
  init_params = nn.unbox(Jit(lambda r: model.init(
      r, input_ids=jnp.asarray(inputs[:1]), decoder_input_ids=jnp.asarray(targets[:1])), fast)(rng)["params"])
  deterministic = float(c.pretrain_dropout) == 0.0

  def loss_fn(params, batch, rng):
    losses = token_losses(model, params, batch["inputs"], batch["targets"], deterministic=deterministic, rng=rng)
    return jnp.mean(losses), {}

  n, batch_size = len(inputs), int(c.batch_size)
  if batch_size > n:
    raise ValueError(f"t5.batch_size ({batch_size}) exceeds the {n} packed training chunks")
  sampler = _epoch_sampler(n, batch_size, seed)
  per_epoch = n // batch_size
  current = {"epoch": 0, "data": (inputs, targets)}

  def next_batch(step):
    epoch = step // per_epoch
    if epoch != current["epoch"]:
      current.update(epoch=epoch, data=corrupt(epoch))
    idx = sampler(step)
    return {"inputs": current["data"][0][idx], "targets": current["data"][1][idx]}

  params, history = fit(loss_fn, init_params, optim_cfg=optimizer_config(config, c), steps=int(c.steps),
                        next_batch=next_batch, rng=rng, name="t5", log=log, log_every=int(config.log_every),
                        fast_compile=fast)
  return init_params, params, history
