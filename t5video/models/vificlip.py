"""ViFi-CLIP: CLIP's two towers fine-tuned on video, with optional prompts.

ViFi-CLIP (Rasheed et al., arXiv 2212.03640) encodes every frame with CLIP's
image tower, averages the projected frame embeddings over time, L2-normalises
the average and compares it with the L2-normalised text embedding at CLIP's
learned temperature. This module implements that model and two variations:

* ``temporal='mean'`` (the paper): frames are encoded independently and their
  projected embeddings are averaged (over the valid frames of ``frame_mask``).
* ``temporal='single'``: only the middle frame is encoded (the image-CLIP
  baseline of the ablation).
* ``temporal='spacetime'``: the patch tokens of all frames form one sequence
  (joint space-time attention, one class token) and a learned temporal position
  embedding ``[num_frames, embed]`` is added to every frame's patch tokens on
  top of CLIP's spatial position embedding. It starts at zero, so a pretrained
  CLIP starts from "attend over all frames, order unknown".
* ``temporal='ordered'``: the mean of ``'mean'`` plus an ordered read-out of
  the frames' patch tokens: each frame's patch grid (average-pooled to at most
  ``order_grid`` x ``order_grid``) becomes one position-keeping token
  (:class:`t5video.models.temporal.TemporalModule`, ``frame_tokens='flatten'``),
  a temporal transformer with temporal position embeddings runs over the
  frames, and the frame tokens *concatenated in order* are projected into the
  joint space by ``order_projection``, which starts at zero: a pretrained CLIP
  starts exactly as ``'mean'``. This is the design the pixel probes chose
  (``docs/results.md``, "What the pixels carry": only position-keeping frame
  tokens with an order-keeping read-out learned left/right and up/down).

**Bridge and prompt** (the paper's low-data stage): learned context tokens are
inserted into both towers. Vision: ``vision_tokens`` tokens right after the
class token; text: ``text_tokens`` tokens right after the start-of-text token
(the text input gets that many fewer positions). With ``depth > 1`` the prompt
tokens' outputs of layers ``0 .. depth-2`` are replaced by fresh learned tokens
before layers ``1 .. depth-1`` ("deep" prompting, as in the paper's
independent vision-language prompting); from layer ``depth`` on they flow
through like any other token. The recipe freezes everything else with the
optimizer's ``trainable`` regex (``(^|/)prompts$``).

Parameter names equal Hugging Face ``CLIPModel``'s (``vision_model/...``,
``text_model/...``, ``visual_projection/kernel``, ``text_projection/kernel``,
``logit_scale``), so the params of :func:`t5video.models.hf.load_hf` merge in
by path (:func:`merge_clip_params`). The only new names are
``vision_model/temporal_embedding`` (space-time), ``ordered/temporal/...`` and
``ordered/order_projection`` (ordered) and
``vision_model/prompts`` / ``text_model/prompts`` (bridge and prompt).

Example::

  cfg = ViFiCLIPConfig.from_variant('tiny', temporal='mean')
  model = ViFiCLIP(cfg)
  params = model.init(rng, pixels, ids, mask)['params']
  out = model.apply({'params': params}, pixels, ids, mask)
  out.logits_per_video  # [videos, texts]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models import clip as clip_lib
from t5video.models.layers import Dense

Array = jax.Array

TEMPORAL_MODES = ("mean", "single", "spacetime", "ordered")
# Modes whose parameters fix the number of frames (a temporal embedding / an ordered read-out).
FIXED_FRAME_MODES = ("spacetime", "ordered")
# CLIP clamps the learned temperature so that exp(logit_scale) <= 100.
MAX_LOGIT_SCALE = float(np.log(100.0))


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """Learned prompt tokens of the bridge-and-prompt stage.

  Attributes:
    vision_tokens: context tokens in the vision tower (0: none).
    text_tokens: context tokens in the text tower (0: none).
    vision_depth: layers whose input gets fresh vision prompts (>= 1 when
      ``vision_tokens``; 1 is shallow prompting).
    text_depth: the same for the text tower.
    init_std: std of the normal initialiser of the prompt tokens.
  """
  vision_tokens: int = 0
  text_tokens: int = 0
  vision_depth: int = 1
  text_depth: int = 1
  init_std: float = 0.02

  @property
  def enabled(self) -> bool:
    return self.vision_tokens > 0 or self.text_tokens > 0


@dataclasses.dataclass(frozen=True)
class ViFiCLIPConfig:
  """Hyper-parameters of :class:`ViFiCLIP`.

  Attributes:
    vision: the CLIP vision tower's config.
    text: the CLIP text tower's config.
    projection_dim: width of both projections (the joint embedding space).
    logit_scale_init_value: initial ``logit_scale`` (CLIP: log(1 / 0.07)).
    temporal: 'mean' | 'single' | 'spacetime' | 'ordered' (see the module docstring).
    num_frames: frames per clip; sizes the temporal embedding of 'spacetime' and
      the ordered read-out of 'ordered'.
    prompts: the bridge-and-prompt tokens (none by default).
    order_grid: 'ordered': the patch grid is average-pooled to at most this many
      cells a side before each frame becomes one token.
    order_layers: 'ordered': temporal transformer layers.
  """
  vision: clip_lib.CLIPVisionConfig
  text: clip_lib.CLIPTextConfig
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592
  temporal: str = "mean"
  num_frames: int = 8
  prompts: PromptSpec = PromptSpec()
  order_grid: int = 4
  order_layers: int = 1

  def __post_init__(self):
    if self.temporal not in TEMPORAL_MODES:
      raise ValueError(f"ViFiCLIPConfig.temporal={self.temporal!r}; expected one of {TEMPORAL_MODES}")
    if self.num_frames < 1:
      raise ValueError(f"ViFiCLIPConfig.num_frames={self.num_frames} must be >= 1")
    p = self.prompts
    for kind, tokens, depth, layers in (
        ("vision", p.vision_tokens, p.vision_depth, self.vision.num_hidden_layers),
        ("text", p.text_tokens, p.text_depth, self.text.num_hidden_layers)):
      if tokens < 0:
        raise ValueError(f"prompts.{kind}_tokens={tokens} must be >= 0")
      if tokens and not 1 <= depth <= layers:
        raise ValueError(f"prompts.{kind}_depth={depth} must be in [1, {layers}] "
                         f"(the {kind} tower has {layers} layers)")
    if p.text_tokens >= self.text.max_position_embeddings - 1:
      raise ValueError(f"prompts.text_tokens={p.text_tokens} leaves no room for text in "
                       f"max_position_embeddings={self.text.max_position_embeddings}")

  @property
  def max_text_len(self) -> int:
    """The longest ``input_ids`` the text tower takes (positions minus prompts)."""
    return self.text.max_position_embeddings - self.prompts.text_tokens

  @classmethod
  def from_variant(cls, name: str, **kwargs) -> "ViFiCLIPConfig":
    """A CLIP size from ``clip.VARIANTS`` (``'B/16'``, ``'tiny'`` ...) plus ViFi-CLIP fields.

    ``vision=`` / ``text=`` dicts in ``kwargs`` override tower fields.
    """
    if name not in clip_lib.VARIANTS:
      raise ValueError(f"unknown CLIP variant {name!r}; known: {sorted(clip_lib.VARIANTS)}")
    v = clip_lib.VARIANTS[name]
    vision = clip_lib.CLIPVisionConfig(**{**v["vision"], **kwargs.pop("vision", {})})
    text = clip_lib.CLIPTextConfig(**{**v["text"], **kwargs.pop("text", {})})
    kwargs.setdefault("projection_dim", v["projection_dim"])
    return cls(vision=vision, text=text, **kwargs)


@flax.struct.dataclass
class ViFiCLIPOutput:
  """What :class:`ViFiCLIP` returns.

  Attributes:
    logits_per_video: ``scale * video_embeds @ text_embeds.T`` ``[videos, texts]``.
    video_embeds: L2-normalised video embeddings ``[videos, projection_dim]``.
    text_embeds: L2-normalised text embeddings ``[texts, projection_dim]``.
    frame_embeds: projected (not normalised) per-frame embeddings
      ``[videos, frames, projection_dim]`` ('mean' and 'single'), else None.
    logit_scale: ``exp(logit_scale)``, clamped at 100.
  """
  logits_per_video: Array
  video_embeds: Array
  text_embeds: Array
  frame_embeds: Optional[Array]
  logit_scale: Array


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """``x / max(||x||, eps)`` on the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class PromptedEncoder(nn.Module):
  """CLIP's encoder (``layers_0`` ...) with prompt tokens inserted at ``insert_at``.

  Attributes:
    config: a CLIPVisionConfig or CLIPTextConfig.
    num_prompts: prompt tokens (0: exactly CLIP's encoder).
    depth: layers whose input gets fresh prompts.
    insert_at: sequence index of the first prompt token.
    init_std: prompt initialiser std.
  """
  config: Any
  num_prompts: int = 0
  depth: int = 1
  insert_at: int = 1
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True,
               prompts: Optional[Array] = None) -> Array:
    """``x [batch, len, embed]`` -> ``[batch, len + num_prompts, embed]``.

    ``prompts [depth, num_prompts, embed]`` come from the parent (so their
    param lives at ``<tower>/prompts``); ``mask`` must already cover the
    inserted positions.
    """
    cfg = self.config
    layer_cls = (nn.remat(clip_lib.CLIPEncoderLayer, static_argnums=(3,)) if cfg.remat
                 else clip_lib.CLIPEncoderLayer)
    n, at = self.num_prompts, self.insert_at
    for i in range(cfg.num_hidden_layers):
      if n and i < self.depth:
        batch = x.shape[0]
        # [num_prompts, embed] -> [batch, num_prompts, embed]
        fresh = jnp.broadcast_to(prompts[i].astype(x.dtype)[None], (batch, n, x.shape[-1]))
        if i == 0:
          x = jnp.concatenate([x[:, :at], fresh, x[:, at:]], axis=1)
        else:
          x = jnp.concatenate([x[:, :at], fresh, x[:, at + n:]], axis=1)
      x = layer_cls(cfg, name=f"layers_{i}")(x, mask, deterministic)
    return x


