"""Every recipe config that names hardware is checked on it: ``t5video compile`` for each slice in
the config's ``SLICES`` (what its docstring states), at the config's real model sizes and batch.

Each config's steps must fit the slice's HBM per chip (training and evaluation), and the same
config at 16 times its batch must be reported as not fitting, with advice. Compiling a real-size
training step takes minutes on this machine (CaptionT5's 2-4, R2-Tuning's with 2 micro-batches 7,
TACoS's 24): those checks are ``long`` (``T5VIDEO_LONG_TESTS=1``) and ``docs/tpu.md`` holds their
figures and commands. The default suite compiles what takes under a minute: R2-Tuning's
QVHighlights evaluation program on its v5e chip, and its training step at 16 times the batch,
which XLA refuses early for lack of HBM.
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
    yield pytest.param(spec, name, id=f"{spec}@{name}")


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


@pytest.mark.long
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


def test_r2tuning_qvhighlights_evaluates_on_its_chip_and_oversize_training_is_refused_with_advice(tmp_path):
  spec = "configs/r2tuning/qvhighlights.py"
  (name,) = config_lib.config_slices(spec)
  records, out = _compile(tmp_path, spec, name, "--steps=eval")
  assert [r["step"] for r in records] == ["eval"] and records[0]["fits"], out
  assert 0 < records[0]["need_per_chip_bytes"] < records[0]["hbm_per_chip_bytes"]
  config = config_lib.load_config_file(spec)
  (big,), out = _compile(tmp_path, spec, name, f"--config.train.batch_size={16 * config.train.batch_size}",
                         "--steps=train")
  assert not big["fits"] and big["need_per_chip_bytes"] >= big["hbm_per_chip_bytes"], out
  assert "micro_batches" in big["advice"] and "batch_size" in big["advice"]
  assert "does not fit" in out
