"""Temporal modules: turn per-frame visual tokens into the visual tokens a
language model reads.

Input everywhere is ``x [batch, frames, tokens, width]`` with a frame mask
``[batch, frames]`` (padded frames are 0). Three choices, set in the config:

* ``mean``: masked mean over frames → ``[batch, tokens, width]`` (temporal
  order is lost; the ablation baseline).
* ``transformer``: learned temporal position embeddings plus self-attention
  over frames (per spatial token) → ``[batch, frames * tokens, width]``.
* ``resampler``: ``num_queries`` learned queries cross-attend to all
  frame tokens (with temporal position embeddings) → ``[batch, num_queries, width]``.
* ``motion``: ``transformer`` whose input frames also carry their change from
  the previous frame (``x_t + Dense(x_t - x_{t-1})``, ``x_{-1} = x_0``) →
  ``[batch, frames * tokens, width]``.

``frame_tokens='flatten'`` first turns each frame's ``l`` tokens into one
token, ``Dense(concat of the l tokens)``, so the token keeps *where* things are
(each token position has its own weights). A pooled class token trained from
scratch does not: a linear probe finds no object position in it
(``docs/results.md``, "What the pixels carry"), and without position no
temporal model can tell left from right.

``temporal_embedding=False`` drops the learned temporal position embeddings
(an ablation: self-attention is then permutation-equivariant over frames, so a
transformer followed by a mean cannot tell a clip from its reverse).

:func:`frame_differences` is the pixel-level counterpart of ``motion``: it
appends each frame's difference from the previous one as extra channels, so a
per-frame image tower sees motion (``docs/results.md``, "What the pixels carry").

:func:`pool_patch_grid` average-pools each frame's patch grid to a few cells, the
input of ``frame_tokens='flatten'`` in ViFi-CLIP's ordered read-out and in
CaptionT5's ``visual_tokens='grid'``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.layers import Dense, LoraSpec

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TemporalConfig:
  kind: str = "mean"          # 'mean' | 'transformer' | 'resampler' | 'motion'
  num_layers: int = 1
  num_heads: int = 4
  mlp_ratio: int = 4
  max_frames: int = 64
  num_queries: int = 8        # resampler only
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  lora: Optional[LoraSpec] = None
  temporal_embedding: bool = True  # learned per-frame position embeddings (not 'mean')
  frame_tokens: str = "keep"       # 'keep' | 'flatten' (one position-keeping token a frame)


def frame_differences(pixels: jax.Array, frame_mask: Optional[jax.Array] = None) -> jax.Array:
  """Appends motion channels: ``[b, t, H, W, C]`` -> ``[b, t, H, W, 2C]``.

  Channels ``C:`` hold ``x_t - x_{t-1}`` (zero for the first frame and for
  padded frames), so a per-frame tower with ``num_channels=2C`` sees which way
  things change even when its tokens are averaged over time.
  """
  # [b, t, H, W, C] -> previous frame, the first repeated: [b, t, H, W, C]
  prev = jnp.concatenate([pixels[:, :1], pixels[:, :-1]], axis=1)
  diff = pixels - prev
  if frame_mask is not None:
    # both frames must be real: [b, t] -> [b, t, 1, 1, 1]
    both = frame_mask * jnp.concatenate([frame_mask[:, :1], frame_mask[:, :-1]], axis=1)
    diff = diff * both[:, :, None, None, None].astype(diff.dtype)
  return jnp.concatenate([pixels, diff], axis=-1)


def adaptive_pool_matrix(n: int, cells: int) -> np.ndarray:
  """``[min(n, cells), n]``: row i averages the inputs of adaptive-pooling bin i (bins
  ``[floor(i n / c), ceil((i + 1) n / c))``, as torch's adaptive average pooling)."""
  c = min(n, cells)
  m = np.zeros((c, n), np.float32)
  for i in range(c):
    lo, hi = (i * n) // c, -((-(i + 1) * n) // c)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def pool_patch_grid(patches: jax.Array, cells: int) -> jax.Array:
  """Adaptive average pooling of frames' patch grids: ``[b, t, gh, gw, e]`` -> ``[b, t, oh * ow, e]``
  (float32), with ``oh = min(gh, cells)`` and ``ow = min(gw, cells)``; cells in row-major order."""
  b, t, gh, gw, e = patches.shape
  ph, pw = adaptive_pool_matrix(gh, cells), adaptive_pool_matrix(gw, cells)   # [oh, gh], [ow, gw]
  # [oh, gh] x [ow, gw] x [b, t, gh, gw, e] -> [b, t, oh, ow, e]
  x = jnp.einsum("ih,jw,bthwe->btije", ph, pw, patches.astype(jnp.float32))
  # [b, t, oh, ow, e] -> [b, t, oh * ow, e]
  return x.reshape(b, t, ph.shape[0] * pw.shape[0], e)


class Attention(nn.Module):
  """Multi-head attention with separate q/k/v/o projections (pre-norm done by caller)."""
  width: int
  num_heads: int
  dtype: Dtype = jnp.float32
  lora: Optional[LoraSpec] = None

  @nn.compact
  def __call__(self, q_in, kv_in, kv_mask, deterministic=True):
    head_dim = self.width // self.num_heads
    dense = lambda name, axes=("embed", "joined_kv"): Dense(
        self.width, kernel_axes=axes, dtype=self.dtype, lora=self.lora, name=name)
    q = dense("q_proj")(q_in, deterministic)
    k = dense("k_proj")(kv_in, deterministic)
    v = dense("v_proj")(kv_in, deterministic)
    # [b, lq, width] -> [b, lq, heads, head_dim]
    q = q.reshape(q.shape[:-1] + (self.num_heads, head_dim))
    # [b, lk, width] -> [b, lk, heads, head_dim]
    k = k.reshape(k.shape[:-1] + (self.num_heads, head_dim))
    v = v.reshape(v.shape[:-1] + (self.num_heads, head_dim))
    # [b, lq, h, d] x [b, lk, h, d] -> [b, h, lq, lk]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(self.dtype)
    big_neg = jnp.finfo(logits.dtype).min
    logits = jnp.where(kv_mask[:, None, None, :] > 0, logits, big_neg)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    # [b, h, lq, lk] x [b, lk, h, d] -> [b, lq, h, d]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    # [b, lq, h, d] -> [b, lq, width]
    out = out.reshape(out.shape[:-2] + (self.width,))
    return dense("out_proj", ("joined_kv", "embed"))(out, deterministic)


class Block(nn.Module):
  """Pre-LN transformer block; cross-attends when ``kv`` is given."""
  width: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  lora: Optional[LoraSpec] = None

  @nn.compact
  def __call__(self, x, kv, kv_mask, deterministic=True):
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, name=name, scale_init=nn.with_logical_partitioning(
        nn.initializers.ones_init(), ("embed",)), bias_init=nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("embed",)))
    h = ln("layer_norm1")(x)
    kv_in = h if kv is None else ln("layer_norm_kv")(kv)
    h = Attention(self.width, self.num_heads, self.dtype, self.lora, name="attn")(
        h, kv_in, kv_mask, deterministic)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = ln("layer_norm2")(x)
    h = Dense(self.width * self.mlp_ratio, kernel_axes=("embed", "mlp"), dtype=self.dtype,
              lora=self.lora, name="fc1")(h, deterministic)
    h = nn.gelu(h)
    h = Dense(self.width, kernel_axes=("mlp", "embed"), dtype=self.dtype, lora=self.lora,
              name="fc2")(h, deterministic)
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class TemporalModule(nn.Module):
  """See the module docstring. Returns ``(tokens [b, n, width], mask [b, n])``."""
  config: TemporalConfig

  @nn.compact
  def __call__(self, x: jax.Array, frame_mask: jax.Array, deterministic: bool = True):
    cfg = self.config
    b, t, l, w = x.shape
    frame_mask = frame_mask.astype(x.dtype)
    if cfg.frame_tokens == "flatten":
      # one token per frame that keeps where things are: [b, t, l, w] -> [b, t, l * w] -> [b, t, 1, w]
      x = Dense(w, kernel_axes=(None, "embed"), dtype=cfg.dtype, lora=cfg.lora,
                name="frame_flatten")(x.reshape(b, t, 1, l * w), deterministic)
      x = nn.LayerNorm(dtype=cfg.dtype, name="frame_flatten_norm")(x)
      l = 1
    elif cfg.frame_tokens != "keep":
      raise ValueError(f"temporal.frame_tokens must be 'keep' or 'flatten', got {cfg.frame_tokens!r}")
    if cfg.kind == "mean":
      # [b, t, l, w] * [b, t, 1, 1] summed over t -> [b, l, w]
      denom = jnp.maximum(frame_mask.sum(axis=1), 1.0)[:, None, None]
      pooled = (x * frame_mask[:, :, None, None]).sum(axis=1) / denom
      return pooled, jnp.ones((b, l), jnp.int32)
    if t > cfg.max_frames:
      raise ValueError(f"{t} frames exceed temporal.max_frames={cfg.max_frames}")
    if cfg.temporal_embedding:
      pos = self.param("temporal_embedding", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (cfg.max_frames, w))
      # [b, t, l, w] + [t, 1, w]
      x = x + pos[:t, None, :].astype(x.dtype)
    if cfg.kind == "motion":
      # previous frame's tokens, the first repeated: [b, t, l, w]
      prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
      delta = (x - prev) * frame_mask[:, :, None, None]
      # [b, t, l, w] -> [b, t, l, w]
      x = x + Dense(w, kernel_axes=(None, "embed"), dtype=cfg.dtype, lora=cfg.lora,
                    name="motion_proj")(delta, deterministic)
    if cfg.kind in ("transformer", "motion"):
      # attend over frames for every spatial token: [b, t, l, w] -> [b * l, t, w]
      h = x.transpose(0, 2, 1, 3).reshape(b * l, t, w)
      # [b, t] -> [b * l, t]
      m = jnp.repeat(frame_mask, l, axis=0)
      for i in range(cfg.num_layers):
        h = Block(w, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cfg.dtype, cfg.lora,
                  name=f"layers_{i}")(h, None, m, deterministic)
      # [b * l, t, w] -> [b, l, t, w] -> [b, t * l, w]
      h = h.reshape(b, l, t, w).transpose(0, 2, 1, 3).reshape(b, t * l, w)
      # [b, t] -> [b, t * l]
      out_mask = jnp.repeat(frame_mask, l, axis=1).astype(jnp.int32)
      return nn.LayerNorm(dtype=cfg.dtype, name="post_layernorm")(h), out_mask
    if cfg.kind == "resampler":
      queries = self.param("queries", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (cfg.num_queries, w))
      # [k, w] -> [b, k, w]
      h = jnp.broadcast_to(queries[None].astype(x.dtype), (b, cfg.num_queries, w))
      # [b, t, l, w] -> [b, t * l, w]
      kv = x.reshape(b, t * l, w)
      # [b, t] -> [b, t * l]
      kv_mask = jnp.repeat(frame_mask, l, axis=1)
      for i in range(cfg.num_layers):
        h = Block(w, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cfg.dtype, cfg.lora,
                  name=f"layers_{i}")(h, kv, kv_mask, deterministic)
      return nn.LayerNorm(dtype=cfg.dtype, name="post_layernorm")(h), jnp.ones((b, cfg.num_queries), jnp.int32)
    raise ValueError("temporal.kind must be 'mean', 'transformer', 'resampler' or 'motion', "
                     f"got {cfg.kind!r}")
