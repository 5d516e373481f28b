"""T5 (v1.0, v1.1, FLAN-T5) in Flax Linen, numerically equal to Hugging Face's PyTorch T5.

The module tree mirrors the Hugging Face state dict (``'.'`` becomes ``'/'``,
list entries become ``block_0``, ``layer_0`` ...), so checkpoint conversion in
:mod:`t5video.models.convert_t5` is a table of renames and transposes::

  shared/embedding                                                [vocab, embed]
  encoder/block_0/layer_0/SelfAttention/{q,k,v}/kernel            [embed, heads*d_kv]
  encoder/block_0/layer_0/SelfAttention/o/kernel                  [heads*d_kv, embed]
  encoder/block_0/layer_0/SelfAttention/relative_attention_bias/embedding  [buckets, heads]
  encoder/block_0/layer_0/layer_norm/weight                       [embed]
  encoder/block_0/layer_1/DenseReluDense/{wi|wi_0,wi_1}/kernel    [embed, d_ff]
  encoder/block_0/layer_1/DenseReluDense/wo/kernel                [d_ff, embed]
  decoder/block_i/layer_1/EncDecAttention/...   (decoder: layer_0 self, layer_1 cross, layer_2 FFN)
  encoder/final_layer_norm/weight, decoder/final_layer_norm/weight
  lm_head/kernel                                                  [embed, vocab]  (untied only)

With ``scan_layers=True`` the first block of each stack (the owner of the
relative-position-bias table) stays outside the scan as ``block_0`` and blocks
``1 .. n-1`` are stacked under ``blocks`` with a leading ``layers`` axis
(``encoder/blocks/layer_0/SelfAttention/q/kernel`` is ``[n-1, embed, heads*d_kv]``).

Incremental decoding (``decode=True``) follows T5X: each decoder self-attention
keeps ``cached_key`` / ``cached_value`` ``[batch, max_len, heads, d_kv]`` in the
``'cache'`` collection and the decoder stack keeps one scalar ``cache_index``.
Every cache leaf has the batch as its leading axis (scanned blocks stack their
caches on axis 1: ``[batch, layers, max_len, heads, d_kv]``) or is a scalar, so
a beam search may reorder caches with ``x[beam_indices]``. Cross-attention keys
and values are recomputed from the encoder states at every step (they are not
cached), which keeps the cache independent of the encoder output.

Example::

  cfg = T5Config.variant('tiny')
  model = T5ForConditionalGeneration(cfg)
  params = model.init(rng, input_ids=ids, decoder_input_ids=dec)['params']
  out = model.apply({'params': params}, input_ids=ids, attention_mask=mask,
                    decoder_input_ids=dec)
  out.logits  # [batch, target_len, vocab]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.layers import DROPOUT_RNGS, DTYPES, Dense, Dropout, LoraSpec

Array = jax.Array
Dtype = Any

# HF config.json keys that T5Config mirrors one to one.
HF_FIELDS = (
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
    "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
    "dropout_rate", "layer_norm_epsilon", "feed_forward_proj", "tie_word_embeddings",
    "pad_token_id", "eos_token_id", "decoder_start_token_id",
)
_DTYPES = DTYPES


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def _gelu_erf(x):
  return jax.nn.gelu(x, approximate=False)


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder.

  The first block of fields carries the names of Hugging Face's T5
  ``config.json``; the rest are t5video-only.

  Attributes:
    vocab_size: rows of the shared embedding (and logits width).
    d_model: width of the residual stream.
    d_kv: width of one attention head; ``d_kv * num_heads`` need not equal
      ``d_model``.
    d_ff: inner width of the feed-forward block.
    num_layers: encoder blocks.
    num_decoder_layers: decoder blocks (``None`` means ``num_layers``).
    num_heads: attention heads.
    relative_attention_num_buckets: rows of the relative-position-bias table.
    relative_attention_max_distance: distance beyond which all positions share
      the last bucket.
    dropout_rate: dropout on embeddings, sublayer outputs, attention
      probabilities and the FFN hidden layer (as HF places it).
    layer_norm_epsilon: epsilon of T5's RMS norm.
    feed_forward_proj: ``'relu'`` (v1.0), ``'gated-gelu'`` (v1.1 / FLAN, the
      tanh-approximate GELU), or ``'<act>'`` / ``'gated-<act>'`` with act in
      relu, gelu, gelu_new, silu.
    tie_word_embeddings: True for v1.0: logits use the shared embedding and
      the decoder output is rescaled by ``d_model ** -0.5``. False for v1.1 /
      FLAN: a separate ``lm_head`` without rescaling.
    pad_token_id: id of padding (also the decoder start token in T5).
    eos_token_id: end-of-sequence id.
    decoder_start_token_id: first decoder input id (``shift_right`` inserts it).
    dtype: compute dtype (float32 or bfloat16); params stay ``param_dtype``.
    param_dtype: storage dtype of the parameters.
    remat: rematerialise each block in the backward pass (``nn.remat``).
    scan_layers: stack blocks 1..n-1 of each stack with ``nn.scan``.
    lora: low-rank adapters on the Dense layers that ``lora.targets`` matches.
    adapter_dim: if set, a bottleneck adapter (down Dense, ReLU, up Dense
      initialised at zero) with its own residual on the output of every FFN
      sublayer, in encoder and decoder.
    dropout_rng: where dropout masks come from: ``'hash'`` (a counter hash seeded
      from the dropout RNG stream; cheap on CPU) or ``'threefry'`` (Flax's
      ``nn.Dropout``); :class:`t5video.models.layers.Dropout`.
  """
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: Optional[int] = None
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  tie_word_embeddings: bool = True
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  # t5video-only fields.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  scan_layers: bool = False
  lora: Optional[LoraSpec] = None
  adapter_dim: Optional[int] = None
  dropout_rng: str = "hash"

  def __post_init__(self):
    if self.num_decoder_layers is None:
      object.__setattr__(self, "num_decoder_layers", self.num_layers)
    if isinstance(self.dtype, str):
      object.__setattr__(self, "dtype", _DTYPES[self.dtype])
    if isinstance(self.param_dtype, str):
      object.__setattr__(self, "param_dtype", _DTYPES[self.param_dtype])
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or parts[-1] not in _ACTIVATIONS:
      raise ValueError(
          f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected '<act>' or 'gated-<act>' "
          f"with act in {sorted(_ACTIVATIONS)}")
    if self.dropout_rng not in DROPOUT_RNGS:
      raise ValueError(f"T5Config.dropout_rng={self.dropout_rng!r}: expected one of {DROPOUT_RNGS}")
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
                 "num_heads", "relative_attention_num_buckets"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

  @property
  def is_gated_act(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def dense_act_fn(self) -> str:
    """HF's activation name: 'gated-gelu' means the tanh approximation 'gelu_new'."""
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.split("-")[-1]

  @classmethod
  def from_hf(cls, hf_config: dict[str, Any], **overrides) -> "T5Config":
    """Builds a config from an HF T5 ``config.json`` dict (+ t5video-only overrides).

    Transformers 5 always writes ``tie_word_embeddings: true`` for T5 and keeps
    the real v1.0/v1.1 switch in ``scale_decoder_outputs``; when that key is
    present it decides ``tie_word_embeddings`` here.
    """
    model_type = hf_config.get("model_type", "t5")
    if model_type != "t5":
      raise ValueError(f"config.json model_type={model_type!r}; T5Config.from_hf reads 't5' configs")
    kwargs = {}
    for name in HF_FIELDS:
      if name in hf_config and hf_config[name] is not None:
        kwargs[name] = hf_config[name]
    if "scale_decoder_outputs" in hf_config:
      kwargs["tie_word_embeddings"] = bool(hf_config["scale_decoder_outputs"])
    if isinstance(kwargs.get("eos_token_id"), (list, tuple)):
      kwargs["eos_token_id"] = int(kwargs["eos_token_id"][0])
    if "decoder_start_token_id" not in kwargs:
      kwargs["decoder_start_token_id"] = kwargs.get("pad_token_id", 0)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown T5Config override(s) {sorted(unknown)}")
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF ``config.json`` dict (``T5ForConditionalGeneration.from_pretrained`` reads it)."""
    out = {name: getattr(self, name) for name in HF_FIELDS}
    out.update({
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "initializer_factor": 1.0,
        "dense_act_fn": self.dense_act_fn,
        "is_gated_act": self.is_gated_act,
        "scale_decoder_outputs": bool(self.tie_word_embeddings),
        "use_cache": True,
    })
    return out

  @classmethod
  def variant(cls, name: str, **overrides) -> "T5Config":
    """A named size from :data:`VARIANTS` (e.g. ``'flan-t5-base'``), with overrides."""
    if name not in VARIANTS:
      raise ValueError(f"unknown T5 variant {name!r}; known: {sorted(VARIANTS)}")
    base = VARIANTS[name]
    if "num_layers" in overrides and "num_decoder_layers" not in overrides:
      # A symmetric variant stays symmetric when only num_layers is overridden.
      overrides["num_decoder_layers"] = overrides["num_layers"]
    return dataclasses.replace(base, **overrides)


_V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128)
VARIANTS: dict[str, T5Config] = {
    "t5-small": T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": T5Config(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-v1_1-small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, **_V11),
    "t5-v1_1-base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, **_V11),
    "flan-t5-small": T5Config(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, **_V11),
    "flan-t5-base": T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, **_V11),
    "flan-t5-large": T5Config(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16, **_V11),
    "flan-t5-xl": T5Config(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32, **_V11),
    "flan-t5-xxl": T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, **_V11),
    "tiny": T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16,
                     dropout_rate=0.0, **{k: v for k, v in _V11.items() if k != "vocab_size"}),
}


@flax.struct.dataclass
class T5Output:
  """What ``T5ForConditionalGeneration.__call__`` returns (HF field names).

  Attributes:
    logits: ``[batch, target_len, vocab]`` in float32.
    encoder_last_hidden_state: ``[batch, source_len, d_model]`` after the final norm.
    encoder_hidden_states: with ``output_hidden_states``: the embeddings and
      each block's output (the last one after the final norm), ``num_layers + 1``
      arrays; otherwise None.
    decoder_hidden_states: the same for the decoder; otherwise None.
  """
  logits: Array
  encoder_last_hidden_state: Array
  encoder_hidden_states: Optional[tuple[Array, ...]] = None
  decoder_hidden_states: Optional[tuple[Array, ...]] = None


def shift_right(labels: Array, decoder_start_token_id: int, pad_token_id: int) -> Array:
  """Decoder inputs for teacher forcing: ``[start, labels[:-1]]``, -100 replaced by pad.

  Args:
    labels: ``[batch, len]`` int targets (``-100`` marks ignored positions).
    decoder_start_token_id: the id put in front.
    pad_token_id: replaces ``-100`` entries.

  Returns:
    ``[batch, len]`` int32 decoder input ids: a numpy array for numpy ``labels`` (the data
    pipeline calls this once per example; eager JAX ops there cost a dispatch each), else a
    JAX array.
  """
  xp = np if isinstance(labels, np.ndarray) else jnp
  labels = xp.asarray(labels)
  start = xp.full(labels.shape[:-1] + (1,), decoder_start_token_id, labels.dtype)
  shifted = xp.concatenate([start, labels[..., :-1]], axis=-1)  # [batch, len]
  return xp.where(shifted == -100, pad_token_id, shifted).astype(xp.int32)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of ``key_pos - query_pos``: exact for small, log-spaced for large distances.

  With ``bidirectional`` half the buckets hold positive offsets; otherwise
  only non-positive offsets (the past) get distinct buckets. Distances of
  ``max_distance`` and more share the last bucket. Computed in float32 as the
  PyTorch reference does, so bucket boundaries agree exactly.
  """
  rel = jnp.asarray(relative_position, jnp.int32)
  buckets = jnp.zeros_like(rel)
  n = num_buckets
  if bidirectional:
    n //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * n
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = n // 2
  is_small = rel < max_exact
  # Guard log(0): those positions take the exact branch anyway.
  safe = jnp.maximum(rel, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                       * (n - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, n - 1)
  return buckets + jnp.where(is_small, rel, large)


class T5LayerNorm(nn.Module):
  """RMS norm without mean subtraction or bias; statistics in float32."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                        (x.shape[-1],), cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + cfg.layer_norm_epsilon)
    return (weight.astype(jnp.float32) * y).astype(cfg.dtype)


def _dense(cfg: T5Config, features: int, axes: tuple[str, str], std: float, name: str) -> Dense:
  return Dense(features=features, use_bias=False, kernel_axes=axes, dtype=cfg.dtype,
               param_dtype=cfg.param_dtype, kernel_init=nn.initializers.normal(std),
               lora=cfg.lora, name=name)


def _dropout(cfg: T5Config) -> Dropout:
  """T5's dropout at ``cfg.dropout_rate``, its masks from ``cfg.dropout_rng``."""
  return Dropout(cfg.dropout_rate, rng_impl=cfg.dropout_rng)


class T5Attention(nn.Module):
  """Multi-head attention without score scaling, plus T5's relative position bias.

  Attributes:
    config: the model config.
    is_decoder: causal buckets (unidirectional) for the position bias.
    has_relative_attention_bias: owns the ``relative_attention_bias`` table
      (first block of a stack) and returns the bias it computed.
    is_cross: encoder-decoder attention (keys/values from ``kv``).
  """
  config: T5Config
  is_decoder: bool = False
  has_relative_attention_bias: bool = False
  is_cross: bool = False

  def _compute_bias(self, table: nn.Embed, query_positions: Array, key_positions: Array) -> Array:
    """``[1, heads, q, k]`` float32 bias for the given absolute positions."""
    cfg = self.config
    relative = key_positions[None, :] - query_positions[:, None]  # [q, k]
    buckets = relative_position_bucket(relative, bidirectional=not self.is_decoder,
                                       num_buckets=cfg.relative_attention_num_buckets,
                                       max_distance=cfg.relative_attention_max_distance)
    values = table(buckets)  # [q, k, heads]
    return jnp.transpose(values, (2, 0, 1))[None]  # [1, heads, q, k]

  def _split(self, x: Array) -> Array:
    cfg = self.config
    x = x.reshape(x.shape[:2] + (cfg.num_heads, cfg.d_kv))  # [batch, len, heads, d_kv]
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_heads", "act_kv"))

  @nn.compact
  def __call__(self, x: Array, kv: Optional[Array], mask: Optional[Array],
               position_bias: Optional[Array], cache_index: Optional[Array],
               deterministic: bool, decode: bool) -> tuple[Array, Optional[Array]]:
    """Attends ``x`` ``[batch, q, d_model]`` to itself or to ``kv`` ``[batch, k, d_model]``.

    Args:
      x: queries' input.
      kv: encoder states for cross-attention; None for self-attention.
      mask: bool, broadcastable to ``[batch, heads, q, k]`` (True = attend);
        ignored for self-attention in a decode step (the cache index decides).
      position_bias: a precomputed ``[1, heads, q, k]`` bias, or None (computed
        here when this layer owns the table, else no bias).
      cache_index: scalar decode position (decoder self-attention, decode=True).
      deterministic: disables dropout.
      decode: incremental decoding with the ``'cache'`` collection.

    Returns:
      ``([batch, q, d_model], position_bias)``.
    """
    cfg = self.config
    inner = cfg.num_heads * cfg.d_kv
    q_proj = _dense(cfg, inner, ("embed", "joined_kv"), (cfg.d_model * cfg.d_kv) ** -0.5, "q")
    k_proj = _dense(cfg, inner, ("embed", "joined_kv"), cfg.d_model ** -0.5, "k")
    v_proj = _dense(cfg, inner, ("embed", "joined_kv"), cfg.d_model ** -0.5, "v")
    o_proj = _dense(cfg, cfg.d_model, ("joined_kv", "embed"), inner ** -0.5, "o")
    q = self._split(q_proj(x, deterministic=deterministic))  # [batch, q, heads, d_kv]
    src = x if kv is None else kv
    k = self._split(k_proj(src, deterministic=deterministic))  # [batch, k, heads, d_kv]
    v = self._split(v_proj(src, deterministic=deterministic))  # [batch, k, heads, d_kv]

    q_len = x.shape[1]
    q_offset = 0
    if decode and not self.is_cross:
      initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
      if initialized:
        if q_len != 1:
          raise ValueError(f"decode=True expects one new token per step, got {q_len}")
        max_len = cached_key.value.shape[1]
        cached_key.value = jax.lax.dynamic_update_slice(
            cached_key.value, k.astype(cached_key.value.dtype), (0, cache_index, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, v.astype(cached_value.value.dtype), (0, cache_index, 0, 0))
        k, v = cached_key.value, cached_value.value  # [batch, max_len, heads, d_kv]
        mask = (jnp.arange(max_len) <= cache_index)[None, None, None, :]  # [1, 1, 1, max_len]
        q_offset = cache_index

    if position_bias is None and self.has_relative_attention_bias:
      table = nn.Embed(
          cfg.relative_attention_num_buckets, cfg.num_heads, dtype=jnp.float32,
          param_dtype=cfg.param_dtype,
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(cfg.d_model ** -0.5), ("relpos_buckets", "heads")),
          name="relative_attention_bias")
      position_bias = self._compute_bias(table, jnp.arange(q_len) + q_offset,
                                         jnp.arange(k.shape[1]))

    # [batch, q, heads, d_kv] x [batch, k, heads, d_kv] -> [batch, heads, q, k]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if position_bias is not None:
      scores = scores + position_bias
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    probs = _dropout(cfg)(probs, deterministic=deterministic)
    # [batch, heads, q, k] x [batch, k, heads, d_kv] -> [batch, q, heads, d_kv]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(cfg.dtype))
    out = out.reshape(out.shape[:2] + (cfg.num_heads * cfg.d_kv,))  # [batch, q, heads*d_kv]
    out = o_proj(out, deterministic=deterministic)
    return out, position_bias


class T5DenseActDense(nn.Module):
  """``wo(drop(act(wi x)))`` or, gated, ``wo(drop(act(wi_0 x) * wi_1 x))``."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    act = _ACTIVATIONS[cfg.dense_act_fn]
    if cfg.is_gated_act:
      h = act(_dense(cfg, cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, "wi_0")(x, deterministic))
      h = h * _dense(cfg, cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, "wi_1")(x, deterministic)
    else:
      h = act(_dense(cfg, cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, "wi")(x, deterministic))
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))  # [batch, len, d_ff]
    h = _dropout(cfg)(h, deterministic=deterministic)
    return _dense(cfg, cfg.d_model, ("mlp", "embed"), cfg.d_ff ** -0.5, "wo")(h, deterministic)


class Adapter(nn.Module):
  """Bottleneck adapter ``x + up(relu(down(x)))``; ``up`` starts at zero (identity)."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    down = Dense(cfg.adapter_dim, use_bias=True, kernel_axes=("embed", "mlp"), dtype=cfg.dtype,
                 param_dtype=cfg.param_dtype, kernel_init=nn.initializers.normal(cfg.d_model ** -0.5),
                 name="down")
    up = Dense(cfg.d_model, use_bias=True, kernel_axes=("mlp", "embed"), dtype=cfg.dtype,
               param_dtype=cfg.param_dtype, kernel_init=nn.initializers.zeros_init(), name="up")
    return x + up(jax.nn.relu(down(x, deterministic)), deterministic)


class T5LayerSelfAttention(nn.Module):
  config: T5Config
  is_decoder: bool = False
  has_relative_attention_bias: bool = False

  @nn.compact
  def __call__(self, x, mask, position_bias, cache_index, deterministic, decode):
    cfg = self.config
    h = T5LayerNorm(cfg, name="layer_norm")(x)
    h, position_bias = T5Attention(cfg, is_decoder=self.is_decoder,
                                   has_relative_attention_bias=self.has_relative_attention_bias,
                                   name="SelfAttention")(
        h, None, mask, position_bias, cache_index, deterministic, decode)
    return x + _dropout(cfg)(h, deterministic=deterministic), position_bias


class T5LayerCrossAttention(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, kv, mask, deterministic):
    cfg = self.config
    h = T5LayerNorm(cfg, name="layer_norm")(x)
    h, _ = T5Attention(cfg, is_decoder=True, is_cross=True, name="EncDecAttention")(
        h, kv, mask, None, None, deterministic, False)
    return x + _dropout(cfg)(h, deterministic=deterministic)


class T5LayerFF(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, deterministic):
    cfg = self.config
    h = T5LayerNorm(cfg, name="layer_norm")(x)
    h = T5DenseActDense(cfg, name="DenseReluDense")(h, deterministic)
    if cfg.adapter_dim:
      h = Adapter(cfg, name="adapter")(h, deterministic)
    return x + _dropout(cfg)(h, deterministic=deterministic)


class T5Block(nn.Module):
  """One encoder block (self-attention, FFN) or decoder block (+ cross-attention).

  ``__call__`` returns ``(hidden, position_bias)`` for the bias-owning first
  block and ``(hidden, None)`` otherwise, so later blocks can be scanned with
  the hidden state as the carry.
  """
  config: T5Config
  is_decoder: bool = False
  has_relative_attention_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], position_bias: Optional[Array],
               encoder_hidden_states: Optional[Array], encoder_mask: Optional[Array],
               cache_index: Optional[Array], deterministic: bool, decode: bool):
    cfg = self.config
    x, bias = T5LayerSelfAttention(cfg, self.is_decoder, self.has_relative_attention_bias,
                                   name="layer_0")(
        x, mask, position_bias, cache_index, deterministic, decode)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    if self.is_decoder:
      x = T5LayerCrossAttention(cfg, name="layer_1")(x, encoder_hidden_states, encoder_mask,
                                                     deterministic)
      x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    x = T5LayerFF(cfg, name=f"layer_{2 if self.is_decoder else 1}")(x, deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    return x, (bias if self.has_relative_attention_bias else None)


class T5Stack(nn.Module):
  """Encoder or decoder stack: dropout(embeddings) -> blocks -> final RMS norm -> dropout."""
  config: T5Config
  is_decoder: bool = False

  @nn.compact
  def __call__(self, inputs_embeds: Array, attention_mask: Optional[Array],
               encoder_hidden_states: Optional[Array] = None,
               encoder_attention_mask: Optional[Array] = None, *,
               deterministic: bool = True, decode: bool = False,
               output_hidden_states: bool = False):
    """Runs the stack.

    Args:
      inputs_embeds: ``[batch, len, d_model]``.
      attention_mask: ``[batch, len]`` (1 = token, 0 = padding) or None.
      encoder_hidden_states: ``[batch, src_len, d_model]`` (decoder only).
      encoder_attention_mask: ``[batch, src_len]`` or None (decoder only).
      deterministic: disables dropout.
      decode: one incremental decoder step with the ``'cache'`` collection.
      output_hidden_states: also return every block's output.

    Returns:
      ``(last_hidden_state, hidden_states or None)``.
    """
    cfg = self.config
    n_layers = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
    x = nn.with_logical_constraint(inputs_embeds.astype(cfg.dtype),
                                   ("act_batch", "act_len", "act_embed"))
    length = x.shape[1]

    mask = None
    if attention_mask is not None:
      mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]  # [batch, 1, 1, len]
    if self.is_decoder:
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, len, len]
      mask = causal if mask is None else jnp.logical_and(mask, causal)
    encoder_mask = None
    if encoder_attention_mask is not None:
      # [batch, 1, 1, src_len]
      encoder_mask = jnp.asarray(encoder_attention_mask).astype(bool)[:, None, None, :]

    cache_index = None
    if decode:
      if not self.is_decoder:
        raise ValueError("decode=True is only meaningful for the decoder stack")
      initialized = self.has_variable("cache", "cache_index")
      index_var = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
      if initialized:
        cache_index = index_var.value
        index_var.value = cache_index + 1

    x = _dropout(cfg)(x, deterministic=deterministic)
    hidden_states = [x] if output_hidden_states else None

    block_cls = T5Block
    if cfg.remat:
      # self counts as argument 0: deterministic and decode are arguments 7 and 8.
      block_cls = nn.remat(T5Block, static_argnums=(7, 8), prevent_cse=not cfg.scan_layers)
    args = (encoder_hidden_states, encoder_mask, cache_index, deterministic, decode)
    x, position_bias = block_cls(cfg, self.is_decoder, True, name="block_0")(x, mask, None, *args)
    if output_hidden_states:
      hidden_states.append(x)

    if n_layers > 1:
      if cfg.scan_layers:
        if output_hidden_states:
          raise ValueError("output_hidden_states needs scan_layers=False (scanned blocks keep no "
                           "per-layer outputs)")
        scanned = nn.scan(
            block_cls,
            variable_axes={"params": 0, "cache": 1},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * 7,
            length=n_layers - 1,
            metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(cfg, self.is_decoder, False, name="blocks")(
            x, mask, position_bias, *args)
      else:
        for i in range(1, n_layers):
          x, _ = block_cls(cfg, self.is_decoder, False, name=f"block_{i}")(
              x, mask, position_bias, *args)
          if output_hidden_states:
            hidden_states.append(x)

    x = T5LayerNorm(cfg, name="final_layer_norm")(x)
    x = _dropout(cfg)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    if output_hidden_states:
      # HF reports the final (normed) state in place of the last block's raw output.
      hidden_states[-1] = x
      return x, tuple(hidden_states)
    return x, None


class T5ForConditionalGeneration(nn.Module):
  """T5 encoder-decoder with a language-model head, taking HF's argument names.

  Methods: ``__call__`` (teacher forcing), ``encode``, ``embed_tokens``,
  ``decode`` (full or one cached step) and ``init_cache``.
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        name="shared")
    self.encoder = T5Stack(cfg, is_decoder=False, name="encoder")
    self.decoder = T5Stack(cfg, is_decoder=True, name="decoder")
    if not cfg.tie_word_embeddings:
      self.lm_head = Dense(cfg.vocab_size, use_bias=False, kernel_axes=("embed", "vocab"),
                           dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           # HF initialises an untied head with std 1.0, which gives
                           # logits of std ~sqrt(d_model) and a large initial loss when
                           # training from scratch; fan-in scaling (as T5X) starts near
                           # log(vocab). Loaded checkpoints are unaffected.
                           kernel_init=nn.initializers.normal(cfg.d_model ** -0.5),
                           name="lm_head")

  def embed_tokens(self, input_ids: Array) -> Array:
    """``[batch, len]`` ids -> ``[batch, len, d_model]`` rows of the shared embedding."""
    x = self.shared(jnp.asarray(input_ids).astype(jnp.int32))
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))

  def encode(self, input_ids: Optional[Array] = None, attention_mask: Optional[Array] = None,
             inputs_embeds: Optional[Array] = None, deterministic: bool = True,
             output_hidden_states: bool = False):
    """Encoder states ``[batch, len, d_model]``.

    Exactly one of ``input_ids`` ``[batch, len]`` and ``inputs_embeds``
    ``[batch, len, d_model]`` must be given (the video model passes visual
    tokens concatenated with ``embed_tokens(input_ids)``). With
    ``output_hidden_states`` returns ``(last_hidden_state, hidden_states)``.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("encode: give exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    last, hidden = self.encoder(inputs_embeds, attention_mask, deterministic=deterministic,
                                output_hidden_states=output_hidden_states)
    return (last, hidden) if output_hidden_states else last

  def _logits(self, x: Array) -> Array:
    cfg = self.config
    if cfg.tie_word_embeddings:
      x = x * (cfg.d_model ** -0.5)
      logits = self.shared.attend(x)  # [batch, len, vocab]
    else:
      logits = self.lm_head(x)  # [batch, len, vocab]
    logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
    return logits.astype(jnp.float32)

  def _decode(self, encoder_hidden_states, encoder_attention_mask, decoder_input_ids,
              decoder_attention_mask, decode, deterministic, output_hidden_states):
    x = self.embed_tokens(decoder_input_ids)
    if decode:
      decoder_attention_mask = None
    last, hidden = self.decoder(x, decoder_attention_mask, encoder_hidden_states,
                                encoder_attention_mask, deterministic=deterministic,
                                decode=decode, output_hidden_states=output_hidden_states)
    return self._logits(last), hidden

  def decode(self, encoder_hidden_states: Array, encoder_attention_mask: Optional[Array],
             decoder_input_ids: Array, decoder_attention_mask: Optional[Array] = None,
             decode: bool = False, deterministic: bool = True) -> Array:
    """Decoder logits ``[batch, len, vocab]`` (float32).

    Args:
      encoder_hidden_states: ``[batch, src_len, d_model]`` from :meth:`encode`.
      encoder_attention_mask: ``[batch, src_len]`` or None.
      decoder_input_ids: ``[batch, len]``; with ``decode=True`` one step ``[batch, 1]``.
      decoder_attention_mask: ``[batch, len]`` padding mask (combined with the
        causal mask); ignored with ``decode=True``.
      decode: incremental decoding with the ``'cache'`` collection (apply with
        ``mutable=['cache']`` and a cache from :meth:`init_cache`).
      deterministic: disables dropout.
    """
    return self._decode(encoder_hidden_states, encoder_attention_mask, decoder_input_ids,
                        decoder_attention_mask, decode, deterministic, False)[0]

  def __call__(self, input_ids: Optional[Array] = None, attention_mask: Optional[Array] = None,
               decoder_input_ids: Optional[Array] = None,
               decoder_attention_mask: Optional[Array] = None,
               inputs_embeds: Optional[Array] = None, output_hidden_states: bool = False,
               deterministic: bool = True) -> T5Output:
    """Teacher-forced forward pass; see :class:`T5Output`.

    ``decoder_input_ids`` are given (use :func:`shift_right` on the labels).
    """
    if decoder_input_ids is None:
      raise ValueError("decoder_input_ids is required (shift_right(labels, ...) builds it)")
    enc = self.encode(input_ids, attention_mask, inputs_embeds, deterministic, output_hidden_states)
    enc_last, enc_hidden = enc if output_hidden_states else (enc, None)
    logits, dec_hidden = self._decode(enc_last, attention_mask, decoder_input_ids,
                                      decoder_attention_mask, False, deterministic,
                                      output_hidden_states)
    return T5Output(logits=logits, encoder_last_hidden_state=enc_last,
                    encoder_hidden_states=enc_hidden, decoder_hidden_states=dec_hidden)

  @nn.nowrap
  def init_cache(self, batch_size: int, max_decode_length: int, encoder_hidden_states: Array,
                 encoder_attention_mask: Optional[Array]):
    """The zero decoding cache for ``batch_size`` sequences of up to ``max_decode_length`` tokens.

    Call on the (unbound) module; no parameters are needed (shapes come from
    ``jax.eval_shape``). Returns the ``'cache'`` collection pytree.
    """
    return init_cache(self.config, batch_size, max_decode_length, encoder_hidden_states,
                      encoder_attention_mask)


def init_cache(config: T5Config, batch_size: int, max_decode_length: int,
               encoder_hidden_states: Array, encoder_attention_mask: Optional[Array]):
  """Module-level form of :meth:`T5ForConditionalGeneration.init_cache` (takes the config)."""
  model = T5ForConditionalGeneration(config)
  dummy = jnp.zeros((batch_size, max_decode_length), jnp.int32)

  def _init():
    return model.init({"params": jax.random.PRNGKey(0)}, encoder_hidden_states,
                      encoder_attention_mask, dummy, decode=True,
                      method=T5ForConditionalGeneration.decode)

  shapes = jax.eval_shape(_init)["cache"]
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))


def param_count(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
