"""Layers shared by every model: a Dense with logical axes and optional LoRA, and dropout.

All projection matrices in t5video go through :class:`Dense`, so that
parameter-efficient tuning (LoRA) and logical-axis sharding apply uniformly to
CLIP, T5 and the video heads. Kernels are stored ``[in, out]`` (Flax layout);
converters transpose PyTorch's ``[out, in]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# The compute / param dtypes configs name (``train.dtype``, ``T5Config.dtype``): the one table.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

Dtype = Any
Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Low-rank adaptation of Dense kernels: ``y = x W + (alpha / rank) * drop(x) A B``.

  Attributes:
    rank: the rank r of ``A [in, r]`` and ``B [r, out]``.
    alpha: the scale numerator; the update is multiplied by ``alpha / rank``.
    dropout: dropout rate on the LoRA input path (training only).
    targets: a regex searched in the '/'-joined module path of each Dense
      (e.g. ``'SelfAttention/(q|v)$'``); matching layers get ``lora_A``/``lora_B``.
  """
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = r"(q|v|q_proj|v_proj)$"

  def matches(self, path: Sequence[str]) -> bool:
    return re.search(self.targets, "/".join(path)) is not None


class Dense(nn.Module):
  """``y = x @ kernel (+ bias)`` on the last axis, with logical axes and optional LoRA.

  Attributes:
    features: output width.
    use_bias: whether to add a bias.
    kernel_axes: logical names of the kernel's two axes, e.g. ``('embed', 'mlp')``.
    dtype: computation dtype (params stay in ``param_dtype``).
    lora: if set and the module path matches ``lora.targets``, adds the low-rank path.
    deterministic: disables LoRA dropout when True (set per call via ``__call__``).
  """
  features: int
  use_bias: bool = True
  kernel_axes: tuple[str | None, str | None] = ("embed", "mlp")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  lora: Optional[LoraSpec] = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        (in_features, self.features), self.param_dtype)
    x = x.astype(self.dtype)
    # [..., in] x [in, out] -> [..., out]
    y = jnp.einsum("...i,io->...o", x, kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param(
          "bias", nn.with_logical_partitioning(self.bias_init, (self.kernel_axes[1],)),
          (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora is not None and self.lora.matches(self.scope.path):
      a = self.param("lora_A", nn.with_logical_partitioning(
          nn.initializers.kaiming_uniform(), (self.kernel_axes[0], None)),
          (in_features, self.lora.rank), self.param_dtype)
      # B starts at zero, so an untrained LoRA leaves the model unchanged.
      b = self.param("lora_B", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), (None, self.kernel_axes[1])),
          (self.lora.rank, self.features), self.param_dtype)
      h = nn.Dropout(self.lora.dropout)(x, deterministic=deterministic)
      # [..., in] x [in, r] x [r, out] -> [..., out]
      h = jnp.einsum("...i,ir->...r", h, a.astype(self.dtype))
      y = y + (self.lora.alpha / self.lora.rank) * jnp.einsum(
          "...r,ro->...o", h, b.astype(self.dtype))
    return y


DROPOUT_RNGS = ("hash", "threefry")


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hashed_keep_mask(rng: jax.Array, shape: Sequence[int], rate: float) -> tuple[jax.Array, float]:
  """(a bool mask of ``shape``, each element kept with probability ``1 - rate``; that probability).

  Each element's bits are a hash of its flat index under two 32-bit seeds drawn from ``rng``
  (``fmix32(fmix32(index * golden + seed0) ^ seed1)``): about ten integer operations an element,
  where JAX's threefry (what ``nn.Dropout`` draws from) costs some eighty. The keep probability is
  ``1 - round(rate * 2**32) / 2**32``, exact to 2**-32. The masks are what dropout needs (each
  element kept independently with the right probability, masks of different keys unrelated), not
  a random stream for anything else: not cryptographic, and indices repeat past 2**32 elements.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  n = math.prod(shape)
  h = jax.lax.iota(jnp.uint32, n).reshape(tuple(shape))  # [*shape] flat element indices
  h = _fmix32(h * jnp.uint32(0x9E3779B9) + seeds[0])
  h = _fmix32(h ^ seeds[1])
  threshold = int(round(rate * 2**32))
  return h >= jnp.uint32(min(threshold, 2**32 - 1)), 1.0 - threshold / 2**32


class Dropout(nn.Module):
  """Inverted dropout (kept elements scaled by ``1 / keep``), with the mask from ``rng_impl``.

  ``'hash'`` (the default): :func:`hashed_keep_mask`, seeded from the ``'dropout'`` RNG stream;
  on XLA:CPU it takes dropout from about a fifth of a T5 training step to almost nothing
  (benchmarks/bench_t5.py, docs/performance.md). ``'threefry'``: Flax's ``nn.Dropout`` (JAX's
  default generator), for runs that must reproduce masks drawn that way.
  """
  rate: float
  rng_impl: str = "hash"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if self.rng_impl not in DROPOUT_RNGS:
      raise ValueError(f"dropout rng_impl must be one of {DROPOUT_RNGS}, got {self.rng_impl!r}")
    if self.rng_impl == "threefry":
      return nn.Dropout(self.rate)(x, deterministic=deterministic)
    if deterministic or self.rate == 0.0:
      return x
    keep, keep_prob = hashed_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
