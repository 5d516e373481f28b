"""CLIP (vision and text towers) in Flax Linen, numerically equal to HF PyTorch.

The modules mirror ``transformers``' ``CLIPVisionModel`` / ``CLIPTextModel`` /
``CLIPModel`` so closely that their parameter trees carry the PyTorch
state-dict names ('.' becomes '/', ``layers.3`` becomes ``layers_3``,
``weight`` becomes ``kernel`` / ``scale`` / ``embedding``); the converter in
:mod:`t5video.models.convert_clip` is therefore a table of renames and
transposes.

Conventions:

* ``pixel_values`` are **NHWC** floats that are already CLIP-normalised
  (see :func:`clip_preprocess`): ``[batch, H, W, 3]`` for images or
  ``[batch, frames, H, W, 3]`` for video. Video folds the frames into the batch
  and every output keeps the frames axis: ``last_hidden_state
  [batch, frames, len, embed]``, ``pooler_output [batch, frames, embed]``,
  ``image_embeds [batch, frames, projection_dim]``.
* ``hidden_states`` (when asked for) is a tuple of ``num_hidden_layers + 1``
  arrays: the encoder input (after ``pre_layrnorm`` for vision, the token plus
  position embeddings for text) and the output of every layer, exactly as HF
  returns them.
* Images whose size differs from ``config.image_size`` get bicubically
  interpolated position embeddings (the class position is kept), with the same
  kernel as ``torch.nn.functional.interpolate(mode='bicubic',
  align_corners=False)``, which HF uses for ``interpolate_pos_encoding=True``.

Example::

  module, params = convert_clip.clip_from_hf(state_dict, hf_config)
  out = module.apply({"params": params}, pixel_values=clip_preprocess(frames))
  out.image_embeds  # [batch, frames, projection_dim]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.layers import Dense, LoraSpec

Array = jax.Array

# CLIP's image normalisation (the values in every openai/clip-* preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# -----------------------------------------------------------------------------
# Configs
# -----------------------------------------------------------------------------

def _quick_gelu(x: Array) -> Array:
  return x * jax.nn.sigmoid(1.702 * x)


# HF ``ACT2FN`` names -> JAX functions (only those a CLIP config.json may name).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": _quick_gelu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# Fields of ours that HF's config.json does not have.
_OWN_FIELDS = ("dtype", "param_dtype", "remat", "lora")


def _pair(value: Any, name: str) -> tuple[int, int]:
  if isinstance(value, (list, tuple)):
    if len(value) != 2:
      raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])
  return int(value), int(value)


def _check_common(cfg: Any, kind: str) -> None:
  """Validation shared by both tower configs."""
  if cfg.hidden_size % cfg.num_attention_heads:
    raise ValueError(
        f"{kind}: hidden_size ({cfg.hidden_size}) is not a multiple of "
        f"num_attention_heads ({cfg.num_attention_heads})")
  if cfg.hidden_act not in ACTIVATIONS:
    raise ValueError(f"{kind}: hidden_act={cfg.hidden_act!r} is not supported; known: {sorted(ACTIVATIONS)}")
  for name in ("dtype", "param_dtype"):
    try:
      jnp.dtype(getattr(cfg, name))
    except TypeError as e:
      raise ValueError(f"{kind}: {name}={getattr(cfg, name)!r} is not a dtype") from e
  if cfg.lora is not None and not isinstance(cfg.lora, LoraSpec):
    raise ValueError(f"{kind}: lora must be a t5video.models.layers.LoraSpec or None, got {type(cfg.lora).__name__}")


def _from_hf(cls, hf: Mapping[str, Any], sub_key: str, model_type: str, overrides: dict[str, Any]):
  """Builds ``cls`` from an HF config dict (a tower config or a full CLIPConfig)."""
  if not isinstance(hf, Mapping):
    raise TypeError(f"{cls.__name__}.from_hf expects a config.json dict, got {type(hf).__name__}")
  if sub_key in hf:  # a full CLIPConfig: take the tower's sub-dict.
    hf = hf[sub_key] or {}
  got_type = hf.get("model_type")
  if got_type not in (None, model_type):
    raise ValueError(f"{cls.__name__}.from_hf: config has model_type={got_type!r}, expected {model_type!r}")
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(overrides) - names
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown override(s) {sorted(unknown)}; fields are {sorted(names)}")
  # HF's own 'dtype' / 'torch_dtype' key is the storage dtype of the weights,
  # not a compute dtype: it is deliberately not read.
  kwargs = {k: v for k, v in hf.items() if k in names and k not in _OWN_FIELDS}
  for k in ("image_size", "patch_size"):
    if isinstance(kwargs.get(k), list):
      kwargs[k] = tuple(kwargs[k])
  kwargs.update(overrides)
  return cls(**kwargs)


def _to_hf(cfg: Any, model_type: str) -> dict[str, Any]:
  out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _OWN_FIELDS}
  for k, v in out.items():
    if isinstance(v, tuple):
      out[k] = list(v)
  out["model_type"] = model_type
  out["dtype"] = jnp.dtype(cfg.param_dtype).name
  return out


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Hyper-parameters of the CLIP vision tower; names and defaults equal HF's.

  Attributes:
    hidden_size: width D of the transformer.
    intermediate_size: MLP width.
    num_hidden_layers: number of encoder layers.
    num_attention_heads: attention heads (D must divide by it).
    num_channels: input channels (3).
    image_size: the checkpoint's training resolution (int or (H, W)); other
      input sizes interpolate the position embeddings.
    patch_size: patch side (int or (H, W)).
    hidden_act: MLP activation, an HF ``ACT2FN`` name ('quick_gelu', 'gelu', ...).
    layer_norm_eps: LayerNorm epsilon.
    attention_dropout: dropout on attention probabilities (training only).
    projection_dim: width of ``visual_projection`` (when a projection is used).
    initializer_range: std of the patch / position embedding init.
    initializer_factor: HF's init multiplier (kept for the round trip).
    dtype: compute dtype (str or jnp dtype).
    param_dtype: parameter dtype.
    remat: rematerialise every encoder layer in the backward pass.
    lora: LoRA on the Dense layers whose path matches ``lora.targets``.
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int | tuple[int, int] = 224
  patch_size: int | tuple[int, int] = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  projection_dim: int = 512
  initializer_range: float = 0.02
  initializer_factor: float = 1.0
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  remat: bool = False
  lora: Optional[LoraSpec] = None

  def __post_init__(self):
    _check_common(self, "CLIPVisionConfig")
    image, patch = _pair(self.image_size, "image_size"), _pair(self.patch_size, "patch_size")
    if image[0] % patch[0] or image[1] % patch[1]:
      raise ValueError(f"CLIPVisionConfig: image_size {image} is not a multiple of patch_size {patch}")

  @property
  def grid(self) -> tuple[int, int]:
    """The checkpoint's patch grid (rows, cols)."""
    image, patch = _pair(self.image_size, "image_size"), _pair(self.patch_size, "patch_size")
    return image[0] // patch[0], image[1] // patch[1]

  @property
  def num_positions(self) -> int:
    return self.grid[0] * self.grid[1] + 1

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "CLIPVisionConfig":
    """From an HF ``config.json`` dict (``clip_vision_model`` or a full ``clip`` one).

    Args:
      hf: the parsed config.json; keys HF has and we do not are ignored.
      **overrides: our own fields (dtype, param_dtype, remat, lora) or any
        other field to replace.
    """
    return _from_hf(cls, hf, "vision_config", "clip_vision_model", overrides)

  def to_hf(self) -> dict[str, Any]:
    """The HF ``CLIPVisionConfig`` dict (``model_type='clip_vision_model'``)."""
    return _to_hf(self, "clip_vision_model")

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "CLIPVisionConfig":
    """A named size from :data:`VARIANTS`, e.g. ``'B/32'``."""
    return cls(**{**_variant(name)["vision"], **overrides})


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Hyper-parameters of the CLIP text tower; names and defaults equal HF's.

  Attributes:
    vocab_size: token vocabulary size.
    hidden_size: width D.
    intermediate_size: MLP width.
    num_hidden_layers: number of encoder layers.
    num_attention_heads: attention heads.
    max_position_embeddings: the longest input (77 for CLIP).
    hidden_act: MLP activation name.
    layer_norm_eps: LayerNorm epsilon.
    attention_dropout: dropout on attention probabilities (training only).
    projection_dim: width of ``text_projection``.
    pad_token_id: padding id (HF default 1).
    bos_token_id: start-of-text id.
    eos_token_id: end-of-text id. ``2`` selects HF's legacy pooling (the
      position of the largest id, which is the end-of-text token in OpenAI's
      vocabulary); any other value pools at the first occurrence of this id.
    initializer_range: embedding init std.
    initializer_factor: HF's init multiplier (kept for the round trip).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    remat: rematerialise every encoder layer in the backward pass.
    lora: LoRA on the Dense layers whose path matches ``lora.targets``.
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  attention_dropout: float = 0.0
  projection_dim: int = 512
  pad_token_id: Optional[int] = 1
  bos_token_id: Optional[int] = 49406
  eos_token_id: int = 49407
  initializer_range: float = 0.02
  initializer_factor: float = 1.0
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  remat: bool = False
  lora: Optional[LoraSpec] = None

  def __post_init__(self):
    _check_common(self, "CLIPTextConfig")
    eos = self.eos_token_id
    if isinstance(eos, (list, tuple)):
      if len(eos) != 1:
        raise ValueError(f"CLIPTextConfig: eos_token_id must be one id for pooling, got {eos!r}")
      object.__setattr__(self, "eos_token_id", int(eos[0]))
    elif not isinstance(eos, (int, np.integer)) or isinstance(eos, bool):
      raise ValueError(f"CLIPTextConfig: eos_token_id must be an int (the pooled token), got {eos!r}")

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "CLIPTextConfig":
    """From an HF ``config.json`` dict (``clip_text_model`` or a full ``clip`` one)."""
    return _from_hf(cls, hf, "text_config", "clip_text_model", overrides)

  def to_hf(self) -> dict[str, Any]:
    """The HF ``CLIPTextConfig`` dict (``model_type='clip_text_model'``)."""
    return _to_hf(self, "clip_text_model")

  @classmethod
  def from_variant(cls, name: str, **overrides) -> "CLIPTextConfig":
    """A named size from :data:`VARIANTS`, e.g. ``'B/32'``."""
    return cls(**{**_variant(name)["text"], **overrides})