class VideoVisionTransformer(nn.Module):
  """CLIP's vision transformer applied per frame or jointly over space-time.

  Params (HF names): ``embeddings/...``, ``pre_layrnorm``, ``encoder/layers_i``,
  ``post_layernorm``; plus ``temporal_embedding`` ('spacetime') and
  ``prompts`` (vision prompts).

  Attributes:
    config: the CLIPVisionConfig.
    temporal: 'mean' | 'single' | 'spacetime'.
    num_frames: frames per clip (the temporal embedding's length).
    prompts: the PromptSpec.
  """
  config: clip_lib.CLIPVisionConfig
  temporal: str = "mean"
  num_frames: int = 8
  prompts: PromptSpec = PromptSpec()

  @nn.compact
  def __call__(self, pixel_values: Array, deterministic: bool = True, with_patches: bool = False):
    """``[batch, frames, H, W, 3]`` -> pooled class tokens.

    Returns ``[batch, frames, embed]`` per frame ('mean'; 'single' gives one
    frame) or ``[batch, 1, embed]`` ('spacetime'); ``with_patches`` (per-frame
    modes): ``(pooled, patch tokens [batch, frames, gh, gw, embed])``, the
    patch tokens through ``post_layernorm`` as the class token is.
    """
    cfg = self.config
    batch, frames = pixel_values.shape[:2]
    # [batch, frames, H, W, C] -> [batch * frames, H, W, C]
    flat = pixel_values.reshape((batch * frames,) + pixel_values.shape[2:])
    x = clip_lib.CLIPVisionEmbeddings(cfg, name="embeddings")(flat)  # [batch * frames, 1 + N, embed]
    if self.temporal == "spacetime":
      if frames != self.num_frames:
        raise ValueError(f"temporal='spacetime' was built for num_frames={self.num_frames}, "
                         f"got {frames} frames")
      length, dim = x.shape[1], x.shape[2]
      temporal = self.param(
          "temporal_embedding", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "embed")),
          (self.num_frames, dim), jnp.dtype(cfg.param_dtype))
      # [batch * frames, 1 + N, embed] -> [batch, frames, 1 + N, embed]
      x = x.reshape(batch, frames, length, dim)
      patches = x[:, :, 1:] + temporal.astype(x.dtype)[None, :, None, :]
      # [batch, frames, N, embed] -> [batch, frames * N, embed]
      patches = patches.reshape(batch, frames * (length - 1), dim)
      # The class token (and its position) is the same in every frame: keep one.
      x = jnp.concatenate([x[:, 0, :1], patches], axis=1)
      out_frames = 1
    else:
      out_frames = frames
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    x = clip_lib._layer_norm(cfg, "pre_layrnorm")(x)  # pylint: disable=protected-access
    p = self.prompts
    prompt_table = None
    if p.vision_tokens:
      prompt_table = self.param(
          "prompts", nn.with_logical_partitioning(nn.initializers.normal(p.init_std), (None, None, "embed")),
          (p.vision_depth, p.vision_tokens, cfg.hidden_size), jnp.dtype(cfg.param_dtype))
    x = PromptedEncoder(cfg, p.vision_tokens, p.vision_depth, 1, name="encoder")(
        x, None, deterministic, prompt_table)
    post = clip_lib._layer_norm(cfg, "post_layernorm")  # pylint: disable=protected-access
    pooled = post(x[:, 0])
    # [batch * out_frames, embed] -> [batch, out_frames, embed]
    pooled = pooled.reshape(batch, out_frames, pooled.shape[-1])
    if not with_patches:
      return pooled
    ph, pw = clip_lib._pair(cfg.patch_size, "patch_size")  # pylint: disable=protected-access
    gh, gw = pixel_values.shape[2] // ph, pixel_values.shape[3] // pw
    # vision prompts sit right after the class token: the patches are the last gh * gw tokens
    patches = post(x[:, x.shape[1] - gh * gw:])
    # [batch * out_frames, gh * gw, embed] -> [batch, out_frames, gh, gw, embed]
    return pooled, patches.reshape(batch, out_frames, gh, gw, patches.shape[-1])


