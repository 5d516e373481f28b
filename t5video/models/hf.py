"""Load Hugging Face checkpoint directories into t5video, and write them back.

``load_hf(path)`` reads ``config.json`` to decide what the directory holds
(a CLIP vision tower, a CLIP text tower, a full CLIP, or a T5), reads the
weights (``model.safetensors``, sharded safetensors, or ``pytorch_model.bin``
through ``torch.load(weights_only=True)``), and hands them to the converter
tables in :mod:`t5video.models.convert_clip` / :mod:`t5video.models.convert_t5`.
``export_hf`` is the inverse: a directory that ``transformers``'
``from_pretrained`` loads.

Example::

  from t5video.models import hf
  module, params = hf.load_hf("/ckpt/flan-t5-base")
  out = module.apply({"params": params}, input_ids=ids, attention_mask=mask,
                     decoder_input_ids=dec_ids)
  out.logits  # [batch, target_len, vocab]

T5 directories saved by transformers 5 and by older versions both load: see
:mod:`t5video.models.convert_t5` for how ``scale_decoder_outputs``,
``tie_word_embeddings`` and a missing ``lm_head.weight`` are read.
``load_hf`` and ``export_hf`` are also exported as ``t5video.models.load_hf``
and ``t5video.models.export_hf``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "spiece.model", "vocab.json", "merges.txt", "added_tokens.json",
    "preprocessor_config.json",
)


def read_hf_config(path: str) -> dict[str, Any]:
  """Returns the parsed ``config.json`` of an HF checkpoint directory."""
  cfg_path = os.path.join(path, CONFIG_NAME)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: no config.json; is {path!r} a Hugging Face model directory?")
  try:
    with open(cfg_path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _load_safetensors(file: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  out = {}
  try:
    with safe_open(file, framework="numpy") as f:
      for k in f.keys():
        out[k] = f.get_tensor(k)
  except (TypeError, ValueError):
    # bfloat16 tensors have no plain numpy dtype: read through JAX, keep as fp32.
    with safe_open(file, framework="flax") as f:
      for k in f.keys():
        out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
  return out


def _load_torch_bin(file: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        f"{file}: reading pytorch_model.bin needs torch (pip install torch==2.13.0); "
        "or convert the checkpoint to safetensors") from e
  # weights_only=True: never unpickle arbitrary code from a checkpoint.
  sd = torch.load(file, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads every weight of an HF directory into ``{name: np.ndarray}``."""
  for index_name, loader in ((SAFETENSORS_INDEX, _load_safetensors), (TORCH_INDEX, _load_torch_bin)):
    index_file = os.path.join(path, index_name)
    if os.path.isfile(index_file):
      with open(index_file) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      sd: dict[str, np.ndarray] = {}
      for shard in shards:
        sd.update(loader(os.path.join(path, shard)))
      return sd
  if os.path.isfile(os.path.join(path, SAFETENSORS_NAME)):
    return _load_safetensors(os.path.join(path, SAFETENSORS_NAME))
  if os.path.isfile(os.path.join(path, TORCH_NAME)):
    return _load_torch_bin(os.path.join(path, TORCH_NAME))
  raise FileNotFoundError(
      f"{path}: no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX}, {TORCH_NAME} or {TORCH_INDEX} found")


def model_family(hf_config: dict[str, Any]) -> str:
  """'clip' or 't5', from ``model_type`` (clip, clip_vision_model, clip_text_model, t5)."""
  model_type = hf_config.get("model_type", "")
  if model_type.startswith("clip"):
    return "clip"
  if model_type in ("t5", "mt5", "umt5"):
    if model_type != "t5":
      raise ValueError(f"model_type {model_type!r} is not supported; t5video ports T5 v1.0 / v1.1 / FLAN-T5")
    return "t5"
  raise ValueError(
      f"config.json has model_type={model_type!r}; t5video loads CLIP (clip, clip_vision_model, "
      "clip_text_model) and T5 (t5) checkpoints")


def load_hf(path: str, **overrides):
  """Loads an HF CLIP or T5 directory. Returns ``(module, params)``.

  Args:
    path: a directory written by ``save_pretrained`` or a hub snapshot; a
      ``gs://`` one is downloaded first (``t5video.train.paths.local_copy``).
    **overrides: t5video-only model fields, e.g. ``dtype=jnp.bfloat16``,
      ``scan_layers=True``, ``remat=True``, ``lora=LoraSpec(...)``.
  """
  from t5video.train import paths  # pylint: disable=g-import-not-at-top
  path = paths.local_copy(path)
  hf_config = read_hf_config(path)
  state_dict = read_state_dict(path)
  family = model_family(hf_config)
  if family == "clip":
    from t5video.models import convert_clip
    return convert_clip.clip_from_hf(state_dict, hf_config, **overrides)
  from t5video.models import convert_t5
  return convert_t5.t5_from_hf(state_dict, hf_config, **overrides)


def to_hf(module, params) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Our ``(module, params)`` back to an HF ``(state_dict, config dict)``."""
  from t5video.models import clip, convert_clip, convert_t5, t5
  if isinstance(module, t5.T5ForConditionalGeneration):
    return convert_t5.t5_to_hf(module, params)
  if isinstance(module, (clip.CLIPVisionModel, clip.CLIPTextModel, clip.CLIPModel)):
    return convert_clip.clip_to_hf(module, params)
  raise TypeError(f"export to Hugging Face is defined for CLIP and T5 modules, not {type(module).__name__}")


def export_hf(module, params, out_dir: str, *, tokenizer_from: str | None = None) -> str:
  """Writes ``config.json`` + ``model.safetensors`` (+ tokenizer files) to ``out_dir``.

  ``out_dir`` and ``tokenizer_from`` may be ``gs://`` paths: the directory is
  written locally and then uploaded.
  """
  from t5video.train import paths  # pylint: disable=g-import-not-at-top
  if paths.is_remote(out_dir):
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory(prefix="t5video-export-") as tmp:
      export_hf(module, params, tmp, tokenizer_from=tokenizer_from)
      paths.copytree(tmp, out_dir)
    return out_dir
  if tokenizer_from:
    tokenizer_from = paths.local_copy(tokenizer_from)
  from safetensors.numpy import save_file
  state_dict, hf_config = to_hf(module, params)
  os.makedirs(out_dir, exist_ok=True)
  # np.array (not ascontiguousarray) keeps 0-d tensors such as CLIP's logit_scale 0-d.
  tensors = {k: np.array(v, dtype=np.float32 if np.issubdtype(np.asarray(v).dtype, np.floating)
                         else np.asarray(v).dtype, order="C") for k, v in state_dict.items()}
  save_file(tensors, os.path.join(out_dir, SAFETENSORS_NAME), metadata={"format": "pt"})
  with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  if tokenizer_from:
    for name in TOKENIZER_FILES:
      src = os.path.join(tokenizer_from, name)
      if os.path.isfile(src):
        shutil.copy(src, os.path.join(out_dir, name))
  return out_dir
