"""Every recipe config that names hardware is checked on it: ``t5video compile`` for each slice in
the config's ``SLICES`` (what its docstring states), at the config's real model sizes and batch.

Each config's steps must fit the slice's HBM per chip (training and evaluation), and the same
config at 16 times its batch must be reported as not fitting, with advice. Compiling a real-size
step takes minutes on this machine: the R2-Tuning configs (a small trained block over cached
features) run in the default suite, the CLIP and T5 recipes are ``long``
(``T5VIDEO_LONG_TESTS=1``); ``docs/tpu.md`` holds their figures and the command that makes them.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from t5video import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("libtpu", reason="compiling for TPUs needs the tpu extra (libtpu)")
XDIST_SPLIT = True  # independent, heavy: spread over both workers

# config spec (path:arg) -> is it cheap enough for the default suite
CHEAP = ("configs/r2tuning/",)


def _configs() -> list[tuple[str, str]]:
  """(spec, slice) for every config file with SLICES and each arg it lists."""
  out = []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.py"))):
    rel = os.path.relpath(path, REPO)
    module = config_lib._config_module(rel)  # pylint: disable=protected-access
    for arg, slices in sorted(getattr(module, "SLICES", {}).items()):
      for name in slices:
        out.append((f"{rel}:{arg}" if arg else rel, name))
  return out


def _params():
  for spec, name in _configs():
    marks = () if spec.startswith(CHEAP) else (pytest.mark.long,)
    yield pytest.param(spec, name, marks=marks, id=f"{spec}@{name}")


def _compile(tmp_path, spec, name, *overrides):
  out_json = tmp_path / f"{name}.json"
  env = dict(os.environ)
  env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # what the TPU runs, not the tests' cheap pipeline
  env.pop("JAX_PLATFORMS", None)
  run = subprocess.run([sys.executable, "-m", "t5video.cli", "compile", "--config", spec, "--topology", name,
                        *overrides, "--json", str(out_json)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1800)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  return json.loads(out_json.read_text()), run.stdout


def test_every_config_with_hardware_names_slices_that_exist():
  from t5video.train import topology  # pylint: disable=g-import-not-at-top
  pairs = _configs()
  assert len({spec for spec, _ in pairs}) >= 12
  for spec, name in pairs:
    topology.parse(name)  # raises on a name that is no TPU slice
    config_lib.load_config_file(spec)


@pytest.mark.parametrize("spec,name", list(_params()))
def test_config_fits_the_slice_it_names(tmp_path, spec, name):
  records, out = _compile(tmp_path, spec, name)
  assert {r["step"] for r in records} >= {"train", "eval"}, out
  for r in records:
    assert r["fits"], f"{r['stage']} {r['step']} on {name}: {r['need_per_chip_bytes'] / 2**30:.2f} GiB per chip " \
                      f"of {r['hbm_per_chip_bytes'] / 2**30:.0f}\n{out}"
  train = [r for r in records if r["step"] == "train"]
  config = config_lib.load_config_file(spec)
  big = f"--config.train.batch_size={16 * config.train.batch_size}"
  oversize, out = _compile(tmp_path, spec, name, big, "--steps=train")
  last = [r for r in oversize if r["step"] == "train"][-1]
  assert not last["fits"] and "batch" in last["advice"], out
  assert last["need_per_chip_bytes"] > train[-1]["need_per_chip_bytes"]