_B_TEXT = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
               projection_dim=512)
_B_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, projection_dim=512)
_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768)
_L_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, projection_dim=768)

# Named sizes: the openai/clip-vit-* checkpoints, and a tiny one for tests.
VARIANTS: dict[str, dict[str, Any]] = {
    "B/32": dict(vision=dict(_B_VISION, patch_size=32), text=_B_TEXT, projection_dim=512),
    "B/16": dict(vision=dict(_B_VISION, patch_size=16), text=_B_TEXT, projection_dim=512),
    "L/14": dict(vision=dict(_L_VISION, image_size=224), text=_L_TEXT, projection_dim=768),
    "L/14-336": dict(vision=dict(_L_VISION, image_size=336), text=_L_TEXT, projection_dim=768),
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, projection_dim=16),
        text=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=16, projection_dim=16,
                  pad_token_id=1, bos_token_id=97, eos_token_id=98),
        projection_dim=16),
}


def _variant(name: str) -> dict[str, Any]:
  if name not in VARIANTS:
    raise ValueError(f"unknown CLIP variant {name!r}; known: {sorted(VARIANTS)}")
  return VARIANTS[name]


# -----------------------------------------------------------------------------
# Outputs (HF field names)
# -----------------------------------------------------------------------------

@flax.struct.dataclass
class CLIPVisionOutput:
  """Vision tower outputs. Video inputs keep their frames axis on every field.

  Attributes:
    last_hidden_state: ``[batch, (frames,) len, embed]``, len = 1 + patches.
    pooler_output: post-LayerNorm class token ``[batch, (frames,) embed]``.
    hidden_states: ``num_hidden_layers + 1`` arrays like last_hidden_state, or None.
    image_embeds: ``visual_projection(pooler_output)`` ``[batch, (frames,) projection_dim]``,
      or None without a projection.
  """
  last_hidden_state: Array
  pooler_output: Array
  hidden_states: Optional[tuple[Array, ...]] = None
  image_embeds: Optional[Array] = None


