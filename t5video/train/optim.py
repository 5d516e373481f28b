"""Optimizers: AdamW / Adafactor with schedules, clipping, masks, groups and freezing.

Everything is keyed on the '/'-joined path of each parameter
(``encoder/layers_0/attention/q/kernel``):

* ``optim.freeze`` (regex): matching params do not train; ``optim.trainable``
  (regex, '' = all): only matching params train. Frozen params are routed to
  ``optax.set_to_zero()`` through ``optax.multi_transform``, so the optimizer
  keeps **no state** for them (their moments are ``MaskedNode``).
* ``optim.param_groups``: ``[(regex, lr_multiplier), ...]``; the first matching
  regex sets a parameter's learning-rate multiplier (default 1.0). Each group
  gets its own copy of the optimizer with a scaled schedule.
* Weight decay applies to matrices only: 1-D params, biases and norm scales
  are excluded.
* Global-norm clipping runs over the trainable gradients only, across groups.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

FROZEN = "frozen"
SCHEDULES = ("cosine", "rsqrt", "constant", "linear")
OPTIMIZERS = ("adamw", "adafactor")

# Parameter names that never get weight decay, whatever their rank.
_NO_DECAY = re.compile(r"(^|/)(bias|scale|[^/]*norm[^/]*|ln[^/]*|layer_norm[^/]*)(/|$)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer's hyper-parameters (a typed copy of ``config.optim``).

  Attributes:
    name: 'adamw' or 'adafactor'.
    learning_rate: the peak learning rate.
    schedule: 'cosine' (to 0 at the last step), 'rsqrt' (``lr * sqrt(warmup /
      max(step, warmup))``, T5's), 'constant' or 'linear' (to 0).
    warmup_steps: linear warm-up from 0 over this many steps.
    weight_decay: decoupled decay (AdamW) / ``weight_decay_rate`` (Adafactor).
    clip_norm: global-norm clipping threshold; 0 disables.
    b1, b2, eps: Adam moments. For Adafactor ``b1 > 0`` turns on momentum and
      ``b2`` is unused (Adafactor's own decay schedule is used).
    param_groups: ``((regex, lr_multiplier), ...)``.
    freeze: regex of params that do not train ('' = none).
    trainable: regex of the only params that train ('' = all).
  """
  name: str = "adamw"
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  param_groups: tuple[tuple[str, float], ...] = ()
  freeze: str = ""
  trainable: str = ""

  @classmethod
  def from_config(cls, optim) -> "OptimConfig":
    """Builds from an ml_collections ``config.optim`` section (validated)."""
    groups = tuple((str(r), float(m)) for r, m in (optim.get("param_groups") or ()))
    return cls(
        name=str(optim.name), learning_rate=float(optim.learning_rate),
        schedule=str(optim.schedule), warmup_steps=int(optim.warmup_steps),
        weight_decay=float(optim.weight_decay), clip_norm=float(optim.clip_norm),
        b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
        param_groups=groups, freeze=str(optim.get("freeze", "") or ""),
        trainable=str(optim.get("trainable", "") or ""))

  def validate(self) -> None:
    """Raises ValueError naming the offending ``optim.*`` key."""
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if not self.learning_rate > 0:
      raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.weight_decay < 0:
      raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
    if self.clip_norm < 0:
      raise ValueError(f"optim.clip_norm must be >= 0 (0 disables), got {self.clip_norm}")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      raise ValueError(f"optim.b1 and optim.b2 must lie in [0, 1), got {self.b1}, {self.b2}")
    if not self.eps > 0:
      raise ValueError(f"optim.eps must be > 0, got {self.eps}")
    for key, pattern in (("optim.freeze", self.freeze), ("optim.trainable", self.trainable)):
      _compile(pattern, key)
    for i, group in enumerate(self.param_groups):
      if len(group) != 2:
        raise ValueError(f"optim.param_groups[{i}] must be (regex, lr_multiplier), got {group!r}")
      _compile(group[0], f"optim.param_groups[{i}]")
      if group[1] < 0:
        raise ValueError(f"optim.param_groups[{i}] multiplier must be >= 0, got {group[1]}")


def _compile(pattern: str, key: str):
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{key}: invalid regex {pattern!r}: {e}") from e


