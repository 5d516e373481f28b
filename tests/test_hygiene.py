"""Every module imports, every config loads, the CLI answers --help, pins hold."""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import t5video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
  out = []
  for info in pkgutil.walk_packages(t5video.__path__, "t5video."):
    out.append(info.name)
  return sorted(out)


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name):
  importlib.import_module(name)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))),
                         ids=os.path.basename)
def test_benchmark_compiles(path):
  """Benchmark scripts are run by hand, not imported by the package: at least they must compile."""
  compile(open(path).read(), path, "exec")


def _configs():
  return sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", _configs(), ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads(path):
  """Each config's get_config() builds, validates, and its docstring holds its command."""
  from ml_collections import config_flags  # noqa: F401
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  assert config.task
  rel = os.path.relpath(path, ROOT)
  assert rel in (mod.__doc__ or ""), f"{rel}: its docstring must hold the command that runs it"
  from t5video.train import trainer
  trainer.validate_config(config)


def test_pins_match_installed():
  """The installed stack equals the exact pins of pyproject.toml."""
  text = open(os.path.join(ROOT, "pyproject.toml")).read()
  deps = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
  pins = re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', deps)
  assert len(pins) >= 10
  for name, version in pins:
    assert importlib.metadata.version(name) == version, f"{name}: installed != pinned {version}"


@pytest.mark.parametrize("command", ["", "train", "eval", "caption", "zero-shot", "data", "standins",
                                     "convert", "export-hf", "report", "extract-features"])
def test_cli_help(command):
  args = [sys.executable, "-m", "t5video.cli"] + ([command] if command else []) + ["--help"]
  out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "usage" in (out.stdout + out.stderr).lower() or "t5video" in out.stdout