class PromptedTextTransformer(nn.Module):
  """CLIP's text transformer with optional prompt tokens after start-of-text.

  Params (HF names): ``embeddings/token_embedding``,
  ``embeddings/position_embedding``, ``encoder/layers_i``, ``final_layer_norm``;
  plus ``prompts`` (text prompts).

  Attributes:
    config: the CLIPTextConfig.
    prompts: the PromptSpec.
  """
  config: clip_lib.CLIPTextConfig
  prompts: PromptSpec = PromptSpec()

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """``input_ids [batch, len]`` -> pooled ``[batch, embed]`` (at the end-of-text token)."""
    cfg = self.config
    p = self.prompts
    n = p.text_tokens
    batch, length = input_ids.shape
    if length + n > cfg.max_position_embeddings:
      raise ValueError(f"input_ids length {length} + {n} prompt tokens > max_position_embeddings "
                       f"({cfg.max_position_embeddings})")
    param_dtype = jnp.dtype(cfg.param_dtype)
    embeddings = _TextEmbeddings(cfg, name="embeddings")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    prompt_table = None
    if n:
      prompt_table = self.param(
          "prompts", nn.with_logical_partitioning(nn.initializers.normal(p.init_std), (None, None, "embed")),
          (p.text_depth, n, cfg.hidden_size), param_dtype)
      pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
      # The pooled position is found in ids that hold placeholders where the prompts go.
      ids_full = jnp.concatenate(
          [input_ids[:, :1], jnp.full((batch, n), pad, input_ids.dtype), input_ids[:, 1:]], axis=1)
      mask_full = jnp.concatenate(
          [attention_mask[:, :1], jnp.ones((batch, n), attention_mask.dtype), attention_mask[:, 1:]], axis=1)
    else:
      ids_full, mask_full = input_ids, attention_mask
    total = length + n
    x = embeddings(input_ids, n)  # [batch, len + n, embed] (zeros where prompts go)
    causal = jnp.tril(jnp.ones((total, total), jnp.bool_))[None, None]  # [1, 1, q_len, k_len]
    # [batch, k_len] -> [batch, 1, 1, k_len]
    mask = jnp.logical_and(causal, mask_full.astype(jnp.bool_)[:, None, None, :])
    if n:
      # Layer 0's prompts get their position embeddings, like the tokens they stand for.
      prompt_table = prompt_table.at[0].add(embeddings.positions(n))
      x = jnp.concatenate([x[:, :1], x[:, 1 + n:]], axis=1)  # the encoder inserts them
    x = PromptedEncoder(cfg, n, p.text_depth, 1, name="encoder")(x, mask, deterministic, prompt_table)
    x = clip_lib._layer_norm(cfg, "final_layer_norm")(x)  # pylint: disable=protected-access
    index = clip_lib.eos_positions(ids_full, cfg.eos_token_id)
    # [batch, len, embed] at [batch] -> [batch, embed]
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


