"""R²-Tuning: a recursive side block on frozen CLIP features for video temporal grounding.

Liu et al., "R²-Tuning: Efficient Image-to-Video Transfer Learning for Video Temporal
Grounding", ECCV 2024. This is our Flax Linen implementation from the paper and the facts of
its public PyTorch code (yeliudev/R2-Tuning, ``models/``); no code is shared with it.

Inputs are cached CLIP features of the last ``K`` (4) layers, ordered first to last:

* ``video [b, K, t, p, Dv]``: every token (CLS first, then patches; 50 at ViT-B/32) of each
  clip's frame; ``video_mask [b, t]`` (1 = a real clip);
* ``query [b, K, l, Dq]``: every text token of the residual stream (before ``ln_final``);
  ``query_mask [b, l]``.

The R² block runs from the last layer to the first with one set of weights:

1. MLP projections of the layer's video tokens (with 2 temporal end-point features appended,
   ``[i/t, (i+1)/t]``) and query tokens to ``dim`` (256).
2. Query-modulated spatial pooling per clip: ``softmax(q·vᵀ/√C)`` over the patches, ``+ q``,
   max over query tokens; the clip's CLS + ``tanh(scale_k)`` × that (``scale_k`` starts at 0,
   so an untrained block passes CLS through).
3. Recurrent fusion with the previous (deeper) layer's output: ``σ(gate_k)·cur + (1−σ)·prev``.
4. A post-norm transformer decoder layer: cross-attention to the query, self-attention over
   clips (sinusoidal positions, normalised to [0, 2π]), FFN; 8 heads, ratio 4, drop-path 0.1.

Heads: a Conv1d pyramid (strides 1, 2, 4, 8) over the clip features, shared kernel-3 conv
heads for per-point classification (1) and boundary distances (2, ``exp`` × a learned
per-level coefficient), and attention pooling of the query tokens. ``head='meanpool'`` is the
ablation baseline: last layer only, patch tokens mean-pooled, video ⊙ pooled query, no
recursion, no query-modulated pooling, no decoder; the pyramid and heads are the same.

Losses, targets, inference and NMS: :mod:`t5video.models.r2tuning_losses`.

Parameter count at ViT-B/32 dims (``R2TuningConfig.variant('B/32')``): 2,836,242 trainable,
the paper's "2.7M" being that count in units of 2^20 (2.705); the test records both.

Deliberate differences from the public code, all about padding: the temporal end-point
features and the decoder's sinusoidal positions use each video's own length (from
``video_mask``), and padded query tokens are left out of the max over query tokens. The
reference uses the padded batch length and includes padded query tokens while training, and a
lone video (batch size 1, nothing padded) at inference, so its training features shift with the
batch's padding; here a video's outputs do not depend on what it is batched with (tested), and
they equal the reference's inference-time definition.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.layers import DTYPES, Dense

Dtype = Any

# CLIP tower widths and tokens per frame: (video width, text width, tokens per frame).
_CLIP_DIMS = {
    "B/32": (768, 512, 50),
    "B/16": (768, 512, 197),
    "L/14": (1024, 768, 257),
    "L/14-336": (1024, 768, 577),
}


@dataclasses.dataclass(frozen=True)
class R2TuningConfig:
  """Hyper-parameters of the model and its losses (QVHighlights values by default).

  ``variant('B/32')`` etc. set the CLIP feature widths; ``variant('tiny')`` is a small model for
  tests and local runs.
  """
  video_dim: int = 768          # CLIP vision width (per token)
  query_dim: int = 512          # CLIP text width
  num_tokens: int = 50          # tokens per frame (CLS + patches)
  num_layers: int = 4           # K CLIP layers used (the last K)
  dim: int = 256
  strides: tuple[int, ...] = (1, 2, 4, 8)
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.5          # in the MLP projections
  drop_path: float = 0.1        # in the decoder layer
  use_tef: bool = True          # temporal end-point features on the video tokens
  head: str = "r2"              # 'r2' | 'meanpool' (ablation baseline)
  # Highlight detection only (TVSum, YouTube Highlights): no boundary head, the class logit of
  # each clip (strides (1,)) is its saliency, trained by BCE on the clip's score.
  highlight_only: bool = False
  max_moments: int = 50         # moments kept at inference
  # losses (weights: QVHighlights)
  sample_radius: float = 1.5
  focal_gamma: float = 2.0
  temperature: float = 0.07     # sampled-NCE saliency and InfoNCE calibration
  max_logit_scale: float = 100.0
  loss_cls: float = 1.0
  loss_reg: float = 0.2
  loss_sal: float = 0.1
  loss_video_cal: float = 0.1
  loss_layer_cal: float = 0.1
  dtype: str = "float32"

  @staticmethod
  def variant(name: str, **overrides) -> "R2TuningConfig":
    """``'B/32' | 'B/16' | 'L/14' | 'L/14-336' | 'tiny'``, with field overrides."""
    if name == "tiny":
      base = dict(video_dim=48, query_dim=40, num_tokens=5, num_layers=2, dim=32, num_heads=4)
    elif name in _CLIP_DIMS:
      v, q, p = _CLIP_DIMS[name]
      base = dict(video_dim=v, query_dim=q, num_tokens=p)
    else:
      raise ValueError(f"unknown R2-Tuning variant {name!r}; one of {sorted(_CLIP_DIMS) + ['tiny']}")
    return dataclasses.replace(R2TuningConfig(**base), **overrides)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def _ln(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def sinusoidal_positions(video_mask: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """Clip positions 1..n of a video of n real clips scaled to (0, 2π], sin on even and cos on
  odd channels -> ``[b, t, dim]``."""
  t = video_mask.shape[1]
  n = video_mask.sum(axis=1, keepdims=True).astype(jnp.float32)      # [b, 1]
  pos = jnp.arange(1, t + 1, dtype=jnp.float32)[None, :] / (n + 1e-6) * 2 * math.pi   # [b, t]
  freq = temperature ** ((jnp.arange(dim) // 2 * 2) / dim)           # [dim]
  angle = pos[:, :, None] / freq                                      # [b, t, dim]
  return jnp.where(jnp.arange(dim) % 2 == 0, jnp.sin(angle), jnp.cos(angle))


def temporal_endpoints(video_mask: jax.Array) -> jax.Array:
  """``[i / n, (i + 1) / n]`` for clip i of a video of n real clips -> ``[b, t, 2]``."""
  n = jnp.maximum(video_mask.sum(axis=1, keepdims=True), 1).astype(jnp.float32)   # [b, 1]
  i = jnp.arange(video_mask.shape[1], dtype=jnp.float32)[None, :]                  # [1, t]
  return jnp.stack([i / n, (i + 1) / n], axis=-1)


class MlpProjection(nn.Module):
  """LN → Dropout → Linear → ReLU → LN → Dropout → Linear."""
  dim: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    x = _ln("norm_in", self.dtype)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = nn.relu(Dense(self.dim, kernel_axes=(None, "embed"), dtype=self.dtype, name="fc_in")(x))
    x = _ln("norm_hidden", self.dtype)(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return Dense(self.dim, kernel_axes=("embed", "mlp"), dtype=self.dtype, name="fc_out")(x)


class MultiHeadAttention(nn.Module):
  """Attention with q/k/v/m projections (xavier-uniform, as the reference); ``kv_mask [b, lk]``."""
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q_in, k_in, v_in, kv_mask):
    head_dim = self.dim // self.num_heads
    dense = lambda name, axes=("embed", "joined_kv"): Dense(
        self.dim, kernel_axes=axes, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform())
    # [b, l, dim] -> [b, l, heads, head_dim]
    q = dense("q")(q_in).reshape(q_in.shape[:-1] + (self.num_heads, head_dim))
    k = dense("k")(k_in).reshape(k_in.shape[:-1] + (self.num_heads, head_dim))
    v = dense("v")(v_in).reshape(v_in.shape[:-1] + (self.num_heads, head_dim))
    # [b, lq, h, d] x [b, lk, h, d] -> [b, h, lq, lk]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(head_dim)).astype(self.dtype)
    logits = jnp.where(kv_mask[:, None, None, :] > 0, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    # [b, h, lq, lk] x [b, lk, h, d] -> [b, lq, h, d]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    # [b, lq, h, d] -> [b, lq, dim]
    out = out.reshape(out.shape[:-2] + (self.dim,))
    return dense("m", ("joined_kv", "embed"))(out)


class DecoderLayer(nn.Module):
  """Post-norm: cross-attention to the query → self-attention over clips → FFN; drop-path."""
  dim: int
  num_heads: int
  mlp_ratio: int
  drop_path: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, memory, x_mask, memory_mask, deterministic=True):
    # drop-path: one keep/drop per sample, kept ones scaled by 1 / (1 - p): [b, t, c]
    drop = lambda y: nn.Dropout(self.drop_path, broadcast_dims=tuple(range(1, y.ndim)))(
        y, deterministic=deterministic)
    mha = lambda name: MultiHeadAttention(self.dim, self.num_heads, self.dtype, name=name)
    d = mha("cross_att")(x + pos, memory, memory, memory_mask)
    x = _ln("cross_att_norm", self.dtype)(x + drop(d))
    d = mha("self_att")(x + pos, x + pos, x, x_mask)
    x = _ln("self_att_norm", self.dtype)(x + drop(d))
    h = Dense(self.dim * self.mlp_ratio, kernel_axes=("embed", "mlp"), dtype=self.dtype,
              kernel_init=nn.initializers.he_normal(), name="ffn_in")(x)
    h = Dense(self.dim, kernel_axes=("mlp", "embed"), dtype=self.dtype,
              kernel_init=nn.initializers.he_normal(), name="ffn_out")(nn.relu(h))
    return _ln("ffn_norm", self.dtype)(x + drop(h))


class R2Block(nn.Module):
  """The recursive, weight-shared block. Returns the fused clip features and per-layer outputs.

  Returns:
    ``video_emb [b, t, c]`` (after the last recursion, i.e. the first of the K layers),
    ``query_tokens [b, l, c]`` (that layer's projected query), ``layer_cls [K, b, t, c]`` and
    ``layer_query [K, b, l, c]`` (projected CLS / query per recursion step, last layer first),
    which the calibration losses use.
  """
  config: R2TuningConfig

  @nn.compact
  def __call__(self, video, video_mask, query, query_mask, deterministic=True):
    cfg = self.config
    dt = cfg.compute_dtype
    b, k, t, p, _ = video.shape
    c = cfg.dim
    if cfg.use_tef:
      tef = temporal_endpoints(video_mask).astype(video.dtype)              # [b, t, 2]
      # [b, t, 2] -> [b, K, t, p, 2]
      tef = jnp.broadcast_to(tef[:, None, :, None, :], (b, k, t, p, 2))
      video = jnp.concatenate([video, tef], axis=-1)                        # [b, K, t, p, Dv+2]
    video_map = MlpProjection(c, cfg.dropout, dt, name="video_map")
    query_map = MlpProjection(c, cfg.dropout, dt, name="query_map")
    # square maps name their output axis "mlp": a logical axis may occur once per kernel
    v_map = Dense(c, kernel_axes=("embed", "mlp"), dtype=dt, name="v_map")
    q_map = Dense(c, kernel_axes=("embed", "mlp"), dtype=dt, name="q_map")
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("layers",)),
                       (k,), jnp.float32)
    gate = self.param("gate", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("layers",)),
                      (max(k - 1, 1),), jnp.float32)
    decoder = DecoderLayer(c, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path, dt, name="decoder")
    pos = sinusoidal_positions(video_mask, c).astype(dt)                    # [b, t, c]

    layer_cls, layer_query, prev, q_tok = [], [], None, None
    for i in reversed(range(k)):
      v = video_map(video[:, i], deterministic)                             # [b, t, p, c]
      q_tok = query_map(query[:, i], deterministic)                         # [b, l, c]
      layer_cls.append(v[:, :, 0])
      layer_query.append(q_tok)
      vm = v_map(v)                                                         # [b, t, p, c]
      qm = q_map(q_tok)                                                     # [b, l, c]
      # [b, l, c] x [b, t, p, c] -> [b, t, l, p]
      att = jnp.einsum("blc,btpc->btlp", qm, vm) / math.sqrt(c)
      att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(dt)
      # [b, t, l, p] x [b, t, p, c] -> [b, t, l, c], plus the query tokens
      pooled = jnp.einsum("btlp,btpc->btlc", att, v) + q_tok[:, None]
      # max over the real query tokens: [b, t, l, c] -> [b, t, c]
      pooled = jnp.where(query_mask[:, None, :, None] > 0, pooled, jnp.finfo(dt).min).max(axis=2)
      cur = v[:, :, 0] + pooled * jnp.tanh(scale[i]).astype(dt)
      if prev is not None:
        g = jax.nn.sigmoid(gate[i]).astype(dt)
        cur = g * cur + (1 - g) * prev
      cur = nn.with_logical_constraint(cur, ("act_batch", "act_frames", "act_embed"))
      prev = decoder(cur, pos, q_tok, video_mask, query_mask, deterministic)
    return prev, q_tok, jnp.stack(layer_cls), jnp.stack(layer_query)


class MeanPoolBlock(nn.Module):
  """Ablation baseline: last layer, tokens mean-pooled, ``v + v ⊙ mean(q)``; same outputs as R2Block."""
  config: R2TuningConfig

  @nn.compact
  def __call__(self, video, video_mask, query, query_mask, deterministic=True):
    cfg = self.config
    dt = cfg.compute_dtype
    v = video[:, -1].mean(axis=2)                                           # [b, t, Dv]
    if cfg.use_tef:
      v = jnp.concatenate([v, temporal_endpoints(video_mask).astype(v.dtype)], axis=-1)
    v = MlpProjection(cfg.dim, cfg.dropout, dt, name="video_map")(v, deterministic)   # [b, t, c]
    q_tok = MlpProjection(cfg.dim, cfg.dropout, dt, name="query_map")(query[:, -1], deterministic)
    qm = query_mask.astype(dt)[:, :, None]                                  # [b, l, 1]
    q_mean = (q_tok * qm).sum(axis=1) / jnp.maximum(qm.sum(axis=1), 1.0)    # [b, c]
    fused = v + v * q_mean[:, None, :]
    return fused, q_tok, v[None], q_tok[None]


class ConvPyramid(nn.Module):
  """Level s: ``log2(s)`` × (Conv1d k=2 s=2 → LN → ReLU); stride 1 is a ReLU. Levels with
  fewer clips than their stride are skipped (static: decided by ``t``)."""
  dim: int
  strides: tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    levels = []
    for s in self.strides:
      if x.shape[1] < s:
        continue
      h = x if s > 1 else nn.relu(x)
      for j in range(int(math.log2(s))):
        # [b, t, c] -> [b, t // 2, c]
        h = nn.Conv(self.dim, (2,), strides=(2,), padding="VALID", dtype=self.dtype,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), (None, "embed", "mlp")),
                    name=f"level{s}_conv{j}")(h)
        h = nn.relu(_ln(f"level{s}_norm{j}", self.dtype)(h))
      levels.append(h)
    return levels


class ConvHead(nn.Module):
  """Conv1d(k=3) → ReLU → Conv1d(k=3, out); zero padding at both ends of the real points
  (``mask [b, n]``: the hidden layer is zeroed past them, as a lone video's padding would be)."""
  dim: int
  out: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    conv = lambda f, name: nn.Conv(f, (3,), padding=((1, 1),), dtype=self.dtype, name=name,
                                   kernel_init=nn.with_logical_partitioning(
                                       nn.initializers.lecun_normal(), (None, "embed", "mlp")))
    m = mask[:, :, None]
    h = nn.relu(conv(self.dim, "conv_in")(x * m)) * m                     # [b, n, dim]
    return conv(self.out, "conv_out")(h)                                  # [b, n, out]


class AttentionPooling(nn.Module):
  """``softmax(x·w)`` over the unmasked tokens, weighted sum -> ``[b, c]``."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    a = Dense(1, use_bias=False, kernel_axes=("embed", None), dtype=self.dtype, name="att")(x)[..., 0]
    a = jnp.where(mask > 0, a.astype(jnp.float32), -jnp.inf)                 # [b, l]
    a = jax.nn.softmax(a, axis=-1).astype(x.dtype)
    return jnp.einsum("bl,blc->bc", a, x)                                   # [b, c]


def pyramid_lengths(t: int, strides: tuple[int, ...]) -> list[tuple[int, int]]:
  """``[(stride, length)]`` of the pyramid levels a ``t``-clip input produces."""
  return [(s, t // s) for s in strides if t >= s]


class R2Tuning(nn.Module):
  """The full model. ``__call__`` returns a dict:

  * ``video_emb [b, t, c]``, ``query_emb [b, c]``: for saliency (cosine) and the NCE loss;
  * ``class_logits [b, n]`` and ``coords [b, n, 2]`` (distances to start/end in units of the
    level's stride) over the ``n`` pyramid points, levels concatenated (``pyramid_lengths``);
  * ``layer_cls [K, b, t, c]`` and ``layer_query [K, b, c]`` (pooled): the calibration inputs.
  """
  config: R2TuningConfig

  @nn.compact
  def __call__(self, video, video_mask, query, query_mask, deterministic: bool = True):
    cfg = self.config
    dt = cfg.compute_dtype
    video = video.astype(dt)
    query = query.astype(dt)
    video_mask = video_mask.astype(jnp.int32)
    query_mask = query_mask.astype(jnp.int32)
    block_cls = R2Block if cfg.head == "r2" else MeanPoolBlock
    if cfg.head not in ("r2", "meanpool"):
      raise ValueError(f"head must be 'r2' or 'meanpool', got {cfg.head!r}")
    video_emb, q_tok, layer_cls, layer_query = block_cls(cfg, name="adapter")(
        video, video_mask, query, query_mask, deterministic)
    # padded clips are zero, so the convolutions see zero padding as for a lone video
    video_emb = video_emb * video_mask[:, :, None].astype(dt)
    levels = ConvPyramid(cfg.dim, cfg.strides, dt, name="pyramid")(video_emb)
    pooling = AttentionPooling(dt, name="pooling")
    query_emb = pooling(q_tok, query_mask)                                  # [b, c]
    # [K, b, l, c] -> [K * b, l, c] -> pooled [K, b, c]
    kk, b, l, c = layer_query.shape
    layer_query = pooling(layer_query.reshape(kk * b, l, c),
                          jnp.tile(query_mask, (kk, 1))).reshape(kk, b, c)
    class_head = ConvHead(cfg.dim, 1, dt, name="class_head")
    if not cfg.highlight_only:
      coord_head = ConvHead(cfg.dim, 2, dt, name="coord_head")
      coef = self.param("coef", nn.with_logical_partitioning(nn.initializers.ones_init(), (None,)),
                        (len(cfg.strides),), jnp.float32)
    t = video.shape[2]
    logits, coords = [], []
    for (s, n), h in zip(pyramid_lengths(t, cfg.strides), levels):
      # zero the level's padded positions too (a lone video's conv would see zeros there)
      valid = (jnp.arange(n)[None, :] < (video_mask.sum(axis=1) // s)[:, None]).astype(dt)
      logits.append(class_head(h, valid)[..., 0])                           # [b, n]
      if cfg.highlight_only:   # no moments: zero distances keep the outputs' shapes
        coords.append(jnp.zeros((h.shape[0], n, 2), jnp.float32))
      else:
        coords.append(jnp.exp(coord_head(h, valid).astype(jnp.float32))
                      * coef[cfg.strides.index(s)])                         # [b, n, 2]
    return {
        "video_emb": video_emb,
        "query_emb": query_emb,
        "class_logits": jnp.concatenate(logits, axis=1).astype(jnp.float32),
        "coords": jnp.concatenate(coords, axis=1),
        "layer_cls": layer_cls,
        "layer_query": layer_query,
    }


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def init_params(config: R2TuningConfig, rng: jax.Array, num_clips: int = 16, query_len: int = 8):
  """Parameters (a plain pytree, logical-axis boxes removed) from dummy inputs of the config's dims."""
  model = R2Tuning(config)
  video = jnp.zeros((1, config.num_layers, num_clips, config.num_tokens, config.video_dim))
  query = jnp.zeros((1, config.num_layers, query_len, config.query_dim))
  variables = model.init(rng, video, jnp.ones((1, num_clips)), query, jnp.ones((1, query_len)))
  return nn.meta.unbox(variables["params"])


__all__ = ["R2Tuning", "R2TuningConfig", "count_params", "init_params", "pyramid_lengths",
           "sinusoidal_positions", "temporal_endpoints"]
