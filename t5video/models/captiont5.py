"""CaptionT5: CLIP frames + text "thoughts" → T5 encoder → T5 decoder.

The encoder input is the concatenation (all ``[batch, *, d_model]``)::

  [ prompt-tuning prefix (P) ; visual tokens (V) ; task prompt + thoughts tokens (L) ]

* visual tokens: the CLIP vision tower runs per frame (or cached CLIP
  features are read instead of pixels); its pooled token, all its tokens or its
  patch grid pooled to a few cells (``visual_tokens``) go through a temporal module
  (:mod:`t5video.models.temporal`) pools or mixes frames, and a projection maps
  the CLIP width to ``d_model``.
* the text part is the tokenised task prompt (``caption:``, ``classify:``,
  ``tags:``) followed by the thoughts (concepts, metadata, subtitles, a draft).

The decoder writes the answer (a caption, a class name, or tags). Parameter
names: ``clip/...`` equals a converted HF CLIP vision tower, ``t5/...`` a
converted HF T5, so ``init_from`` is a plain subtree assignment.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from t5video.models import clip as clip_lib
from t5video.models import t5 as t5_lib
from t5video.models import vificlip as vificlip_lib
from t5video.models.layers import Dense, LoraSpec
from t5video.models.temporal import TemporalConfig, TemporalModule, pool_patch_grid


@dataclasses.dataclass(frozen=True)
class CaptionT5Config:
  """Hyper-parameters of CaptionT5.

  Attributes:
    vision: the CLIP vision tower's config; None reads cached features.
    t5: the T5 config.
    temporal: the temporal module's config.
    visual_tokens: 'pooled' (one token per frame: CLIP's pooled output),
      'patches' (every token of the last layer, CLS included) or 'grid' (the
      patch tokens through a LayerNorm, ``grid_norm``, average-pooled to at
      most ``grid_cells`` x ``grid_cells`` cells: the input of ViFi-CLIP's
      ordered read-out, whose ``ordered/temporal`` a temporal module with
      ``frame_tokens='flatten'`` can start from).
    grid_cells: 'grid' and ``video_token='ordered'``: cells a side of the pooled patch grid.
    video_token: '' (none), 'mean' or 'ordered': one more visual token, the
      video embedding of a ViFi-CLIP video encoder (its per-frame projection
      ``video_projection`` averaged over frames, plus for 'ordered' its ordered
      read-out ``ordered`` over the grid tokens), L2-normalised and projected
      to ``d_model``. Started from a ViFi-CLIP run, the token is that run's
      video embedding, the one its zero-shot classification reads.
    projection_dim: width of that video embedding (the ViFi-CLIP run's).
    num_frames: frames per clip ('ordered' video token: its read-out is built for them).
    order_layers: the ordered read-out's temporal transformer layers.
    feature_dim: width of cached features (only when ``vision`` is None).
    prompt_length: learned prefix embeddings for prompt tuning (0: none).
    lora: LoRA applied to every Dense whose path matches its targets (CLIP,
      temporal module, projection and T5 alike).
  """
  vision: Optional[clip_lib.CLIPVisionConfig]
  t5: t5_lib.T5Config
  temporal: TemporalConfig = TemporalConfig()
  visual_tokens: str = "pooled"
  grid_cells: int = 4
  video_token: str = ""
  projection_dim: int = 512
  num_frames: int = 8
  order_layers: int = 1
  feature_dim: Optional[int] = None
  prompt_length: int = 0
  lora: Optional[LoraSpec] = None


@flax.struct.dataclass
class CaptionT5Output:
  logits: jax.Array                    # [batch, target_len, vocab]
  encoder_last_hidden_state: jax.Array  # [batch, enc_len, d_model]
  encoder_attention_mask: jax.Array    # [batch, enc_len]


class CaptionT5(nn.Module):
  """See the module docstring. Call with ``pixel_values`` or ``features``."""
  config: CaptionT5Config

  def setup(self):
    cfg = self.config
    if cfg.vision is not None:
      self.clip = clip_lib.CLIPVisionModel(cfg.vision, with_projection=False)
      width = cfg.vision.hidden_size
    else:
      if not cfg.feature_dim:
        raise ValueError("CaptionT5Config needs `vision` or `feature_dim` (cached features)")
      width = cfg.feature_dim
    if cfg.video_token not in ("", "mean", "ordered"):
      raise ValueError(f"video_token must be '', 'mean' or 'ordered', got {cfg.video_token!r}")
    if cfg.vision is None and (cfg.visual_tokens == "grid" or cfg.video_token):
      raise ValueError(f"visual_tokens={cfg.visual_tokens!r} and video_token={cfg.video_token!r} need the "
                       "vision tower: cached pooled features have no patch grid and no video embedding")
    if cfg.visual_tokens == "grid" or cfg.video_token == "ordered":
      self.grid_norm = nn.LayerNorm(epsilon=cfg.vision.layer_norm_eps, use_fast_variance=False, name="grid_norm")
    if cfg.video_token:
      self.video_projection = Dense(cfg.projection_dim, use_bias=False, kernel_axes=("embed", None),
                                    name="video_projection")
      if cfg.video_token == "ordered":
        self.ordered = vificlip_lib.OrderedReadout(cfg.grid_cells, cfg.num_frames, cfg.order_layers,
                                                   cfg.projection_dim, name="ordered")
      self.video_token_projection = Dense(cfg.t5.d_model, kernel_axes=(None, "embed"), lora=cfg.lora,
                                          name="video_token_projection")
      self.video_token_norm = nn.LayerNorm(name="video_token_norm")
    self.temporal = TemporalModule(dataclasses.replace(cfg.temporal, lora=cfg.lora))
    self.visual_projection = Dense(cfg.t5.d_model, kernel_axes=(None, "embed"),
                                   lora=cfg.lora, name="visual_projection")
    self.visual_norm = nn.LayerNorm(name="visual_norm")
    self.t5 = t5_lib.T5ForConditionalGeneration(cfg.t5)
    if cfg.prompt_length:
      self.prompt_embeddings = self.param(
          "prompt_embeddings", nn.with_logical_partitioning(nn.initializers.normal(0.5), (None, "embed")),
          (cfg.prompt_length, cfg.t5.d_model))
    self._width = width

  def visual_tokens(self, pixel_values=None, features=None, frame_mask=None, deterministic=True):
    """Returns ``(tokens [b, v, d_model], mask [b, v])``."""
    cfg = self.config
    out = grid = None
    if features is None:
      if pixel_values is None:
        raise ValueError("CaptionT5 needs pixel_values or features")
      out = self.clip(pixel_values, deterministic=deterministic)
      if cfg.visual_tokens == "pooled":
        # [b, t, width] -> [b, t, 1, width]
        features = out.pooler_output[:, :, None, :]
      elif cfg.visual_tokens == "patches":
        features = out.last_hidden_state  # [b, t, l, width]
      elif cfg.visual_tokens == "grid":
        # [b, t, gh, gw, width] -> [b, t, cells, width]
        grid = self.patch_grid(out, pixel_values.shape)
        features = pool_patch_grid(grid, cfg.grid_cells).astype(out.last_hidden_state.dtype)
      else:
        raise ValueError(f"visual_tokens must be 'pooled', 'patches' or 'grid', got {cfg.visual_tokens!r}")
    elif features.ndim == 3:
      # cached pooled features [b, t, width] -> [b, t, 1, width]
      features = features[:, :, None, :]
    b, t = features.shape[:2]
    if frame_mask is None:
      frame_mask = jnp.ones((b, t), jnp.int32)
    features = nn.with_logical_constraint(features, ("act_batch", "act_frames", "act_len", "act_embed"))
    tokens, mask = self.temporal(features, frame_mask, deterministic=deterministic)
    tokens = self.visual_norm(self.visual_projection(tokens, deterministic))
    if cfg.video_token:
      if out is None:
        raise ValueError("video_token needs pixel_values (cached features carry no video embedding)")
      # the ViFi-CLIP video embedding as one more token: [b, d_model] -> [b, 1, d_model]
      if grid is None and cfg.video_token == "ordered":
        grid = self.patch_grid(out, pixel_values.shape)
      video = self.video_embedding(out, grid, frame_mask, deterministic)
      token = self.video_token_norm(self.video_token_projection(video, deterministic))[:, None, :]
      # [b, v, d_model] ; [b, 1, d_model] -> [b, v + 1, d_model]
      tokens = jnp.concatenate([tokens, token.astype(tokens.dtype)], axis=1)
      mask = jnp.concatenate([mask, jnp.ones((b, 1), mask.dtype)], axis=1)
    return nn.with_logical_constraint(tokens, ("act_batch", "act_len", "act_embed")), mask

  def patch_grid(self, out, pixel_shape):
    """The patch tokens (class token dropped) through ``grid_norm``: ``[b, t, gh, gw, width]``."""
    b, t = pixel_shape[:2]
    ph, pw = clip_lib._pair(self.config.vision.patch_size, "patch_size")  # pylint: disable=protected-access
    # [b, t, 1 + gh * gw, width] -> [b, t, gh, gw, width]
    return self.grid_norm(out.last_hidden_state[:, :, 1:]).reshape(b, t, pixel_shape[2] // ph,
                                                                   pixel_shape[3] // pw, -1)

  def video_embedding(self, out, grid, frame_mask, deterministic=True):
    """ViFi-CLIP's video embedding, L2-normalised: ``[b, projection_dim]``.

    ``out`` is the tower's output, ``grid`` its ``patch_grid`` (read by the
    ordered read-out; None for ``video_token='mean'``).
    """
    # per-frame embeddings, their mean over real frames: [b, t, width] -> [b, t, P] -> [b, P]
    video = vificlip_lib.masked_frame_mean(self.video_projection(out.pooler_output, deterministic), frame_mask)
    if self.config.video_token == "ordered":
      video = video + self.ordered(grid, frame_mask, deterministic).astype(jnp.float32)
    return vificlip_lib.l2_normalize(video)

  def encode(self, input_ids, attention_mask, pixel_values=None, features=None, frame_mask=None,
             deterministic=True):
    """Returns ``(encoder states [b, P + v + l, d_model], mask [b, P + v + l])``."""
    vis, vis_mask = self.visual_tokens(pixel_values, features, frame_mask, deterministic)
    text = self.t5.embed_tokens(input_ids)  # [b, l, d_model]
    parts, masks = [vis.astype(text.dtype), text], [vis_mask.astype(jnp.int32), attention_mask.astype(jnp.int32)]
    if self.config.prompt_length:
      b = input_ids.shape[0]
      # [P, d] -> [b, P, d]
      prefix = jnp.broadcast_to(self.prompt_embeddings[None].astype(text.dtype),
                                (b,) + self.prompt_embeddings.shape)
      parts.insert(0, prefix)
      masks.insert(0, jnp.ones((b, self.config.prompt_length), jnp.int32))
    # concatenate along the length axis: [b, P + v + l, d_model]
    embeds = jnp.concatenate(parts, axis=1)
    mask = jnp.concatenate(masks, axis=1)
    hidden = self.t5.encode(inputs_embeds=embeds, attention_mask=mask, deterministic=deterministic)
    return hidden, mask

  def decode(self, encoder_hidden_states, encoder_attention_mask, decoder_input_ids,
             decoder_attention_mask=None, decode=False, deterministic=True):
    """T5 decoder logits ``[b, target_len, vocab]`` (one cached step with ``decode=True``)."""
    return self.t5.decode(encoder_hidden_states, encoder_attention_mask, decoder_input_ids,
                          decoder_attention_mask=decoder_attention_mask, decode=decode,
                          deterministic=deterministic)

  def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None,
               pixel_values=None, features=None, frame_mask=None, deterministic=True):
    hidden, mask = self.encode(input_ids, attention_mask, pixel_values, features, frame_mask,
                               deterministic)
    logits = self.decode(hidden, mask, decoder_input_ids, decoder_attention_mask,
                         deterministic=deterministic)
    return CaptionT5Output(logits=logits, encoder_last_hidden_state=hidden,
                           encoder_attention_mask=mask)


def visual_inputs(batch: Mapping[str, Any]) -> dict:
  """The model's visual keyword arguments from a batch: CLIP-normalised pixels of its uint8
  ``frames``, or its cached ``features``."""
  if "features" in batch:
    return dict(features=jnp.asarray(batch["features"], jnp.float32))
  return dict(pixel_values=clip_lib.clip_preprocess(batch["frames"]))


def caption_loss(model: CaptionT5, params, batch: Mapping[str, Any], rng, *, train: bool,
                 label_smoothing: float = 0.0, task_ids: Mapping[str, int] | None = None):
  """CaptionT5's training objective on a batch: token cross-entropy of the targets, each example
  weighted by ``batch['weight']`` (0 for padding).

  ``batch``: ``frames`` uint8 ``[b, T, H, W, 3]`` (or ``features``), ``frame_mask`` ``[b, T]``,
  ``input_ids`` / ``attention_mask`` ``[b, L_in]``, ``decoder_input_ids`` / ``decoder_target`` /
  ``decoder_mask`` ``[b, L_out]``, ``weight`` ``[b]`` and, with ``task_ids``, ``task_id`` ``[b]``.

  Returns:
    ``(loss, metrics)``: the mean over target tokens; ``token_accuracy`` and, per task in
    ``task_ids``, ``loss_<task>``.
  """
  out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                    batch["decoder_input_ids"], batch["decoder_mask"], **visual_inputs(batch),
                    frame_mask=batch["frame_mask"], deterministic=not train, rngs={"dropout": rng})
  logits = out.logits  # [b, l, vocab] float32
  vocab = logits.shape[-1]
  onehot = jax.nn.one_hot(batch["decoder_target"], vocab)  # [b, l, vocab]
  if label_smoothing:
    onehot = onehot * (1 - label_smoothing) + label_smoothing / vocab
  tok_loss = optax.softmax_cross_entropy(logits, onehot)  # [b, l]
  mask = batch["decoder_mask"].astype(jnp.float32) * batch["weight"][:, None]  # [b, l]
  denom = jnp.maximum(mask.sum(), 1.0)
  loss = (tok_loss * mask).sum() / denom
  metrics = {"token_accuracy": ((logits.argmax(-1) == batch["decoder_target"]) * mask).sum() / denom}
  for name, tid in (task_ids or {}).items():
    task_mask = mask * (batch["task_id"] == tid)[:, None]
    metrics[f"loss_{name}"] = (tok_loss * task_mask).sum() / jnp.maximum(task_mask.sum(), 1.0)
  return loss, metrics
