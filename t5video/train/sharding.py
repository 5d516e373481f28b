"""Mesh construction and the logical-axis rules that map model axes to it.

Every parameter and main activation in t5video carries *logical* axis names
(``embed``, ``mlp``, ``heads`` ... for params; ``act_batch``, ``act_len`` ...
for activations). The rules below map them onto the physical mesh axes
``('data', 'fsdp', 'tensor')``. A config may override them with
``config.sharding.rules`` (a list of ``(logical, mesh_axis_or_None)`` pairs).

Vocabulary (the only names models may use):
  params:      embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, patch,
               layers  (use None for an axis that is never sharded)
  activations: act_batch, act_frames, act_len, act_embed, act_heads, act_kv,
               act_mlp, act_vocab
"""

from __future__ import annotations

from typing import Sequence

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters: FSDP shards the embedding dimension of every large matrix; tensor
# parallelism shards heads / mlp / vocab. Activations: the batch goes over both
# data and fsdp (FSDP is data parallel for activations).
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    # parameter axes
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("joined_kv", "tensor"),
    ("vocab", "tensor"),
    ("relpos_buckets", None),
    ("patch", None),
    ("layers", None),
    # activation axes
    ("act_batch", ("data", "fsdp")),
    ("act_frames", None),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

PARAM_AXES = ("embed", "mlp", "heads", "kv", "joined_kv", "vocab",
              "relpos_buckets", "patch", "layers")
ACTIVATION_AXES = ("act_batch", "act_frames", "act_len", "act_embed",
                   "act_heads", "act_kv", "act_mlp", "act_vocab")


def merge_rules(overrides: Sequence[Sequence[object]] | None = None):
  """Returns DEFAULT_RULES with ``overrides`` replacing rules of the same name."""
  rules = dict(DEFAULT_RULES)
  for item in overrides or ():
    if len(item) != 2:
      raise ValueError(f"sharding rule must be a (logical_axis, mesh_axis) pair, got {item!r}")
    name, target = item
    if name not in rules:
      raise ValueError(f"unknown logical axis {name!r} in sharding rules; known: {sorted(rules)}")
    if isinstance(target, list):
      target = tuple(target)
    rules[name] = target
  return tuple(rules.items())
