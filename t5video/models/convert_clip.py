"""HF CLIP state dicts <-> t5video CLIP params, in plain numpy.

Our parameter paths are the PyTorch state-dict names with '.' -> '/',
``layers.N`` -> ``layers_N`` and the leaf renamed for its Flax layer
(``kernel`` for Linear / Conv2d, ``scale`` for LayerNorm, ``embedding`` for
Embedding). :data:`RULES` is that table; the same rows run both ways.

Accepted inputs: the state dict and ``config.json`` of ``CLIPVisionModel``,
``CLIPVisionModelWithProjection``, ``CLIPTextModel``,
``CLIPTextModelWithProjection`` and ``CLIPModel``. Tower-only state dicts may
carry the ``vision_model.`` / ``text_model.`` prefix (transformers 4 wrote it)
or not (transformers 5 writes ``CLIPVisionModel`` / ``CLIPTextModel`` without
it). :func:`clip_to_hf` writes the transformers 5 layout.

Example::

  module, params = clip_from_hf(state_dict, json.load(open("config.json")))
  state_dict2, config2 = clip_to_hf(module, params)  # == the input, key for key
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from t5video.models import clip
from t5video.models import peft

# Placeholders usable in RULES, with the values each may take.
_SLOTS = {
    "tower": r"vision_model|text_model",
    "layer": r"\d+",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
    "fc": r"fc1|fc2",
    "ln": r"layer_norm1|layer_norm2",
    "norm": r"pre_layrnorm|post_layernorm|final_layer_norm",
    "emb": r"position_embedding|token_embedding",
    "head": r"visual_projection|text_projection",
    "wb": r"bias",
}

# (HF state-dict key, our '/'-joined param path, transform). Transforms:
#   'linear': torch Linear weight [out, in]   <-> kernel [in, out]
#   'conv':   torch Conv2d weight [D, C, h, w] <-> kernel [h, w, C, D]
#   None:     same array.
RULES: tuple[tuple[str, str, Optional[str]], ...] = (
    ("{tower}.embeddings.class_embedding", "{tower}/embeddings/class_embedding", None),
    ("{tower}.embeddings.patch_embedding.weight", "{tower}/embeddings/patch_embedding/kernel", "conv"),
    ("{tower}.embeddings.{emb}.weight", "{tower}/embeddings/{emb}/embedding", None),
    ("{tower}.{norm}.weight", "{tower}/{norm}/scale", None),
    ("{tower}.{norm}.bias", "{tower}/{norm}/bias", None),
    ("{tower}.encoder.layers.{layer}.{ln}.weight", "{tower}/encoder/layers_{layer}/{ln}/scale", None),
    ("{tower}.encoder.layers.{layer}.{ln}.bias", "{tower}/encoder/layers_{layer}/{ln}/bias", None),
    ("{tower}.encoder.layers.{layer}.self_attn.{proj}.weight",
     "{tower}/encoder/layers_{layer}/self_attn/{proj}/kernel", "linear"),
    ("{tower}.encoder.layers.{layer}.self_attn.{proj}.{wb}",
     "{tower}/encoder/layers_{layer}/self_attn/{proj}/{wb}", None),
    ("{tower}.encoder.layers.{layer}.mlp.{fc}.weight", "{tower}/encoder/layers_{layer}/mlp/{fc}/kernel", "linear"),
    ("{tower}.encoder.layers.{layer}.mlp.{fc}.{wb}", "{tower}/encoder/layers_{layer}/mlp/{fc}/{wb}", None),
    ("{head}.weight", "{head}/kernel", "linear"),
    ("logit_scale", "logit_scale", None),
)

# Non-learned buffers that older checkpoints stored; they are dropped.
_IGNORED_HF_KEYS = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")


def _compile(template: str) -> re.Pattern:
  """A template such as ``'{tower}.{norm}.weight'`` as an anchored regex with named groups."""
  parts = re.split(r"(\{\w+\})", template)
  regex = "".join(f"(?P<{p[1:-1]}>{_SLOTS[p[1:-1]]})" if p.startswith("{") else re.escape(p) for p in parts)
  return re.compile(f"^{regex}$")


_COMPILED = tuple((_compile(hf), hf, _compile(ours), ours, op) for hf, ours, op in RULES)


def _to_ours(op: Optional[str], w: np.ndarray) -> np.ndarray:
  if op == "linear":
    return np.transpose(w)  # [out, in] -> [in, out]
  if op == "conv":
    return np.transpose(w, (2, 3, 1, 0))  # [D, C, h, w] -> [h, w, C, D]
  return w


def _to_hf(op: Optional[str], w: np.ndarray) -> np.ndarray:
  if op == "linear":
    return np.transpose(w)  # [in, out] -> [out, in]
  if op == "conv":
    return np.transpose(w, (3, 2, 0, 1))  # [h, w, C, D] -> [D, C, h, w]
  return w


def hf_key_to_path(key: str) -> Optional[tuple[str, Optional[str]]]:
  """``(our path, transform)`` for an HF key, or None when no rule matches."""
  for hf_re, _, _, ours, op in _COMPILED:
    m = hf_re.match(key)
    if m:
      return ours.format(**m.groupdict()), op
  return None


def path_to_hf_key(path: str) -> Optional[tuple[str, Optional[str]]]:
  """``(HF key, transform)`` for one of our '/'-joined param paths, or None."""
  for _, hf, ours_re, _, op in _COMPILED:
    m = ours_re.match(path)
    if m:
      return hf.format(**m.groupdict()), op
  return None


# -----------------------------------------------------------------------------
# Which model a checkpoint holds
# -----------------------------------------------------------------------------

def _kind(state_dict: Mapping[str, Any], hf_config: Mapping[str, Any]) -> str:
  """'clip', 'vision' or 'text' from model_type / sub-configs / keys."""
  model_type = hf_config.get("model_type")
  if model_type == "clip" or "vision_config" in hf_config or "text_config" in hf_config:
    return "clip"
  if model_type == "clip_vision_model":
    return "vision"
  if model_type == "clip_text_model":
    return "text"
  if model_type is not None:
    raise ValueError(
        f"config.json has model_type={model_type!r}; the CLIP converter takes 'clip', "
        "'clip_vision_model' or 'clip_text_model'")
  keys = list(state_dict)
  if any(k.startswith("vision_model.") for k in keys) and any(k.startswith("text_model.") for k in keys):
    return "clip"
  if any("class_embedding" in k or "patch_embedding" in k for k in keys):
    return "vision"
  if any("token_embedding" in k for k in keys):
    return "text"
  raise ValueError("cannot tell which CLIP model this is: config.json has no model_type and the state dict "
                   "has neither patch_embedding nor token_embedding keys")


_TOWER = {"vision": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}


def _with_tower_prefix(state_dict: Mapping[str, Any], kind: str) -> dict[str, Any]:
  """Adds ``vision_model.`` / ``text_model.`` to tower keys that lack it (transformers 5 layout)."""
  prefix, head = _TOWER[kind]
  out = {}
  for k, v in state_dict.items():
    if k == f"{head}.weight" or k.startswith(prefix + "."):
      out[k] = v
    else:
      out[f"{prefix}.{k}"] = v
  return out


def build_module(hf_config: Mapping[str, Any], kind: str, with_projection: bool = True, **overrides):
  """Our module for an HF config dict; ``kind`` is 'clip', 'vision' or 'text'.

  For a full CLIP config with kind 'vision' / 'text', the tower takes the
  top-level ``projection_dim`` (the one CLIPModel's projections use).
  """
  if kind == "clip":
    if "vision_config" not in hf_config or "text_config" not in hf_config:
      raise ValueError("a full CLIP config.json needs both 'vision_config' and 'text_config'")
    return clip.CLIPModel(
        vision_config=clip.CLIPVisionConfig.from_hf(hf_config["vision_config"], **overrides),
        text_config=clip.CLIPTextConfig.from_hf(hf_config["text_config"], **overrides),
        projection_dim=int(hf_config.get("projection_dim", 512)),
        logit_scale_init_value=float(hf_config.get("logit_scale_init_value", 2.6592)))
  cls, module_cls = ((clip.CLIPVisionConfig, clip.CLIPVisionModel) if kind == "vision"
                     else (clip.CLIPTextConfig, clip.CLIPTextModel))
  sub = f"{kind}_config"
  if sub in hf_config:
    overrides = {"projection_dim": int(hf_config.get("projection_dim", 512)), **overrides}
  return module_cls(cls.from_hf(hf_config, **overrides), with_projection=with_projection)


def _dummy_inputs(module) -> dict[str, jax.ShapeDtypeStruct]:
  out = {}
  if isinstance(module, (clip.CLIPVisionModel, clip.CLIPModel)):
    vc = module.config if isinstance(module, clip.CLIPVisionModel) else module.vision_config
    image = clip._pair(vc.image_size, "image_size")  # pylint: disable=protected-access
    out["pixel_values"] = jax.ShapeDtypeStruct((1, image[0], image[1], vc.num_channels), jnp.float32)
  if isinstance(module, (clip.CLIPTextModel, clip.CLIPModel)):
    out["input_ids"] = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  return out


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(dict(tree)).items()}


def abstract_params(module) -> dict[str, jax.ShapeDtypeStruct]:
  """``{path: ShapeDtypeStruct}`` of the module's params (no computation)."""
  inputs = _dummy_inputs(module)
  variables = jax.eval_shape(lambda kw: module.init(jax.random.PRNGKey(0), **kw), inputs)
  return _flatten(flax.linen.unbox(variables["params"]))


def _is_lora(path: str) -> bool:
  return path.endswith("/lora_A") or path.endswith("/lora_B")


def _any_lora(module) -> bool:
  configs = ((module.vision_config, module.text_config) if isinstance(module, clip.CLIPModel)
             else (module.config,))
  return any(c.lora is not None for c in configs)


# -----------------------------------------------------------------------------
# HF -> ours
# -----------------------------------------------------------------------------

def clip_from_hf(state_dict: Mapping[str, Any], hf_config: Mapping[str, Any], *,
                 component: Optional[str] = None, lora_seed: int = 0, **overrides):
  """An HF CLIP checkpoint as ``(module, params)``.

  Args:
    state_dict: ``{HF key: array}`` (numpy, or anything ``np.asarray`` takes).
    hf_config: the parsed ``config.json``.
    component: None for the model the checkpoint holds; 'vision' or 'text' to
      take one tower (with its projection) out of a full CLIPModel checkpoint,
      e.g. the vision tower of openai/clip-vit-base-patch32.
    lora_seed: seed for fresh LoRA params when ``overrides`` sets ``lora``.
    **overrides: our own config fields (``dtype``, ``param_dtype``, ``remat``,
      ``lora``) applied to every tower.

  Returns:
    ``(module, params)``: a :class:`~t5video.models.clip.CLIPVisionModel`,
    :class:`~t5video.models.clip.CLIPTextModel` or
    :class:`~t5video.models.clip.CLIPModel`, and its nested dict of plain
    arrays in ``param_dtype``.

  Raises:
    ValueError: unknown model type, keys missing / unexpected (all listed), or
      shapes that do not fit the config.
  """
  kind = _kind(state_dict, hf_config)
  sd = dict(state_dict)
  if component is not None:
    if component not in ("vision", "text"):
      raise ValueError(f"component must be None, 'vision' or 'text', got {component!r}")
    if kind not in ("clip", component):
      raise ValueError(f"component={component!r} asked of a {kind!r} checkpoint")
    if kind == "clip":
      prefix, head = _TOWER[component]
      sd = {k: v for k, v in sd.items() if k.startswith(prefix + ".") or k == f"{head}.weight"}
    kind = component
  if kind in _TOWER:
    sd = _with_tower_prefix(sd, kind)
    # A projection when the weights have one or config.json names a ...WithProjection class
    # (then a missing projection is reported as a missing key rather than dropped).
    architectures = hf_config.get("architectures") or []
    with_projection = (f"{_TOWER[kind][1]}.weight" in sd
                       or (component is None and any(a.endswith("WithProjection") for a in architectures)))
    module = build_module(hf_config, kind, with_projection, **overrides)
  else:
    module = build_module(hf_config, kind, **overrides)

  expected = abstract_params(module)
  converted: dict[str, np.ndarray] = {}
  unexpected: list[str] = []
  for key, value in sd.items():
    if _IGNORED_HF_KEYS.match(key):
      continue
    hit = hf_key_to_path(key)
    if hit is None or hit[0] not in expected:
      unexpected.append(key)
      continue
    path, op = hit
    converted[path] = _to_ours(op, np.asarray(value))
  missing = sorted(path_to_hf_key(p)[0] if path_to_hf_key(p) else p
                   for p in expected if p not in converted and not _is_lora(p))
  if missing or unexpected:
    raise ValueError(
        f"CLIP state dict does not fit {type(module).__name__} built from its config.json:\n"
        f"  missing keys ({len(missing)}): {missing}\n  unexpected keys ({len(unexpected)}): {sorted(unexpected)}")
  bad = [f"{path_to_hf_key(p)[0]}: got {converted[p].shape} (ours), config wants {tuple(expected[p].shape)}"
         for p in converted if tuple(converted[p].shape) != tuple(expected[p].shape)]
  if bad:
    raise ValueError("CLIP state dict shapes do not fit its config.json:\n  " + "\n  ".join(bad))

  params = {p: np.asarray(v, dtype=expected[p].dtype) for p, v in converted.items()}
  if _any_lora(module):
    # LoRA params are not in HF checkpoints: initialise them (B = 0: the model is unchanged).
    inputs = {k: jnp.zeros(v.shape, v.dtype) for k, v in _dummy_inputs(module).items()}
    fresh = _flatten(flax.linen.unbox(
        jax.jit(module.init)(jax.random.PRNGKey(lora_seed), **inputs)["params"]))
    params.update({p: np.asarray(v) for p, v in fresh.items() if _is_lora(p)})
  return module, flax.traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in params.items()})


