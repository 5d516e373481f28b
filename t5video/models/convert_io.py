"""``t5video convert`` / ``t5video export-hf``: HF directories <-> Orbax checkpoints.

A converted checkpoint directory holds::

  params/        the converted params (an Orbax PyTree checkpoint)
  hf_config.json the source config.json (to rebuild the module on export)

``init_from.path`` of a training config may point at it, and
``t5video export-hf`` turns it back into an HF directory.
"""

from __future__ import annotations

import json

import numpy as np


def convert_to_orbax(hf_dir: str, out_dir: str) -> str:
  """Converts an HF CLIP/T5 directory into an Orbax checkpoint at ``out_dir`` (local or gs://)."""
  import orbax.checkpoint as ocp
  from t5video.models import hf
  from t5video.train import paths
  out_dir = paths.normalize(out_dir)
  hf_dir = paths.local_copy(hf_dir)
  _, params = hf.load_hf(hf_dir)
  paths.makedirs(out_dir)
  params_dir = paths.join(out_dir, "params")
  ckptr = ocp.PyTreeCheckpointer()
  ckptr.save(params_dir, params, force=True)
  paths.write_text(paths.join(out_dir, "hf_config.json"),
                   json.dumps(hf.read_hf_config(hf_dir), indent=2, sort_keys=True))
  return out_dir


def load_orbax(ckpt_dir: str):
  """``(module, params)`` from a directory written by :func:`convert_to_orbax` (local or gs://)."""
  import orbax.checkpoint as ocp
  from t5video.models import convert_clip, hf
  from t5video.models import t5 as t5_lib
  from t5video.train import paths
  ckpt_dir = paths.normalize(ckpt_dir)
  cfg_path = paths.join(ckpt_dir, "hf_config.json")
  if not paths.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: not found; was {ckpt_dir!r} written by `t5video convert`?")
  hf_config = json.loads(paths.read_text(cfg_path))
  params = ocp.PyTreeCheckpointer().restore(paths.join(ckpt_dir, "params"))
  params = _numpy_tree(params)
  # Rebuild the module from the saved config; the params' top-level names say
  # which CLIP model (and whether it has projections) or which T5 layout.
  if hf.model_family(hf_config) == "clip":
    if "vision_model" in params and "text_model" in params:
      kind, proj = "clip", True
    elif "vision_model" in params:
      kind, proj = "vision", "visual_projection" in params
    else:
      kind, proj = "text", "text_projection" in params
    module = convert_clip.build_module(hf_config, kind, with_projection=proj)
  else:
    scanned = "blocks" in params.get("encoder", {})
    from t5video.models import convert_t5
    module = t5_lib.T5ForConditionalGeneration(t5_lib.T5Config.from_hf(
        convert_t5.normalize_hf_config(hf_config), scan_layers=scanned))
  return module, params


def _numpy_tree(tree):
  if isinstance(tree, dict):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def export_from_orbax(ckpt_dir: str, out_dir: str, *, tokenizer_from: str | None = None) -> str:
  from t5video.models import hf
  module, params = load_orbax(ckpt_dir)
  return hf.export_hf(module, params, out_dir, tokenizer_from=tokenizer_from)