@flax.struct.dataclass
class CLIPTextOutput:
  """Text tower outputs.

  Attributes:
    last_hidden_state: after ``final_layer_norm``, ``[batch, len, embed]``.
    pooler_output: the end-of-text position of last_hidden_state, ``[batch, embed]``.
    hidden_states: ``num_hidden_layers + 1`` arrays (before the final norm), or None.
    text_embeds: ``text_projection(pooler_output)``, or None without a projection.
  """
  last_hidden_state: Array
  pooler_output: Array
  hidden_states: Optional[tuple[Array, ...]] = None
  text_embeds: Optional[Array] = None


@flax.struct.dataclass
class CLIPOutput:
  """Outputs of :class:`CLIPModel` (the embeds are L2-normalised, as in HF).

  For video pixel_values ``[B, T, H, W, 3]``: ``image_embeds [B, T, P]``,
  ``logits_per_image [B, T, N]`` and ``logits_per_text [N, B, T]``.
  """
  logits_per_image: Array
  logits_per_text: Array
  text_embeds: Array
  image_embeds: Array
  text_model_output: CLIPTextOutput
  vision_model_output: CLIPVisionOutput


# -----------------------------------------------------------------------------
# Helpers
# -----------------------------------------------------------------------------

def clip_preprocess(frames: Any) -> Array:
  """uint8 RGB ``[..., H, W, 3]`` -> float32 CLIP-normalised pixels (same shape).

  Only the value mapping (``x / 255``, then CLIP's mean and std per channel);
  resizing and cropping belong to the data pipeline.
  """
  dtype = getattr(frames, "dtype", None)
  if dtype is None or jnp.dtype(dtype) != jnp.uint8:
    raise TypeError(f"clip_preprocess expects uint8 RGB frames, got dtype {dtype}")
  if frames.shape[-1] != 3:
    raise ValueError(f"clip_preprocess expects [..., H, W, 3] (NHWC, RGB), got shape {tuple(frames.shape)}")
  x = jnp.asarray(frames, jnp.float32) * (1.0 / 255.0)
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def fit_square(frames, size: int) -> np.ndarray:
  """uint8 ``[B, T, H, W, 3]`` -> ``[B, T, size, size, 3]``: the centre square, then a bilinear
  resize when its side differs (frames sampled for another model, fitted to this CLIP's input)."""
  frames = np.asarray(frames)
  b, t, h, w, _ = frames.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  frames = frames[:, :, top:top + side, left:left + side]  # [B, T, S, S, 3]
  if side != size:
    resized = jax.image.resize(jnp.asarray(frames, jnp.float32), (b, t, size, size, 3), method="bilinear")
    frames = np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)
  return frames


