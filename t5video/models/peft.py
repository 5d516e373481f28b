"""Parameter-efficient tuning: which parameters train, and LoRA merging.

Methods (``config.peft.method``):

* ``full``: everything trains.
* ``bridge``: stage 1 of CaptionT5: only the temporal module and the visual
  projection train; CLIP and T5 stay frozen.
* ``lora``: LoRA factors (``lora_A``/``lora_B``) on the Dense layers whose path
  matches ``lora_targets`` train, plus the bridge; everything else is frozen.
* ``adapters``: bottleneck adapters after every T5 feed-forward sublayer train,
  plus the bridge.
* ``prompt``: learned prefix embeddings (prompt tuning) train, plus the bridge.
* ``bitfit``: biases and norm scales/biases train, plus the bridge.
* ``last_n``: the last ``last_n`` T5 encoder and decoder blocks (and their
  final norms) train, plus the bridge.

The decision is a regex over '/'-joined parameter paths, handed to the
optimizer (``optim.trainable``); frozen parameters get no optimizer state.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from t5video.models.layers import LoraSpec

METHODS = ("full", "bridge", "lora", "adapters", "prompt", "bitfit", "last_n")
BRIDGE = r"^(temporal|visual_projection|visual_norm|video_token_projection|video_token_norm)/"


def trainable_regex(method: str, *, last_n: int = 2, num_layers: int = 0,
                    num_decoder_layers: int = 0, bridge: bool = True) -> str:
  """The regex of trainable parameter paths for a PEFT method ('' = all)."""
  if method not in METHODS:
    raise ValueError(f"peft.method must be one of {METHODS}, got {method!r}")
  if method == "full":
    return ""
  parts = [BRIDGE] if bridge else []
  if method == "lora":
    parts.append(r"/lora_(A|B)$")
  elif method == "adapters":
    parts.append(r"/adapter/")
  elif method == "prompt":
    parts.append(r"^prompt_embeddings$")
  elif method == "bitfit":
    # biases, LayerNorm scales (CLIP: layer_norm1, pre_layrnorm, ...) and T5's RMS-norm weights
    parts.append(r"/bias$|[^/]*(norm|layrnorm)[^/]*/(scale|weight)$")
  elif method == "last_n":
    enc = [f"block_{i}" for i in range(max(num_layers - last_n, 0), num_layers)]
    dec = [f"block_{i}" for i in range(max(num_decoder_layers - last_n, 0), num_decoder_layers)]
    if enc:
      parts.append(r"^t5/encoder/(" + "|".join(enc) + r"|final_layer_norm)/")
    if dec:
      parts.append(r"^t5/decoder/(" + "|".join(dec) + r"|final_layer_norm)/")
  return "|".join(f"(?:{p})" for p in parts)


def path_strings(params) -> list[tuple[str, Any]]:
  """``[(path 'a/b/c', leaf), ...]`` for a params pytree."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = []
    for k in path:
      keys.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    out.append(("/".join(keys), leaf))
  return out


def trainable_summary(params, regex: str) -> dict[str, Any]:
  """Counts trainable and total parameters under a trainable-regex."""
  pat = re.compile(regex) if regex else None
  total = trainable = 0
  for path, leaf in path_strings(params):
    n = int(np.prod(getattr(leaf, "shape", ())))
    total += n
    if pat is None or pat.search(path):
      trainable += n
  return {"total": total, "trainable": trainable,
          "share": trainable / total if total else 0.0}


def merged_kernel(kernel, lora_a, lora_b, lora: LoraSpec) -> np.ndarray:
  """``kernel + (alpha / rank) * A @ B`` in ``kernel``'s dtype (summed in float32).

  The one LoRA-folding formula: :func:`merge_lora` and the HF exporters use it.
  """
  kernel = np.asarray(kernel)
  a, b = np.asarray(lora_a, np.float32), np.asarray(lora_b, np.float32)
  # [in, r] x [r, out] -> [in, out]
  return (kernel.astype(np.float32) + (lora.alpha / lora.rank) * np.einsum("ir,ro->io", a, b)).astype(kernel.dtype)


def merge_lora(params: Mapping[str, Any], lora: LoraSpec | None) -> dict[str, Any]:
  """Folds every ``lora_A``/``lora_B`` pair into its ``kernel``; drops the factors.

  ``kernel' = kernel + (alpha / rank) * A @ B``, so the merged model computes
  the same function without the LoRA path (dropout aside).
  """
  if lora is None:
    return jax.tree_util.tree_map(lambda x: x, dict(params))

  def merge(node):
    if not isinstance(node, Mapping):
      return node
    node = dict(node)
    if "lora_A" in node and "lora_B" in node:
      node["kernel"] = merged_kernel(node["kernel"], node.pop("lora_A"), node.pop("lora_B"), lora)
    return {k: merge(v) for k, v in node.items()}

  return merge(params)
