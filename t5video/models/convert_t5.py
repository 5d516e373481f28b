"""Hugging Face T5 state dicts <-> t5video T5 params, in plain numpy.

Our module tree mirrors the HF names (see :mod:`t5video.models.t5`), so the
conversion is a table: each HF key maps to one param path, with ``nn.Linear``
weights transposed (``[out, in]`` -> ``[in, out]``) and embeddings kept as is.
With ``scan_layers=True`` blocks ``1 .. n-1`` of each stack are stacked along a
new leading axis under ``blocks``; :func:`t5_to_hf` unstacks them again.

Example::

  from safetensors.numpy import load_file
  sd = load_file('flan-t5-base/model.safetensors')
  cfg = json.load(open('flan-t5-base/config.json'))
  module, params = t5_from_hf(sd, cfg, dtype=jnp.bfloat16, scan_layers=True)
  state_dict, hf_config = t5_to_hf(module, params)   # the exact inverse

Tied and untied heads. T5 v1.0 scales the decoder output by ``d_model ** -0.5``
and uses the shared embedding as its head; v1.1 / FLAN-T5 does neither and has
its own ``lm_head``. Older transformers recorded the switch as
``tie_word_embeddings`` (false for v1.1) and saved a real ``lm_head.weight``.
Transformers 5 always ties ``lm_head`` to ``shared``, writes
``"tie_word_embeddings": true`` and keeps the switch in
``scale_decoder_outputs``; a v1.1 model it saves has no ``lm_head.weight``
unless the head was given weights of its own. So here: scaling follows
``scale_decoder_outputs`` when the config has it, else ``tie_word_embeddings``
(see :func:`normalize_hf_config`); an unscaled model's head is
``lm_head.weight`` where the file has one, else a copy of ``shared.weight``
(our ``lm_head`` param then starts equal to the embedding; fine-tuning trains
the two separately, and the export writes both).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models.t5 import T5Config, T5ForConditionalGeneration

# HF keys that T5ForConditionalGeneration carries but never uses, or copies of
# shared.weight kept by tied checkpoints.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _block_table(cfg: T5Config, stack: str, i: int) -> list[tuple[str, tuple[str, ...], bool]]:
  """(hf_key, our path inside the block, transpose) for block ``i`` of ``stack``."""
  is_decoder = stack == "decoder"
  rows = []
  hf = f"{stack}.block.{i}.layer"
  for j, name in ((0, "SelfAttention"),) + (((1, "EncDecAttention"),) if is_decoder else ()):
    for proj in ("q", "k", "v", "o"):
      rows.append((f"{hf}.{j}.{name}.{proj}.weight", (f"layer_{j}", name, proj, "kernel"), True))
    rows.append((f"{hf}.{j}.layer_norm.weight", (f"layer_{j}", "layer_norm", "weight"), False))
  if i == 0:
    rows.append((f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                 ("layer_0", "SelfAttention", "relative_attention_bias", "embedding"), False))
  ff = 2 if is_decoder else 1
  wis = ("wi_0", "wi_1") if cfg.is_gated_act else ("wi",)
  for w in wis + ("wo",):
    rows.append((f"{hf}.{ff}.DenseReluDense.{w}.weight", (f"layer_{ff}", "DenseReluDense", w, "kernel"),
                 True))
  rows.append((f"{hf}.{ff}.layer_norm.weight", (f"layer_{ff}", "layer_norm", "weight"), False))
  return rows


def conversion_table(cfg: T5Config) -> list[tuple[str, tuple[str, ...], bool]]:
  """Every ``(hf_key, unscanned param path, transpose)`` of a T5 with this config."""
  rows = [("shared.weight", ("shared", "embedding"), False)]
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    for i in range(n):
      rows += [(k, (stack, f"block_{i}") + p, t) for k, p, t in _block_table(cfg, stack, i)]
    rows.append((f"{stack}.final_layer_norm.weight", (stack, "final_layer_norm", "weight"), False))
  if not cfg.tie_word_embeddings:
    rows.append(("lm_head.weight", ("lm_head", "kernel"), True))
  return rows


def _scan_blocks(flat: dict[tuple[str, ...], np.ndarray], cfg: T5Config) -> dict:
  """Stacks ``{stack}/block_{i}`` (i >= 1) into ``{stack}/blocks`` along a new axis 0."""
  out = {}
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    groups: dict[tuple[str, ...], list[np.ndarray]] = {}
    for i in range(1, n):
      prefix = (stack, f"block_{i}")
      for path in [p for p in flat if p[:2] == prefix]:
        groups.setdefault(path[2:], []).append(flat.pop(path))
    for rest, arrays in groups.items():
      out[(stack, "blocks") + rest] = np.stack(arrays, axis=0)  # [layers, ...]
  out.update(flat)
  return out


def _unscan_blocks(flat: dict[tuple[str, ...], np.ndarray], cfg: T5Config) -> dict:
  """Inverse of :func:`_scan_blocks`."""
  out = {}
  for path, value in flat.items():
    if len(path) > 1 and path[1] == "blocks":
      for i in range(value.shape[0]):
        out[(path[0], f"block_{i + 1}") + path[2:]] = value[i]
    else:
      out[path] = value
  return out


def scales_decoder_outputs(hf_config: dict[str, Any]) -> bool:
  """Whether an HF T5 config means v1.0 (scaled decoder output, tied head).

  ``scale_decoder_outputs`` decides where present (transformers >= 5 writes it,
  together with an always-true ``tie_word_embeddings``); older configs carry
  the switch in ``tie_word_embeddings`` (false for v1.1 / FLAN-T5), and a config
  with neither key is v1.0 (transformers' default).
  """
  scale = hf_config.get("scale_decoder_outputs")
  if scale is not None:
    return bool(scale)
  return hf_config.get("tie_word_embeddings", True) is not False


def normalize_hf_config(hf_config: dict[str, Any]) -> dict[str, Any]:
  """A copy of ``hf_config`` whose ``tie_word_embeddings`` / ``scale_decoder_outputs`` agree.

  Both are set to :func:`scales_decoder_outputs`, which is what
  :class:`~t5video.models.t5.T5Config`'s single ``tie_word_embeddings`` flag
  means (scaled output and the shared embedding as head).
  """
  out = dict(hf_config)
  out["tie_word_embeddings"] = out["scale_decoder_outputs"] = scales_decoder_outputs(hf_config)
  return out


def t5_from_hf(state_dict: dict[str, np.ndarray], hf_config: dict[str, Any], **overrides):
  """Converts an HF T5 state dict to ``(T5ForConditionalGeneration, params)``.

  Args:
    state_dict: ``{hf_key: array}`` (numpy, or anything ``np.asarray`` takes).
    hf_config: the parsed ``config.json``.
    **overrides: t5video-only config fields (``dtype``, ``scan_layers``,
      ``remat``, ``lora``, ``adapter_dim``...). LoRA / adapter params, which HF
      checkpoints lack, get their initial values (B and ``up`` at zero, so the
      model is unchanged) from ``jax.random.PRNGKey(0)``.

  Returns:
    The module and its params: a nested dict of plain float32 numpy arrays
    (``param_dtype``), with the layout ``scan_layers`` asks for.

  Raises:
    ValueError: missing or unexpected keys (all listed), shape mismatches, or
      tied copies of the embedding that differ from ``shared.weight``.
  """
  cfg = T5Config.from_hf(normalize_hf_config(hf_config), **overrides)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  if not cfg.tie_word_embeddings and "lm_head.weight" not in sd and "shared.weight" in sd:
    # Unscaled (v1.1 / FLAN) and saved by transformers 5 with its head tied to the
    # embedding: the head is shared.weight.
    sd["lm_head.weight"] = sd["shared.weight"]
  table = conversion_table(cfg)
  wanted = {k for k, _, _ in table}
  shared = sd.get("shared.weight")
  tolerated = set(_IGNORED) | set(_TIED_COPIES)
  if cfg.tie_word_embeddings:
    tolerated.add("lm_head.weight")
  for key in sorted(tolerated & set(sd)):
    if key in _IGNORED:
      continue
    if shared is not None and not np.array_equal(sd[key], shared):
      raise ValueError(
          f"state dict key {key!r} differs from 'shared.weight' but the config ties the embeddings"
          + (" (scale_decoder_outputs, or tie_word_embeddings in a config without it, is true: "
             "T5 v1.0, whose head is the shared embedding); a v1.1 / FLAN-T5 checkpoint with its own "
             "lm_head needs scale_decoder_outputs=false" if key == "lm_head.weight" else ""))
  missing = sorted(wanted - set(sd))
  unexpected = sorted(set(sd) - wanted - tolerated)
  if missing or unexpected:
    raise ValueError(
        f"T5 state dict does not match config (feed_forward_proj={cfg.feed_forward_proj!r}, "
        f"num_layers={cfg.num_layers}, num_decoder_layers={cfg.num_decoder_layers}, "
        f"scale_decoder_outputs={cfg.tie_word_embeddings}):\n  missing keys: {missing}\n"
        f"  unexpected keys: {unexpected}")

  flat = {}
  for key, path, transpose in table:
    value = sd[key].astype(np.dtype(cfg.param_dtype))
    flat[path] = np.ascontiguousarray(value.T) if transpose else value  # [out, in] -> [in, out]
  if cfg.scan_layers:
    flat = _scan_blocks(flat, cfg)

  module = T5ForConditionalGeneration(cfg)
  ids = jnp.zeros((1, 2), jnp.int32)
  init = lambda rng: nn.unbox(module.init(rng, input_ids=ids, decoder_input_ids=ids)["params"])
  expected = flax.traverse_util.flatten_dict(jax.eval_shape(init, jax.random.PRNGKey(0)))
  extra = sorted("/".join(p) for p in set(expected) - set(flat))
  if extra and not all(_is_peft_path(p) for p in set(expected) - set(flat)):
    raise ValueError(f"internal: module params not covered by the conversion table: {extra}")
  for path, value in flat.items():
    if path not in expected:
      raise ValueError(f"internal: converted param {'/'.join(path)} is not in the module")
    if tuple(expected[path].shape) != value.shape:
      raise ValueError(f"param {'/'.join(path)}: checkpoint gives shape {value.shape}, config "
                       f"expects {tuple(expected[path].shape)}")
  if extra:
    fresh = flax.traverse_util.flatten_dict(jax.jit(init)(jax.random.PRNGKey(0)))
    for path in set(expected) - set(flat):
      flat[path] = np.asarray(fresh[path])
  return module, flax.traverse_util.unflatten_dict(flat)


def _is_peft_path(path: tuple[str, ...]) -> bool:
  return path[-1] in ("lora_A", "lora_B") or "adapter" in path


def t5_to_hf(module: T5ForConditionalGeneration, params) -> tuple[dict[str, np.ndarray], dict]:
  """The exact inverse of :func:`t5_from_hf`: ``(state_dict, hf_config)``.

  Scanned blocks are unstacked. LoRA updates are merged into their kernels
  (``W + alpha / rank * A B``) since HF T5 has no LoRA. Bottleneck adapters
  have no HF counterpart: they raise unless their ``up`` projection is still
  all zero (an identity adapter, dropped).

  Returns:
    ``{hf_key: float32 np.ndarray}`` (``[out, in]`` Linear weights) and the
    ``config.json`` dict; ``save_file`` + ``json.dump`` of both give a
    directory that ``T5ForConditionalGeneration.from_pretrained`` loads.
  """
  cfg = module.config
  flat = {p: np.asarray(v, dtype=np.float32)
          for p, v in flax.traverse_util.flatten_dict(nn.unbox(params)).items()}
  # Merge LoRA, check adapters.
  for path in [p for p in flat if p[-1] == "lora_A"]:
    a = flat.pop(path)
    b = flat.pop(path[:-1] + ("lora_B",))
    spec = cfg.lora
    scale = spec.alpha / spec.rank if spec is not None else 1.0
    # [..., in, r] x [..., r, out] -> [..., in, out]
    flat[path[:-1] + ("kernel",)] = flat[path[:-1] + ("kernel",)] + scale * np.einsum(
        "...ir,...ro->...io", a, b)
  for path in [p for p in flat if "adapter" in p]:
    value = flat.pop(path)
    if path[-2] == "up" and np.any(value != 0):
      raise ValueError(f"param {'/'.join(path)}: a trained bottleneck adapter has no Hugging Face "
                       "T5 counterpart and cannot be exported")
  if cfg.scan_layers:
    flat = _unscan_blocks(flat, cfg)
  state_dict = {}
  table = conversion_table(cfg)
  missing = sorted("/".join(p) for _, p, _ in table if p not in flat)
  unexpected = sorted("/".join(p) for p in set(flat) - {p for _, p, _ in table})
  if missing or unexpected:
    raise ValueError(f"params do not match the T5 config:\n  missing: {missing}\n"
                     f"  unexpected: {unexpected}")
  for key, path, transpose in table:
    value = flat[path]
    state_dict[key] = np.ascontiguousarray(value.T) if transpose else value  # [in, out] -> [out, in]
  if cfg.tie_word_embeddings:
    state_dict["lm_head.weight"] = state_dict["shared.weight"]
  hf_config = cfg.to_hf()
  hf_config["dtype"] = "float32"
  return state_dict, hf_config


def save_hf(module: T5ForConditionalGeneration, params, out_dir: str) -> str:
  """Writes ``config.json`` + ``model.safetensors`` that ``from_pretrained`` loads."""
  import json
  import os

  from safetensors.numpy import save_file
  state_dict, hf_config = t5_to_hf(module, params)
  os.makedirs(out_dir, exist_ok=True)
  # safetensors refuses shared buffers: store the tied lm_head as its own copy.
  tensors = {k: np.array(v, dtype=np.float32, copy=True) for k, v in state_dict.items()}
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  return out_dir