def load_clip_tokenizer(path: str):
  """The CLIP tokenizer of a local HF directory (vocab.json + merges.txt or tokenizer.json).

  Never touches the network (``local_files_only=True``).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: not a directory; expected a CLIP checkpoint or tokenizer directory")
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  files = set(os.listdir(path))
  if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
    raise FileNotFoundError(
        f"{path}: no CLIP tokenizer files (need tokenizer.json, or vocab.json and merges.txt); "
        f"found {sorted(files)}")
  return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` weights of 1-D bicubic resampling, as torch computes it.

  Matches ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)``
  without antialiasing: the cubic convolution kernel with a = -0.75, source
  coordinate ``(o + 0.5) * in / out - 0.5`` (not clamped), and taps clamped to
  the border. 2-D resizing is this matrix applied on each axis.
  """
  a = -0.75

  def near(x):  # |x| <= 1
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    src = (o + 0.5) * scale - 0.5
    base = math.floor(src)
    t = src - base
    for tap, w in enumerate((far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t))):
      m[o, min(max(base - 1 + tap, 0), in_size - 1)] += w
  return m


def _layer_norm(cfg: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def _fold(x: Array, inner_ndim: int) -> tuple[Array, tuple[int, ...]]:
  """Merges all leading axes before the last ``inner_ndim`` into one batch axis."""
  lead = tuple(x.shape[:x.ndim - inner_ndim])
  # [*lead, *inner] -> [prod(lead), *inner]
  return x.reshape((-1,) + tuple(x.shape[x.ndim - inner_ndim:])), lead


def _unfold(x: Optional[Array], lead: tuple[int, ...]) -> Optional[Array]:
  if x is None:
    return None
  # [prod(lead), *rest] -> [*lead, *rest]
  return x.reshape(lead + tuple(x.shape[1:]))


# -----------------------------------------------------------------------------
# Transformer blocks
# -----------------------------------------------------------------------------

class CLIPAttention(nn.Module):
  """Multi-head self-attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj``.

  Attributes:
    config: a CLIPVisionConfig or CLIPTextConfig.
  """
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True) -> Array:
    """Attends ``x [batch, len, embed]``; ``mask [batch|1, 1, len, len]`` bool, True = attend."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    dense = functools.partial(Dense, cfg.hidden_size, kernel_axes=("embed", "joined_kv"), dtype=dtype,
                              param_dtype=jnp.dtype(cfg.param_dtype), lora=cfg.lora)
    batch, length, _ = x.shape

    def split(y):
      # [batch, len, heads * head_dim] -> [batch, len, heads, head_dim]
      y = y.reshape(batch, length, heads, head_dim)
      return nn.with_logical_constraint(y, ("act_batch", "act_len", "act_heads", "act_kv"))

    q = split(dense(name="q_proj")(x, deterministic=deterministic))
    k = split(dense(name="k_proj")(x, deterministic=deterministic))
    v = split(dense(name="v_proj")(x, deterministic=deterministic))
    q = q * jnp.asarray(head_dim ** -0.5, dtype)
    # [batch, q_len, heads, head_dim] x [batch, k_len, heads, head_dim] -> [batch, heads, q_len, k_len]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if cfg.attention_dropout > 0.0:
      probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    # [batch, heads, q_len, k_len] x [batch, k_len, heads, head_dim] -> [batch, q_len, heads, head_dim]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    # [batch, len, heads, head_dim] -> [batch, len, heads * head_dim]
    out = out.reshape(batch, length, heads * head_dim)
    return Dense(cfg.hidden_size, kernel_axes=("joined_kv", "embed"), dtype=dtype,
                 param_dtype=jnp.dtype(cfg.param_dtype), lora=cfg.lora, name="out_proj")(
                     out, deterministic=deterministic)


class CLIPMLP(nn.Module):
  """``fc2(act(fc1(x)))``.

  Attributes:
    config: a CLIPVisionConfig or CLIPTextConfig.
  """
  config: Any

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    h = Dense(cfg.intermediate_size, kernel_axes=("embed", "mlp"), dtype=dtype, param_dtype=param_dtype,
              lora=cfg.lora, name="fc1")(x, deterministic=deterministic)
    h = ACTIVATIONS[cfg.hidden_act](h)
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
    return Dense(cfg.hidden_size, kernel_axes=("mlp", "embed"), dtype=dtype, param_dtype=param_dtype,
                 lora=cfg.lora, name="fc2")(h, deterministic=deterministic)


class CLIPEncoderLayer(nn.Module):
  """Pre-LayerNorm transformer layer: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

  Attributes:
    config: a CLIPVisionConfig or CLIPTextConfig.
  """
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True) -> Array:
    cfg = self.config
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    h = _layer_norm(cfg, "layer_norm1")(x)
    x = x + CLIPAttention(cfg, name="self_attn")(h, mask, deterministic)
    h = _layer_norm(cfg, "layer_norm2")(x)
    x = x + CLIPMLP(cfg, name="mlp")(h, deterministic)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class CLIPEncoder(nn.Module):
  """``num_hidden_layers`` layers named ``layers_0`` ... (HF: ``layers.0`` ...).

  Attributes:
    config: a CLIPVisionConfig or CLIPTextConfig.
  """
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True,
               output_hidden_states: bool = False) -> tuple[Array, Optional[tuple[Array, ...]]]:
    cfg = self.config
    # static_argnums counts self: (self=0, x=1, mask=2, deterministic=3).
    layer_cls = nn.remat(CLIPEncoderLayer, static_argnums=(3,)) if cfg.remat else CLIPEncoderLayer
    hidden_states = [x] if output_hidden_states else None
    for i in range(cfg.num_hidden_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, mask, deterministic)
      if hidden_states is not None:
        hidden_states.append(x)
    return x, (tuple(hidden_states) if hidden_states is not None else None)


# -----------------------------------------------------------------------------
# Vision tower
# -----------------------------------------------------------------------------

class CLIPPatchEmbedding(nn.Module):
  """Non-overlapping patches times ``kernel [patch_h, patch_w, channels, embed]`` (no bias).

  Equal to HF's stride-``patch`` Conv2d; pixels beyond the last full patch are
  dropped, as the convolution drops them.

  Attributes:
    config: the CLIPVisionConfig.
  """
  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixel_values: Array) -> Array:
    """``[batch, H, W, C]`` -> ``[batch, rows, cols, embed]``."""
    cfg = self.config
    ph, pw = _pair(cfg.patch_size, "patch_size")
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range * cfg.initializer_factor), (None, None, None, "embed")),
        (ph, pw, cfg.num_channels, cfg.hidden_size), jnp.dtype(cfg.param_dtype))
    batch, height, width, channels = pixel_values.shape
    rows, cols = height // ph, width // pw
    x = pixel_values[:, :rows * ph, :cols * pw, :].astype(jnp.dtype(cfg.dtype))
    # [batch, rows * ph, cols * pw, C] -> [batch, rows, ph, cols, pw, C]
    x = x.reshape(batch, rows, ph, cols, pw, channels)
    # [batch, rows, ph, cols, pw, C] x [ph, pw, C, embed] -> [batch, rows, cols, embed]
    return jnp.einsum("brpcqk,pqkd->brcd", x, kernel.astype(jnp.dtype(cfg.dtype)))


class CLIPVisionEmbeddings(nn.Module):
  """Patch embedding, class token and (possibly interpolated) position embedding.

  Attributes:
    config: the CLIPVisionConfig.
  """
  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixel_values: Array) -> Array:
    """``[batch, H, W, C]`` -> ``[batch, 1 + rows * cols, embed]``."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    patches = CLIPPatchEmbedding(cfg, name="patch_embedding")(pixel_values)
    batch, rows, cols, dim = patches.shape
    class_embedding = self.param(
        "class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(dim ** -0.5 * cfg.initializer_factor), ("embed",)),
        (dim,), jnp.dtype(cfg.param_dtype))
    position_table = nn.Embed(
        cfg.num_positions, dim, dtype=dtype, param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range * cfg.initializer_factor), ("patch", "embed")),
        name="position_embedding")(jnp.arange(cfg.num_positions))
    grid_rows, grid_cols = cfg.grid
    if (rows, cols) != (grid_rows, grid_cols):
      # [1 + grid_rows * grid_cols, dim] -> [grid_rows, grid_cols, dim]
      grid = position_table[1:].reshape(grid_rows, grid_cols, dim)
      resize_rows = jnp.asarray(bicubic_resize_matrix(grid_rows, rows), dtype)
      resize_cols = jnp.asarray(bicubic_resize_matrix(grid_cols, cols), dtype)
      # [rows, grid_rows] x [grid_rows, grid_cols, dim] -> [rows, grid_cols, dim]
      grid = jnp.einsum("rg,gcd->rcd", resize_rows, grid)
      # [cols, grid_cols] x [rows, grid_cols, dim] -> [rows, cols, dim]
      grid = jnp.einsum("cg,rgd->rcd", resize_cols, grid)
      # [rows, cols, dim] -> [rows * cols, dim]
      position_table = jnp.concatenate([position_table[:1], grid.reshape(rows * cols, dim)], axis=0)
    # [batch, rows, cols, dim] -> [batch, rows * cols, dim]
    patches = patches.reshape(batch, rows * cols, dim)
    cls = jnp.broadcast_to(class_embedding.astype(dtype), (batch, 1, dim))
    x = jnp.concatenate([cls, patches], axis=1) + position_table[None]
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class CLIPVisionTransformer(nn.Module):
  """Embeddings, ``pre_layrnorm`` (HF's spelling), encoder, ``post_layernorm`` on the class token.

  Attributes:
    config: the CLIPVisionConfig.
  """
  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixel_values: Array, output_hidden_states: bool = False, deterministic: bool = True):
    """``[batch, H, W, C]`` -> (last_hidden_state, pooler_output, hidden_states)."""
    cfg = self.config
    x = CLIPVisionEmbeddings(cfg, name="embeddings")(pixel_values)
    x = _layer_norm(cfg, "pre_layrnorm")(x)
    x, hidden_states = CLIPEncoder(cfg, name="encoder")(x, None, deterministic, output_hidden_states)
    pooled = _layer_norm(cfg, "post_layernorm")(x[:, 0])
    return x, pooled, hidden_states