class _TextEmbeddings(nn.Module):
  """``token_embedding(ids) + position_embedding``, leaving room for prompts.

  Same param names as HF's ``CLIPTextEmbeddings``.

  Attributes:
    config: the CLIPTextConfig.
  """
  config: clip_lib.CLIPTextConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(0.02 * cfg.initializer_factor)
    self.token_embedding = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")))
    self.position_embedding = nn.Embed(
        cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(init, (None, "embed")))

  def __call__(self, input_ids: Array, num_prompts: int) -> Array:
    """``[batch, len]`` -> ``[batch, len + num_prompts, embed]`` (zero tokens where prompts go)."""
    batch, length = input_ids.shape
    tokens = self.token_embedding(input_ids)  # [batch, len, embed]
    if num_prompts:
      zeros = jnp.zeros((batch, num_prompts, tokens.shape[-1]), tokens.dtype)
      tokens = jnp.concatenate([tokens[:, :1], zeros, tokens[:, 1:]], axis=1)
    positions = self.position_embedding(jnp.arange(length + num_prompts))  # [len + n, embed]
    return nn.with_logical_constraint(tokens + positions[None], ("act_batch", "act_len", "act_embed"))

  def positions(self, num_prompts: int) -> Array:
    """Position embeddings of the prompt slots 1 .. num_prompts, ``[num_prompts, embed]``."""
    return self.position_embedding(jnp.arange(1, 1 + num_prompts))