# -----------------------------------------------------------------------------
# ours -> HF
# -----------------------------------------------------------------------------

def _merge_lora(flat: dict[str, np.ndarray], lora_by_tower: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Folds ``kernel + (alpha / rank) A B`` into each LoRA'd kernel (HF has no LoRA params)."""
  out = {p: v for p, v in flat.items() if not _is_lora(p)}
  for p in flat:
    if not p.endswith("/lora_A"):
      continue
    base = p[: -len("/lora_A")]
    spec = lora_by_tower.get(base.split("/")[0])
    if spec is None:
      raise ValueError(f"params have {p} but the module's config has no LoRA spec for it")
    out[base + "/kernel"] = peft.merged_kernel(out[base + "/kernel"], flat[p], flat[base + "/lora_B"], spec)
  return out


def clip_to_hf(module, params: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Our ``(module, params)`` as an HF ``(state_dict, config dict)``.

  The exact inverse of :func:`clip_from_hf` (LoRA params, if any, are merged
  into their kernels). ``CLIPVisionModel`` / ``CLIPTextModel`` without a
  projection get transformers 5's unprefixed keys; the ``...WithProjection``
  classes and ``CLIPModel`` keep ``vision_model.`` / ``text_model.``.

  Args:
    module: a CLIPVisionModel, CLIPTextModel or CLIPModel.
    params: its params (``{'params': ...}`` and boxed leaves are accepted).

  Returns:
    ``(state_dict, hf_config)``: numpy arrays by HF key, and the config.json dict
    with ``architectures`` and ``model_type`` set.
  """
  if isinstance(params, Mapping) and set(params) == {"params"}:
    params = params["params"]
  flat = {p: np.asarray(v) for p, v in _flatten(flax.linen.unbox(params)).items()}
  if isinstance(module, clip.CLIPModel):
    lora = {"vision_model": module.vision_config.lora, "visual_projection": module.vision_config.lora,
            "text_model": module.text_config.lora, "text_projection": module.text_config.lora}
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip",
        "projection_dim": int(module.projection_dim),
        "logit_scale_init_value": float(module.logit_scale_init_value),
        "vision_config": module.vision_config.to_hf(), "text_config": module.text_config.to_hf(),
        "dtype": module.vision_config.to_hf()["dtype"],
    }
    strip = None
  elif isinstance(module, (clip.CLIPVisionModel, clip.CLIPTextModel)):
    vision = isinstance(module, clip.CLIPVisionModel)
    prefix, head = _TOWER["vision" if vision else "text"]
    lora = {prefix: module.config.lora, head: module.config.lora}
    name = ("CLIPVisionModel" if vision else "CLIPTextModel") + ("WithProjection" if module.with_projection else "")
    config = {"architectures": [name], **module.config.to_hf()}
    strip = None if module.with_projection else prefix + "."
  else:
    raise TypeError(f"clip_to_hf takes CLIPVisionModel, CLIPTextModel or CLIPModel, not {type(module).__name__}")
  flat = _merge_lora(flat, lora)

  expected = {p for p in abstract_params(module) if not _is_lora(p)}
  missing, unexpected = sorted(expected - set(flat)), sorted(set(flat) - expected)
  if missing or unexpected:
    raise ValueError(f"params do not fit {type(module).__name__}:\n  missing ({len(missing)}): {missing}\n"
                     f"  unexpected ({len(unexpected)}): {unexpected}")
  state_dict = {}
  for path, value in flat.items():
    hit = path_to_hf_key(path)
    if hit is None:
      raise ValueError(f"no HF name for param {path!r}")
    key, op = hit
    if strip is not None and key.startswith(strip):
      key = key[len(strip):]
    state_dict[key] = np.array(_to_hf(op, value), order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
  return state_dict, config

