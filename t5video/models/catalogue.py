"""The public checkpoints t5video's configs name, by their hub names, as architectures.

A recipe config points at a local snapshot of, say, ``openai/clip-vit-base-patch16`` or
``google/flan-t5-base`` (``model.clip_init`` / ``model.t5_init``). Their shapes are public
facts, kept here as t5video's size variants (:data:`t5video.models.clip.VARIANTS`,
:data:`t5video.models.t5.VARIANTS`), so that a config can be checked without the weights:

* :func:`write_config_dir` writes a directory holding only the checkpoint's ``config.json``
  (what ``t5video compile`` builds a step from: shapes, never weights);
* :func:`write_random_checkpoint` writes a real Hugging Face directory of that architecture
  with random weights (``save_pretrained``; the real-size runs of ``docs/tpu.md``).

The config.json files are made by ``transformers``' own config classes from our sizes, as
the hub's are.
"""

from __future__ import annotations

import json
import os
from typing import Any

from t5video.models import clip as clip_lib
from t5video.models import t5 as t5_lib

# hub name (the part after the organisation) -> (family, t5video variant)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "clip-vit-base-patch32": ("clip", "B/32"),
    "clip-vit-base-patch16": ("clip", "B/16"),
    "clip-vit-large-patch14": ("clip", "L/14"),
    "clip-vit-large-patch14-336": ("clip", "L/14-336"),
    "t5-small": ("t5", "t5-small"),
    "t5-base": ("t5", "t5-base"),
    "t5-large": ("t5", "t5-large"),
    "t5-v1_1-base": ("t5", "t5-v1_1-base"),
    "flan-t5-small": ("t5", "flan-t5-small"),
    "flan-t5-base": ("t5", "flan-t5-base"),
    "flan-t5-large": ("t5", "flan-t5-large"),
    "flan-t5-xl": ("t5", "flan-t5-xl"),
    "flan-t5-xxl": ("t5", "flan-t5-xxl"),
}


def architecture_name(path: str) -> str | None:
  """The catalogue name a checkpoint path ends in (``.../openai/clip-vit-base-patch16``), or None."""
  name = os.path.basename(os.path.normpath(path)) if path else ""
  return name if name in ARCHITECTURES else None


def _hf_config(name: str):
  """The ``transformers`` config object of ``name``."""
  import transformers  # pylint: disable=g-import-not-at-top
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown checkpoint {name!r}; the catalogue has {sorted(ARCHITECTURES)}")
  family, variant = ARCHITECTURES[name]
  if family == "t5":
    return transformers.T5Config(**t5_lib.T5Config.variant(variant).to_hf())
  sizes = clip_lib.VARIANTS[variant]
  drop = ("projection_dim",)
  return transformers.CLIPConfig(
      vision_config={k: v for k, v in sizes["vision"].items() if k not in drop},
      text_config={k: v for k, v in sizes["text"].items() if k not in drop},
      projection_dim=sizes["projection_dim"])


def hf_config(name: str) -> dict[str, Any]:
  """The ``config.json`` dict of the checkpoint ``name``."""
  return _hf_config(name).to_dict()


def write_config_dir(name: str, out_dir: str) -> str:
  """``out_dir/config.json`` of the checkpoint ``name`` (its shapes; no weights, no tokenizer)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config(name), f, indent=2, sort_keys=True)
  return out_dir


def write_random_checkpoint(name: str, out_dir: str, *, seed: int = 0) -> str:
  """A Hugging Face directory of ``name``'s architecture with random weights (``save_pretrained``)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config = _hf_config(name)
  torch.manual_seed(seed)
  cls = transformers.T5ForConditionalGeneration if ARCHITECTURES[name][0] == "t5" else transformers.CLIPModel
  cls(config).save_pretrained(out_dir)
  return out_dir
