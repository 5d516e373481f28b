"""The contract between a recipe and the trainer.

A recipe (CaptionT5, ViFi-CLIP, ...) subclasses :class:`Task` and says *what*
is trained: how params are initialised, what a batch looks like and how it is
sharded, where the data comes from, the loss, and how to evaluate. The trainer
(:mod:`t5video.train.trainer`) decides *how*: mesh, sharding, optimizer,
checkpoints and the loop.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable, Iterator

import jax

from t5video.train import checkpoint as checkpoint_lib

Params = Any
Batch = dict[str, Any]

# Short names for the recipes; any 'package.module:ClassName' string works too.
TASKS: dict[str, str] = {
    "captiont5": "t5video.recipes.captiont5.task:CaptionT5Task",
    "vificlip": "t5video.recipes.vificlip.task:ViFiCLIPTask",
    "r2tuning": "t5video.recipes.r2tuning.task:R2TuningTask",
    "distill": "t5video.recipes.distill.task:DistillTask",
}


@dataclasses.dataclass(frozen=True)
class EvalStep:
  """One of a recipe's evaluation programs, for ``t5video compile``.

  ``fn(params, batch)`` is pure and jittable and is what evaluation runs on one
  device of each host (each host scores its share of the examples with the
  parameters gathered to it: :mod:`t5video.evaluate.hosts`), on batches of
  ``batch_size`` examples shaped as ``example_shapes``.
  """
  fn: Callable
  example_shapes: dict
  batch_size: int
  what: str


class Task(abc.ABC):
  """What a recipe gives the trainer. Constructed as ``Task(config)``, or
  ``Task(config, shapes_only=True)`` for its shapes alone (``t5video compile``).

  Subclasses must implement the abstract ``init_params``, ``batch_spec``,
  ``example_shapes``, ``train_loader`` and ``loss_fn``; ``load_pretrained``, ``evaluate`` and ``flops_per_example``
  have working defaults.
  """

  def __init__(self, config, *, shapes_only: bool = False):
    self.config = config
    # Built for its shapes alone (``t5video compile``): the Task reads nothing but the config and
    # the small files it names (HF config.json files, a tokenizer file); what only the data could
    # tell (a tokenizer still to be trained on it, its class names) comes from the config's sizes.
    # init_params, batch_spec, example_shapes, loss_fn and trainable must work; loaders need not.
    self.shapes_only = shapes_only
    # The run directory; the trainer sets it right after construction, before
    # ``train_loader`` / ``evaluate`` are called (None outside a run).
    self.workdir: str | None = None

  # The recipe's config module: ``base_config()`` (the locked schema), ``validate(config)``
  # (value checks) and ``OPEN_SECTIONS`` (dotted names of free-form sections). None: no schema.
  CONFIG_MODULE: Any = None

  @classmethod
  def default_config(cls):
    """Every key of this recipe's configs with its default (the locked schema), or None.

    :func:`t5video.config.validate` rejects a key that is not here, naming the
    nearest one; configs saved before a key existed get its default.
    """
    return cls.CONFIG_MODULE.base_config() if cls.CONFIG_MODULE else None

  @classmethod
  def open_sections(cls) -> tuple[str, ...]:
    """Config sections whose keys are free-form (not checked against the schema)."""
    return tuple(getattr(cls.CONFIG_MODULE, "OPEN_SECTIONS", ()))

  @classmethod
  def validate_config(cls, config) -> None:
    """Value checks of the recipe's keys beyond the schema's types (raise ValueError)."""
    if cls.CONFIG_MODULE is not None:
      cls.CONFIG_MODULE.validate(config)

  @classmethod
  def prepare(cls, config, workdir: str):
    """Returns the config that trains, after writing the run's assets into ``workdir`` once.

    Called by :func:`t5video.train.stages.train` before ``config.json`` is
    saved: derived values (a tokenizer trained on the data, a class list, the
    earlier stages in ``config.stages``) are fixed here, so that the Task
    built later from ``config.json`` reads nothing else. Default: unchanged.
    """
    del workdir
    return config

  @classmethod
  def prepare_eval_data(cls, config) -> None:
    """Makes the evaluation data ``config`` names available before a finished run is
    evaluated on it (``t5video eval --config.data...``). Default: nothing to do."""
    del config

  def trainable(self) -> str:
    """The regex of the params that train ('' = all); default ``optim.trainable``.
    A recipe whose parameter-efficient method decides the set derives it here."""
    return self.config.optim.trainable

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Params:
    """Returns freshly initialised params, boxed with ``nn.with_logical_partitioning``.

    Called under ``jax.eval_shape`` (to read shapes and logical axes) and
    inside ``jax.jit(..., out_shardings=...)``; it must be pure.
    """

  @abc.abstractmethod
  def batch_spec(self) -> dict[str, tuple]:
    """Logical axes of every batch key, the first always ``'act_batch'``.

    Example: ``{'frames': ('act_batch', 'act_frames', None, None, None),
    'labels': ('act_batch', 'act_len')}``.
    """

  @abc.abstractmethod
  def example_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape (without the batch axis) and dtype of one example of every batch key.

    From the config alone (no data read): the trainer and ``t5video compile``
    build and check the step from these before any batch exists, and every
    batch the loader yields must match them. The keys are ``batch_spec``'s.
    Example: ``{'frames': ShapeDtypeStruct((8, 224, 224, 3), uint8), ...}``.
    """

  @abc.abstractmethod
  def train_loader(self, *, seed: int, process_index: int, process_count: int,
                   batch_size: int) -> Iterator[Batch]:
    """An endless iterator of this process's batches (``batch_size`` rows each).

    It must have ``get_state()`` / ``set_state()`` (a Grain ``DatasetIterator``
    or ``DataLoader`` iterator) so that checkpoints resume mid-epoch, and
    yield dicts of numpy arrays with exactly the keys of ``batch_spec``.
    """

  @abc.abstractmethod
  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(scalar loss, {name: scalar metric})``; pure and jittable.

    The loss should be a mean over the examples of ``batch``: the trainer
    averages it over micro-batches.
    """

  def has_pretrained(self, init_from) -> bool:
    """Whether a fresh run starts from pretrained weights (then :meth:`load_pretrained` runs).

    Default: when ``init_from.path`` is set. Recipes whose own config names
    weights (an HF directory for one tower, an earlier stage) say so here.
    """
    return bool(init_from.path)

  def load_pretrained(self, params: Params, init_from) -> Params:
    """Merges pretrained params into ``params`` (unboxed, already sharded).

    Default: restore params from the Orbax checkpoint at ``init_from.path``
    (a t5video workdir or checkpoint directory, or a bare PyTree checkpoint)
    and take every leaf whose '/'-joined path matches ``init_from.regex``.
    Recipes override this to read converted Hugging Face weights.
    """
    return checkpoint_lib.load_params_by_regex(params, init_from.path, init_from.get("regex", ".*"))

  def evaluate(self, params: Params, *, step: int, workdir: str) -> dict[str, float]:
    """Host-side evaluation; returns scalar metrics. Default: no evaluation."""
    del params, step, workdir
    return {}

  def eval_steps(self) -> dict[str, EvalStep]:
    """The recipe's evaluation programs by name (e.g. ``{'eval': beam search}``), built from the
    config alone as :meth:`example_shapes` is; ``t5video compile`` compiles each. Default: none."""
    return {}

  def flops_per_example(self) -> float | None:
    """Training FLOPs (forward + backward) per example, or None for XLA's estimate."""
    return None


def get_task(name: str) -> type[Task]:
  """Resolves a short name from :data:`TASKS` or a ``'module:ClassName'`` string."""
  target = TASKS.get(name, name)
  if ":" not in target:
    raise ValueError(f"unknown task {name!r}: use one of {sorted(TASKS)} or 'package.module:ClassName'")
  module_name, class_name = target.split(":", 1)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"task {name!r}: cannot import module {module_name!r}: {e}") from e
  cls = getattr(module, class_name, None)
  if cls is None:
    raise ValueError(f"task {name!r}: module {module_name!r} has no class {class_name!r}")
  if not (isinstance(cls, type) and issubclass(cls, Task)):
    raise ValueError(f"task {name!r}: {target} is not a subclass of t5video.train.task.Task")
  return cls