def _check_pixels(pixel_values: Any, cfg: CLIPVisionConfig) -> None:
  shape = tuple(getattr(pixel_values, "shape", ()))
  if len(shape) not in (4, 5) or shape[-1] != cfg.num_channels:
    hint = ""
    if len(shape) in (4, 5) and shape[-3] == cfg.num_channels:
      hint = " (this looks like NCHW; t5video takes NHWC: move the channel axis last)"
    raise ValueError(
        f"pixel_values must be NHWC [batch, H, W, {cfg.num_channels}] or video "
        f"[batch, frames, H, W, {cfg.num_channels}], got shape {shape}{hint}")
  ph, pw = _pair(cfg.patch_size, "patch_size")
  if shape[-3] < ph or shape[-2] < pw:
    raise ValueError(f"pixel_values of {shape[-3]}x{shape[-2]} is smaller than one {ph}x{pw} patch")


def _vision_forward(tower: CLIPVisionTransformer, projection: Optional[nn.Module], pixel_values: Array,
                    output_hidden_states: bool, deterministic: bool) -> CLIPVisionOutput:
  """Runs the tower on images or video (frames folded into the batch)."""
  _check_pixels(pixel_values, tower.config)
  x, lead = _fold(pixel_values, 3)
  last, pooled, hidden_states = tower(x, output_hidden_states, deterministic)
  embeds = projection(pooled) if projection is not None else None
  if len(lead) == 2:
    last = nn.with_logical_constraint(
        _unfold(last, lead), ("act_batch", "act_frames", "act_len", "act_embed"))
    if hidden_states is not None:
      hidden_states = tuple(_unfold(h, lead) for h in hidden_states)
    pooled, embeds = _unfold(pooled, lead), _unfold(embeds, lead)
  return CLIPVisionOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states,
                          image_embeds=embeds)


