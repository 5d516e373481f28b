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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5video.models.layers import Dense, LoraSpec

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TemporalConfig:
  kind: str = "mean"          # 'mean' | 'transformer' | 'resampler'
  num_layers: int = 1
  num_heads: int = 4
  mlp_ratio: int = 4
  max_frames: int = 64
  num_queries: int = 8        # resampler only
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  lora: Optional[LoraSpec] = None


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
    if cfg.kind == "mean":
      # [b, t, l, w] * [b, t, 1, 1] summed over t -> [b, l, w]
      denom = jnp.maximum(frame_mask.sum(axis=1), 1.0)[:, None, None]
      pooled = (x * frame_mask[:, :, None, None]).sum(axis=1) / denom
      return pooled, jnp.ones((b, l), jnp.int32)
    if t > cfg.max_frames:
      raise ValueError(f"{t} frames exceed temporal.max_frames={cfg.max_frames}")
    pos = self.param("temporal_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (cfg.max_frames, w))
    # [b, t, l, w] + [t, 1, w]
    x = x + pos[:t, None, :].astype(x.dtype)
    if cfg.kind == "transformer":
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
    raise ValueError(f"temporal.kind must be 'mean', 'transformer' or 'resampler', got {cfg.kind!r}")