def path_str(path) -> str:
  """'/'-joined names of a ``tree_flatten_with_path`` key path."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def make_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 then ``cfg.schedule``; returns ``step -> lr``."""
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(num_steps - warm, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(lr, 0.0, decay_steps)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif cfg.schedule == "rsqrt":
    base = max(warm, 1)

    def after(count):
      # count counts from the end of warm-up; T5: lr * sqrt(warmup / step).
      return lr * jnp.sqrt(base / jnp.maximum(count + warm, base).astype(jnp.float32))
  else:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def param_labels(params, cfg: OptimConfig):
  """Labels each param 'frozen' or 'group_<i>' / 'group_default'.

  Raises:
    ValueError: if no parameter is trainable (a misspelt regex, usually).
  """
  freeze = re.compile(cfg.freeze) if cfg.freeze else None
  trainable = re.compile(cfg.trainable) if cfg.trainable else None
  groups = [(re.compile(r), i) for i, (r, _) in enumerate(cfg.param_groups)]

  def label(path, _):
    name = path_str(path)
    if freeze is not None and freeze.search(name):
      return FROZEN
    if trainable is not None and not trainable.search(name):
      return FROZEN
    for rx, i in groups:
      if rx.search(name):
        return f"group_{i}"
    return "group_default"

  labels = jax.tree_util.tree_map_with_path(label, params)
  if all(l == FROZEN for l in jax.tree_util.tree_leaves(labels)):
    raise ValueError(
        f"no parameter is trainable with optim.freeze={cfg.freeze!r} and "
        f"optim.trainable={cfg.trainable!r}")
  return labels


def decay_mask(params):
  """True where weight decay applies: rank >= 2 and not a bias / norm / scale."""
  def mask(path, leaf):
    if not hasattr(leaf, "ndim"):  # optax.MaskedNode inside multi_transform
      return leaf
    return bool(leaf.ndim >= 2 and not _NO_DECAY.search(path_str(path)))
  return jax.tree_util.tree_map_with_path(mask, params)


def _base_optimizer(cfg: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.name == "adafactor":
    return optax.adafactor(
        lr, momentum=cfg.b1 if cfg.b1 > 0 else None,
        weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask,
        # T5's recipe: update clipping inside Adafactor, parameter-scaled steps.
        clipping_threshold=1.0, multiply_by_parameter_scale=True)
  raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")


def make_optimizer(params, cfg: OptimConfig, num_steps: int):
  """Returns ``(tx, labels, schedule)`` for the given (abstract or real) params.

  ``tx`` is ``chain(zero frozen grads, clip global norm, multi_transform(groups))``:
  zeroing first keeps frozen gradients out of the clipping norm; the group
  transform holds moments only for the params in each trainable group.
  """
  cfg.validate()
  labels = param_labels(params, cfg)
  schedule = make_schedule(cfg, num_steps)
  used = sorted(set(jax.tree_util.tree_leaves(labels)))
  transforms: dict[str, optax.GradientTransformation] = {}
  for name in used:
    if name == FROZEN:
      transforms[name] = optax.set_to_zero()
      continue
    mult = 1.0 if name == "group_default" else cfg.param_groups[int(name.split("_")[1])][1]
    group_lr = schedule if mult == 1.0 else (lambda s, m=mult: m * schedule(s))
    transforms[name] = _base_optimizer(cfg, group_lr)
  train_or_frozen = jax.tree_util.tree_map(lambda l: FROZEN if l == FROZEN else "train", labels)
  parts = [optax.multi_transform({FROZEN: optax.set_to_zero(), "train": optax.identity()},
                                 train_or_frozen)]
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts), labels, schedule


def count_params(params, labels=None) -> tuple[int, int]:
  """Returns ``(total, trainable)`` element counts."""
  leaves = jax.tree_util.tree_leaves(params)
  total = int(sum(np.prod(x.shape) for x in leaves))
  if labels is None:
    return total, total
  trainable = int(sum(np.prod(x.shape) for x, l in zip(leaves, jax.tree_util.tree_leaves(labels))
                      if l != FROZEN))
  return total, trainable


def cast_floating(tree, dtype):
  """Casts floating leaves of ``tree`` to ``dtype`` (integers untouched)."""
  def cast(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x
  return jax.tree_util.tree_map(cast, tree)