def _projection(cfg: Any, features: int) -> Dense:
  """A bias-free ``[embed, features]`` projection (named by the ``setup`` attribute)."""
  return Dense(features, use_bias=False, kernel_axes=("embed", None), dtype=jnp.dtype(cfg.dtype),
               param_dtype=jnp.dtype(cfg.param_dtype), lora=cfg.lora,
               kernel_init=nn.initializers.normal(cfg.hidden_size ** -0.5 * cfg.initializer_factor))


class CLIPVisionModel(nn.Module):
  """The CLIP vision tower (HF ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection``).

  Params: ``vision_model/...`` and, with a projection, ``visual_projection/kernel``.

  Attributes:
    config: the CLIPVisionConfig.
    with_projection: add ``visual_projection`` (``config.projection_dim`` wide)
      and return ``image_embeds``.
  """
  config: CLIPVisionConfig
  with_projection: bool = False

  def setup(self):
    self.vision_model = CLIPVisionTransformer(self.config)
    if self.with_projection:
      self.visual_projection = _projection(self.config, self.config.projection_dim)

  def __call__(self, pixel_values: Array, output_hidden_states: bool = False,
               deterministic: bool = True) -> CLIPVisionOutput:
    """Encodes NHWC images ``[B, H, W, C]`` or video ``[B, T, H, W, C]`` (see module docstring)."""
    projection = self.visual_projection if self.with_projection else None
    return _vision_forward(self.vision_model, projection, pixel_values, output_hidden_states, deterministic)