def masked_frame_mean(embeds: Array, frame_mask: Optional[Array] = None) -> Array:
  """The mean over real frames in float32: ``[B, T, P]`` (mask ``[B, T]``, True = real) -> ``[B, P]``.

  ViFi-CLIP's video embedding before the ordered read-out; CaptionT5's video
  token computes it with the same function.
  """
  embeds = embeds.astype(jnp.float32)
  if frame_mask is None:
    return jnp.mean(embeds, axis=1)
  weights = frame_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  return jnp.sum(embeds * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def ordered_readout_heads(width: int) -> int:
  """Attention heads of the ordered read-out's temporal transformer over ``width``-wide frame tokens."""
  return max(1, min(8, width // 32))


class OrderedReadout(nn.Module):
  """'ordered': frames' patch grids ``[b, t, gh, gw, e]`` -> ``[b, projection_dim]``.

  The grid is average-pooled to at most ``grid`` x ``grid``; each frame becomes
  one token that keeps where things are, a temporal transformer (with temporal
  position embeddings) runs over the frames, and the frame tokens concatenated
  in order go through ``order_projection`` (zero at init).
  """
  grid: int
  num_frames: int
  num_layers: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches: Array, frame_mask: Optional[Array], deterministic: bool = True) -> Array:
    from t5video.models import temporal as temporal_lib  # pylint: disable=g-import-not-at-top
    b, t, _, _, e = patches.shape
    if t != self.num_frames:
      raise ValueError(f"temporal='ordered' was built for num_frames={self.num_frames}, got {t} frames")
    x = temporal_lib.pool_patch_grid(patches, self.grid).astype(self.dtype)  # [b, t, oh * ow, e]
    mask = jnp.ones((b, t), jnp.int32) if frame_mask is None else frame_mask.astype(jnp.int32)
    cfg = temporal_lib.TemporalConfig(kind="transformer", frame_tokens="flatten", num_layers=self.num_layers,
                                      num_heads=ordered_readout_heads(e), max_frames=self.num_frames,
                                      dtype=self.dtype)
    tokens, _ = temporal_lib.TemporalModule(cfg, name="temporal")(x, mask, deterministic)  # [b, t, e]
    tokens = tokens * mask[:, :, None].astype(tokens.dtype)
    # the frames in order, concatenated: [b, t, e] -> [b, t * e]
    flat = tokens.reshape(b, t * e)
    return Dense(self.out_dim, use_bias=False, kernel_axes=(None, None), dtype=self.dtype,
                 kernel_init=nn.initializers.zeros_init(), name="order_projection")(flat, deterministic)


class ViFiCLIP(nn.Module):
  """The video-text dual encoder.

  Attributes:
    config: the ViFiCLIPConfig.
  """
  config: ViFiCLIPConfig

  def setup(self):
    cfg = self.config
    self.vision_model = VideoVisionTransformer(cfg.vision, cfg.temporal, cfg.num_frames, cfg.prompts)
    self.text_model = PromptedTextTransformer(cfg.text, cfg.prompts)
    self.visual_projection = self._projection(cfg.vision)
    self.text_projection = self._projection(cfg.text)
    if cfg.temporal == "ordered":
      self.ordered = OrderedReadout(cfg.order_grid, cfg.num_frames, cfg.order_layers, cfg.projection_dim,
                                    jnp.dtype(cfg.vision.dtype))
    self.logit_scale = self.param(
        "logit_scale", nn.with_logical_partitioning(nn.initializers.constant(cfg.logit_scale_init_value), ()),
        (), jnp.dtype(cfg.vision.param_dtype))

  def _projection(self, tower_cfg: Any) -> Dense:
    return Dense(self.config.projection_dim, use_bias=False, kernel_axes=("embed", None),
                 dtype=jnp.dtype(tower_cfg.dtype), param_dtype=jnp.dtype(tower_cfg.param_dtype),
                 lora=tower_cfg.lora,
                 kernel_init=nn.initializers.normal(tower_cfg.hidden_size ** -0.5 * tower_cfg.initializer_factor))

  def encode_video(self, pixel_values: Array, frame_mask: Optional[Array] = None,
                   deterministic: bool = True) -> tuple[Array, Optional[Array]]:
    """CLIP-normalised pixels ``[B, T, H, W, 3]`` -> (video embedding ``[B, P]``, frame embeddings).

    The video embedding is projected but not normalised. ``frame_mask [B, T]``
    (True = real frame) restricts the temporal mean to real frames. Frame
    embeddings ``[B, T', P]`` are returned for 'mean' / 'single', None for
    'spacetime'.
    """
    cfg = self.config
    if pixel_values.ndim != 5 or pixel_values.shape[-1] != cfg.vision.num_channels:
      raise ValueError(f"pixel_values must be [batch, frames, H, W, {cfg.vision.num_channels}] (NHWC), "
                       f"got shape {tuple(pixel_values.shape)}")
    frames = pixel_values.shape[1]
    if cfg.temporal == "single":
      middle = frames // 2
      pixel_values = pixel_values[:, middle:middle + 1]
      frame_mask = None
    patches = None
    if cfg.temporal == "ordered":
      pooled, patches = self.vision_model(pixel_values, deterministic, with_patches=True)
    else:
      pooled = self.vision_model(pixel_values, deterministic)  # [B, T', embed]
    embeds = self.visual_projection(pooled, deterministic=deterministic)  # [B, T', P]
    embeds = nn.with_logical_constraint(embeds, ("act_batch", "act_frames", "act_embed"))
    if cfg.temporal == "spacetime":
      return embeds[:, 0], None
    video = masked_frame_mean(embeds, frame_mask)
    if patches is not None:   # 'ordered': the mean plus the frames' ordered read-out
      video = video + self.ordered(patches, frame_mask, deterministic).astype(jnp.float32)
    return video, embeds

  def encode_text(self, input_ids: Array, attention_mask: Optional[Array] = None,
                  deterministic: bool = True) -> Array:
    """``input_ids [N, L]`` -> projected (not normalised) text embeddings ``[N, P]``."""
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [num_texts, len], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                       f"{tuple(input_ids.shape)}")
    pooled = self.text_model(input_ids, attention_mask, deterministic)
    return self.text_projection(pooled, deterministic=deterministic)

  def scale(self) -> Array:
    """``exp(logit_scale)``, clamped at 100 as CLIP does."""
    return jnp.exp(jnp.minimum(self.logit_scale.astype(jnp.float32), MAX_LOGIT_SCALE))

  def __call__(self, pixel_values: Array, input_ids: Array, attention_mask: Optional[Array] = None,
               frame_mask: Optional[Array] = None, deterministic: bool = True) -> ViFiCLIPOutput:
    """Scaled cosine similarities of every video with every text."""
    video, frames = self.encode_video(pixel_values, frame_mask, deterministic)
    text = self.encode_text(input_ids, attention_mask, deterministic)
    video_embeds, text_embeds = l2_normalize(video), l2_normalize(text)
    scale = self.scale()
    # [videos, P] x [texts, P] -> [videos, texts]
    logits = jnp.einsum("vp,tp->vt", video_embeds, text_embeds) * scale
    return ViFiCLIPOutput(logits_per_video=logits, video_embeds=video_embeds, text_embeds=text_embeds,
                          frame_embeds=frames, logit_scale=scale)


# -----------------------------------------------------------------------------
# Losses
# -----------------------------------------------------------------------------

def soft_cross_entropy(logits: Array, targets: Array, weights: Optional[Array] = None) -> Array:
  """Mean over rows of ``-sum(targets * log_softmax(logits))``; ``targets`` sum to 1 per row.

  ``weights`` ``[B]`` (e.g. 0 for padding rows) make it a weighted mean.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  rows = -jnp.sum(targets * logp, axis=-1)
  if weights is None:
    return jnp.mean(rows)
  return jnp.sum(rows * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def smooth_labels(labels: Array, num_classes: int, smoothing: float) -> Array:
  """One-hot ``[B, C]`` targets with ``smoothing`` spread uniformly over all classes."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - smoothing) + smoothing / num_classes


def class_prompt_loss(video_embeds: Array, class_embeds: Array, scale: Array, labels: Array, *,
                      smoothing: float = 0.0, targets: Optional[Array] = None,
                      weights: Optional[Array] = None) -> tuple[Array, Array]:
  """Cross-entropy of videos against class-prompt text embeddings.

  Args:
    video_embeds: L2-normalised ``[B, P]``.
    class_embeds: L2-normalised ``[C, P]`` (one per class prompt).
    scale: the temperature ``exp(logit_scale)``.
    labels: int ``[B]`` class indices (used when ``targets`` is None).
    smoothing: label smoothing.
    targets: soft targets ``[B, C]`` (e.g. after mixup), overriding ``labels``.
    weights: ``[B]`` row weights (0: a padding or undecodable clip); None = all 1.

  Returns:
    ``(loss, logits [B, C])``.
  """
  # [B, P] x [C, P] -> [B, C]
  logits = jnp.einsum("bp,cp->bc", video_embeds, class_embeds) * scale
  if targets is None:
    targets = smooth_labels(labels, class_embeds.shape[0], smoothing)
  return soft_cross_entropy(logits, targets, weights), logits


def info_nce(video_embeds: Array, text_embeds: Array, scale: Array,
             weights: Optional[Array] = None) -> tuple[Array, Array]:
  """Symmetric InfoNCE on matched pairs (row i of both is a pair).

  ``weights`` ``[B]``: rows and columns of weight 0 (padding, undecodable clips)
  take no part, neither as pairs nor as negatives.

  Returns ``(loss, logits [B, B])`` with ``loss = (CE(video->text) + CE(text->video)) / 2``.
  """
  # [B, P] x [B, P] -> [B, B]
  logits = jnp.einsum("vp,tp->vt", video_embeds, text_embeds) * scale
  if weights is not None:
    pair = weights[:, None] * weights[None, :]
    logits = jnp.where(pair > 0, logits, -1e9)
  eye = jnp.eye(logits.shape[0], dtype=jnp.float32)
  return 0.5 * (soft_cross_entropy(logits, eye, weights) + soft_cross_entropy(logits.T, eye, weights)), logits


def mixup(rng: Array, pixels: Array, targets: Array, alpha: float) -> tuple[Array, Array]:
  """Mixes each example with the batch reversed: ``lam * x + (1 - lam) * x[::-1]``.

  ``lam ~ Beta(alpha, alpha)``, one per batch; the soft targets mix alike.
  """
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = lam * pixels + (1.0 - lam) * pixels[::-1]
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]


