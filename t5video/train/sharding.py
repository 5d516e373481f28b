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

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


# ---------------------------------------------------------------------------
# Mesh construction and logical -> physical sharding helpers.
# ---------------------------------------------------------------------------

def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Resolves a ``(data, fsdp, tensor)`` shape in which one entry may be -1.

  Args:
    shape: three positive ints, or two plus one ``-1`` meaning "the rest".
    num_devices: how many devices the mesh must cover.

  Returns:
    The concrete shape, whose product is ``num_devices``.

  Raises:
    ValueError: wrong length, more than one -1, non-positive sizes, or a
      product that does not divide / equal ``num_devices``.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh.shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape may hold at most one -1, got {shape}")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh.shape entries must be positive or -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh.shape {shape}: {num_devices} devices are not divisible by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh.shape {shape} covers {int(np.prod(shape))} devices but there are {num_devices}")
  return shape  # type: ignore[return-value]


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ``('data', 'fsdp', 'tensor')`` mesh with Auto axis types.

  ``jax.make_mesh`` makes Explicit axes by default, which Linen's logical
  constraints reject; ``Mesh(...)`` defaults to Auto. The device order comes
  from ``mesh_utils.create_device_mesh`` (topology aware on TPU/GPU), falling
  back to the plain order of ``devices`` where it cannot place the shape.

  Args:
    shape: the (data, fsdp, tensor) sizes; one may be -1.
    devices: the devices to use (default: all of ``jax.devices()``).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except
    # CPU / unusual topologies: plain row-major order.
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_to_mesh_specs(logical_specs, rules):
  """Maps a tree of logical PartitionSpecs to mesh PartitionSpecs under ``rules``."""
  return nn.logical_to_mesh(logical_specs, rules)


def param_shardings(abstract_boxed_params, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly ``nn.Partitioned``-boxed) params.

  Args:
    abstract_boxed_params: what ``jax.eval_shape(init)`` returns, with the
      ``nn.with_logical_partitioning`` boxes still on.
    mesh: the device mesh.
    rules: logical -> mesh axis rules (e.g. ``merge_rules(config.sharding.rules)``).

  Returns:
    A tree matching ``nn.unbox(abstract_boxed_params)`` of ``NamedSharding``;
    unannotated leaves are replicated.
  """
  logical = nn.get_partition_spec(abstract_boxed_params)
  return nn.logical_to_mesh_sharding(logical, mesh, rules)


def batch_shardings(batch_spec: dict[str, tuple], mesh: Mesh, rules) -> dict[str, NamedSharding]:
  """NamedShardings for each batch key from its logical axes (see ``Task.batch_spec``)."""
  out = {}
  for key, axes in batch_spec.items():
    axes = tuple(axes)
    for a in axes:
      if a is not None and a not in ACTIVATION_AXES:
        raise ValueError(f"batch_spec[{key!r}] uses {a!r}, which is not an activation axis {ACTIVATION_AXES}")
    out[key] = NamedSharding(mesh, nn.logical_to_mesh_axes(axes, rules))
  return out


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      names.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      names.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      names.append(str(k.idx))
    else:
      names.append(str(k))
  return tuple(names)


def shardings_like_params(tree, params_abstract, params_shardings, mesh: Mesh):
  """Shardings for a tree whose leaves mirror params (e.g. optimizer moments).

  A leaf of ``tree`` takes the sharding of the parameter whose path is the
  longest suffix of the leaf's path and whose shape equals the leaf's shape
  (Adam's ``mu``/``nu``); other leaves (counts, Adafactor's factored row/column
  statistics) are replicated.
  """
  by_path = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params_abstract)[0]:
    by_path[_path_names(path)] = leaf.shape
  shard_by_path = {
      _path_names(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]}
  rep = replicated(mesh)

  def pick(path, leaf):
    names = _path_names(path)
    for start in range(len(names)):
      suffix = names[start:]
      if suffix in by_path and tuple(by_path[suffix]) == tuple(leaf.shape):
        return shard_by_path[suffix]
    return rep

  return jax.tree_util.tree_map_with_path(pick, tree)