# -----------------------------------------------------------------------------
# Text tower
# -----------------------------------------------------------------------------

class CLIPTextEmbeddings(nn.Module):
  """``token_embedding(ids) + position_embedding(arange(len))``.

  Attributes:
    config: the CLIPTextConfig.
  """
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, input_ids: Array) -> Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(0.02 * cfg.initializer_factor)
    tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                      embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
                      name="token_embedding")(input_ids)
    positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                         embedding_init=nn.with_logical_partitioning(init, (None, "embed")),
                         name="position_embedding")(jnp.arange(input_ids.shape[-1]))
    return nn.with_logical_constraint(tokens + positions[None], ("act_batch", "act_len", "act_embed"))


def eos_positions(input_ids: Array, eos_token_id: int) -> Array:
  """Index of the pooled token per row, as HF's CLIPTextModel picks it.

  ``eos_token_id == 2`` (configs written before HF PR #24773, e.g. the openai
  checkpoints): the position of the largest id, since OpenAI's end-of-text id
  is the largest in its vocabulary. Otherwise: the first position equal to
  ``eos_token_id`` (0 when a row has none, as torch's argmax of zeros gives).
  """
  if eos_token_id == 2:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextTransformer(nn.Module):
  """Embeddings, causal encoder, ``final_layer_norm``, end-of-text pooling.

  Attributes:
    config: the CLIPTextConfig.
  """
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None,
               output_hidden_states: bool = False, deterministic: bool = True):
    """``input_ids [batch, len]`` -> (last_hidden_state, pooler_output, hidden_states)."""
    cfg = self.config
    length = input_ids.shape[-1]
    x = CLIPTextEmbeddings(cfg, name="embeddings")(input_ids)
    mask = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]  # [1, 1, q_len, k_len]
    if attention_mask is not None:
      # [batch, k_len] -> [batch, 1, 1, k_len]; padded keys are never attended.
      mask = jnp.logical_and(mask, attention_mask.astype(jnp.bool_)[:, None, None, :])
    x, hidden_states = CLIPEncoder(cfg, name="encoder")(x, mask, deterministic, output_hidden_states)
    x = _layer_norm(cfg, "final_layer_norm")(x)
    index = eos_positions(input_ids, cfg.eos_token_id)
    # [batch, len, embed] at [batch] -> [batch, embed]
    pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    return x, pooled, hidden_states


def _check_ids(input_ids: Any, attention_mask: Any, cfg: CLIPTextConfig) -> None:
  shape = tuple(getattr(input_ids, "shape", ()))
  if len(shape) < 2:
    raise ValueError(f"input_ids must be [batch, len] (or [..., len]), got shape {shape}")
  if shape[-1] > cfg.max_position_embeddings:
    raise ValueError(
        f"input_ids has length {shape[-1]} > max_position_embeddings ({cfg.max_position_embeddings})")
  if not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
  if attention_mask is not None and tuple(attention_mask.shape) != shape:
    raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {shape}")


def _text_forward(tower: CLIPTextTransformer, projection: Optional[nn.Module], input_ids: Array,
                  attention_mask: Optional[Array], output_hidden_states: bool,
                  deterministic: bool) -> CLIPTextOutput:
  """Runs the tower on ``[..., len]`` ids (leading axes folded into the batch)."""
  _check_ids(input_ids, attention_mask, tower.config)
  ids, lead = _fold(input_ids, 1)
  mask = _fold(attention_mask, 1)[0] if attention_mask is not None else None
  last, pooled, hidden_states = tower(ids, mask, output_hidden_states, deterministic)
  embeds = projection(pooled) if projection is not None else None
  if len(lead) > 1:
    last, pooled, embeds = _unfold(last, lead), _unfold(pooled, lead), _unfold(embeds, lead)
    if hidden_states is not None:
      hidden_states = tuple(_unfold(h, lead) for h in hidden_states)
  return CLIPTextOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states,
                        text_embeds=embeds)