# -----------------------------------------------------------------------------
# Pretrained weights
# -----------------------------------------------------------------------------

def merge_clip_params(params: Mapping[str, Any], clip_params: Mapping[str, Any]) -> tuple[dict, list[str]]:
  """Copies every CLIP param whose path and shape match into ViFi-CLIP ``params``.

  Args:
    params: ViFi-CLIP params (unboxed).
    clip_params: params of an HF ``CLIPModel`` as :func:`t5video.models.hf.load_hf` returns.

  Returns:
    ``(merged params, names of ViFi-CLIP params left at their initial value)``.

  Raises:
    ValueError: a shared name with different shapes, or no shared name at all.
  """
  flat_src = flax.traverse_util.flatten_dict(flax.core.unfreeze(clip_params), sep="/")
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  copied, missing = 0, []
  for name, leaf in flat.items():
    if name in flat_src:
      src = flat_src[name]
      if tuple(src.shape) != tuple(leaf.shape):
        raise ValueError(f"pretrained CLIP param {name} has shape {tuple(src.shape)}, the model expects "
                         f"{tuple(leaf.shape)}")
      flat[name] = jnp.asarray(src, dtype=leaf.dtype)
      copied += 1
    else:
      missing.append(name)
  if not copied:
    raise ValueError(f"no pretrained CLIP param matches the model (pretrained e.g. {sorted(flat_src)[:4]}, "
                     f"model e.g. {sorted(flat)[:4]})")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), missing
