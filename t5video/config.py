"""Run configs: loading, saving and the one locked schema every recipe follows.

A config is an ml_collections ``ConfigDict`` returned by ``get_config(arg)`` of a
file under ``configs/``. Every key a config may hold is declared by a schema:
the engine's sections (``trainer.default_config()``) plus the recipe's own
(``Task.default_config()``). :func:`validate` checks a config against it before
anything heavy starts; an unknown key, in the file or from a ``--config.*``
flag, is an error that names it and the nearest valid key. Sections whose keys
are free-form (e.g. a model's size overrides) are listed by the recipe's config
module in ``OPEN_SECTIONS``.

``<workdir>/config.json`` is the resolved config that trained (written once by
:func:`save_run_config`); ``eval``, ``caption`` and resuming read it back with
:func:`load_run_config`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from typing import Iterable, Optional

import ml_collections

from t5video.train import paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_dir() -> str:
  """Where recipe configs look for local HF checkpoints by default:
  ``$T5VIDEO_CHECKPOINTS``, else ``~/.cache/t5video/checkpoints``."""
  return os.environ.get("T5VIDEO_CHECKPOINTS",
                        os.path.join(os.path.expanduser("~"), ".cache", "t5video", "checkpoints"))


# =============================================================================
# Files
# =============================================================================

def _config_module(path: str):
  """The module of the config file ``path`` (relative: the current directory, then the repository)."""
  candidates = [path] if os.path.isabs(path) else [os.path.abspath(path), os.path.join(REPO, path)]
  found = next((c for c in candidates if os.path.isfile(c)), None)
  if found is None:
    raise FileNotFoundError(f"config file {path!r} not found (looked at {candidates})")
  module_spec = importlib.util.spec_from_file_location(f"t5video_config_{abs(hash(found))}", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``path/to/config.py[:arg]`` -> its ``get_config(arg)``, as ``--config`` would load it.

  A relative path is looked up in the current directory, then in the
  repository (next to the ``t5video`` package).
  """
  path, _, arg = spec.partition(":")
  module = _config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def config_slices(spec: str) -> tuple[str, ...]:
  """The accelerators a config file's docstring names for ``spec``'s arg, from its ``SLICES``:
  ``{arg: ('v4-8', 'v5litepod-8'), ...}`` ('' is the default arg), or ``()`` where it names none.
  ``t5video compile`` checks a config on them when no ``--topology`` is given."""
  path, _, arg = spec.partition(":")
  slices = getattr(_config_module(path), "SLICES", {})
  return tuple(slices.get(arg, slices.get("", ()))) if isinstance(slices, dict) else tuple(slices)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` trained with (``workdir/config.json``).

  Keys added to the recipe's schema after the run was saved get their defaults.

  Raises:
    FileNotFoundError: ``workdir`` holds no ``config.json``.
  """
  path = paths.join(workdir, "config.json")
  if not paths.exists(path):
    raise FileNotFoundError(f"{path}: not found; is {workdir!r} a t5video workdir? (or pass --config)")
  config = ml_collections.ConfigDict(json.loads(paths.read_text(path)))
  defaults = schema(config)
  if defaults is not None:
    fill_defaults(config, defaults)
  return config


def save_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``workdir/config.json`` (process 0), which ``eval``, ``caption`` and resuming read."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  paths.makedirs(workdir)
  paths.write_text(paths.join(workdir, "config.json"), to_json(config))


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


# =============================================================================
# Schema
# =============================================================================

def fill_defaults(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Adds the keys of ``defaults`` that ``config`` lacks (recursively), in place."""
  with config.unlocked():
    for key, value in defaults.items():
      if key not in config:
        config[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
        fill_defaults(config[key], value)


def type_ok(value, default) -> bool:
  """Whether ``value`` may replace ``default`` (bool, int, float, str, sequence; else anything)."""
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def _is_section(x) -> bool:
  return isinstance(x, (ml_collections.ConfigDict, dict))


def check_keys(given, known, *, prefix: str = "", open_sections: Iterable[str] = (),
               require_all: bool = True) -> None:
  """Checks ``given`` against the schema ``known`` (recursively).

  Args:
    given: a config section.
    known: the same section of the schema (defaults).
    prefix: the section's dotted name, for messages (``'train'``).
    open_sections: dotted names whose keys are free-form (not checked).
    require_all: a schema key missing from ``given`` is an error.

  Raises:
    ValueError: an unknown key (naming the nearest valid one), a missing key or
      a wrong type; the message names the key.
  """
  open_sections = tuple(open_sections)
  name = lambda k: f"{prefix}.{k}" if prefix else k  # noqa: E731
  for key in given.keys():
    if key not in known:
      hint = difflib.get_close_matches(key, list(known.keys()), n=1)
      raise ValueError(f"unknown config key {name(key)}"
                       + (f"; did you mean {name(hint[0])}?" if hint else
                          f"; known: {sorted(known.keys())}"))
  for key in known.keys():
    if key not in given:
      if require_all:
        raise ValueError(f"config key {name(key)} is missing")
      continue
    value, default = given[key], known[key]
    if _is_section(default):
      if name(key) in open_sections or not default:
        continue
      if not _is_section(value):
        raise ValueError(f"config key {name(key)} must be a section (dict), got {value!r}")
      check_keys(value, default, prefix=name(key), open_sections=open_sections,
                 require_all=require_all)
    elif not type_ok(value, default):
      raise ValueError(f"config key {name(key)} must be of type {type(default).__name__}, "
                       f"got {value!r} ({type(value).__name__})")


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raises ValueError naming ``dotted`` (e.g. from a ``--config.a.b=v`` flag) and the nearest
  valid key when ``config`` has no such key."""
  node, done = config, []
  for part in dotted.split("."):
    if not _is_section(node) or part not in node:
      known = list(node.keys()) if _is_section(node) else []
      hint = difflib.get_close_matches(part, known, n=1)
      name = ".".join(done + [part])
      raise ValueError(f"unknown config key {name}"
                       + (f"; did you mean {'.'.join(done + [hint[0]])}?" if hint else ""))
    node = node[part]
    done.append(part)


def schema(config: ml_collections.ConfigDict) -> Optional[ml_collections.ConfigDict]:
  """The full schema (defaults) of ``config.task``'s recipe, or None when it declares none."""
  from t5video.train import task as task_lib  # pylint: disable=g-import-not-at-top
  name = config.get("task", "")
  if not name:
    return None
  return task_lib.get_task(name).default_config()


def validate(config: ml_collections.ConfigDict) -> None:
  """The engine's checks (``trainer.validate_config``), then the recipe's schema, locked.

  Raises:
    ValueError: naming the offending key.
  """
  from t5video.train import task as task_lib  # pylint: disable=g-import-not-at-top
  from t5video.train import trainer  # pylint: disable=g-import-not-at-top
  trainer.validate_config(config)
  cls = task_lib.get_task(config.task)
  defaults = cls.default_config()
  if defaults is not None:
    check_keys(config, defaults, open_sections=cls.open_sections(), require_all=False)
    cls.validate_config(config)