class CLIPTextModel(nn.Module):
  """The CLIP text tower (HF ``CLIPTextModel`` / ``CLIPTextModelWithProjection``).

  Params: ``text_model/...`` and, with a projection, ``text_projection/kernel``.

  Attributes:
    config: the CLIPTextConfig.
    with_projection: add ``text_projection`` and return ``text_embeds``.
  """
  config: CLIPTextConfig
  with_projection: bool = False

  def setup(self):
    self.text_model = CLIPTextTransformer(self.config)
    if self.with_projection:
      self.text_projection = _projection(self.config, self.config.projection_dim)

  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None,
               output_hidden_states: bool = False, deterministic: bool = True) -> CLIPTextOutput:
    """Encodes ``input_ids [batch, len]`` (1 = attend in ``attention_mask``), causally."""
    projection = self.text_projection if self.with_projection else None
    return _text_forward(self.text_model, projection, input_ids, attention_mask, output_hidden_states,
                         deterministic)


# -----------------------------------------------------------------------------
# Both towers
# -----------------------------------------------------------------------------

def _l2_normalize(x: Array) -> Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


class CLIPModel(nn.Module):
  """CLIP with both towers, their projections and ``logit_scale`` (HF ``CLIPModel``).

  Attributes:
    vision_config: the vision tower's config.
    text_config: the text tower's config.
    projection_dim: width of both projections (HF's top-level ``projection_dim``).
    logit_scale_init_value: initial ``logit_scale`` (log of the temperature's inverse).
  """
  vision_config: CLIPVisionConfig
  text_config: CLIPTextConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592

  def setup(self):
    self.vision_model = CLIPVisionTransformer(self.vision_config)
    self.text_model = CLIPTextTransformer(self.text_config)
    self.visual_projection = _projection(self.vision_config, self.projection_dim)
    self.text_projection = _projection(self.text_config, self.projection_dim)
    self.logit_scale = self.param(
        "logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(self.logit_scale_init_value), ()),
        (), jnp.dtype(self.vision_config.param_dtype))

  def vision_outputs(self, pixel_values: Array, output_hidden_states: bool = False,
                     deterministic: bool = True) -> CLIPVisionOutput:
    """The vision tower's full outputs (``image_embeds`` projected, not normalised)."""
    return _vision_forward(self.vision_model, self.visual_projection, pixel_values, output_hidden_states,
                           deterministic)

  def text_outputs(self, input_ids: Array, attention_mask: Optional[Array] = None,
                   output_hidden_states: bool = False, deterministic: bool = True) -> CLIPTextOutput:
    """The text tower's full outputs (``text_embeds`` projected, not normalised)."""
    return _text_forward(self.text_model, self.text_projection, input_ids, attention_mask,
                         output_hidden_states, deterministic)

  def get_image_features(self, pixel_values: Array, deterministic: bool = True) -> Array:
    """Projected (not normalised) image embeddings ``[B, (T,) projection_dim]``."""
    return self.vision_outputs(pixel_values, deterministic=deterministic).image_embeds

  def get_text_features(self, input_ids: Array, attention_mask: Optional[Array] = None,
                        deterministic: bool = True) -> Array:
    """Projected (not normalised) text embeddings ``[B, projection_dim]``."""
    return self.text_outputs(input_ids, attention_mask, deterministic=deterministic).text_embeds

  def __call__(self, input_ids: Array, pixel_values: Array, attention_mask: Optional[Array] = None,
               output_hidden_states: bool = False, deterministic: bool = True) -> CLIPOutput:
    """Scaled cosine similarities of every image (or frame) with every text."""
    vision = self.vision_outputs(pixel_values, output_hidden_states, deterministic)
    text = self.text_outputs(input_ids, attention_mask, output_hidden_states, deterministic)
    image_embeds = _l2_normalize(vision.image_embeds)
    text_embeds = _l2_normalize(text.text_embeds)
    if text_embeds.ndim != 2:
      raise ValueError(f"CLIPModel takes input_ids [num_texts, len], got shape {tuple(input_ids.shape)}")
    scale = jnp.exp(self.logit_scale.astype(jnp.float32))
    # [*images, P] x [N, P] -> [*images, N]
    logits_per_image = jnp.einsum("...p,np->...n", image_embeds, text_embeds) * scale
    # [*images, N] -> [N, *images]
    logits_per_text = jnp.moveaxis(logits_per_image, -1, 0)
    return CLIPOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                      text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text,
                      vision_model_output=vision)
