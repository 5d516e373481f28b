"""Layers shared by every model: a Dense with logical axes and optional LoRA.

All projection matrices in t5video go through :class:`Dense`, so that
parameter-efficient tuning (LoRA) and logical-axis sharding apply uniformly to
CLIP, T5 and the video heads. Kernels are stored ``[in, out]`` (Flax layout);
converters transpose PyTorch's ``[out, in]``.
"""

from __future__ import annotations

import dataclasses
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
