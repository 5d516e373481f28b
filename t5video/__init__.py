"""t5video: adapt image-language models (CLIP, T5) to video in JAX/Flax."""

import glob as _glob
import importlib.util as _importlib_util
import os as _os

__version__ = "0.1.0"


def _quiet_tpu_runtime_without_a_tpu() -> None:
  """With the ``tpu`` extra installed (libtpu, for ``t5video compile``) but no TPU attached,
  every ``import jax`` would first try the TPU backend, print libtpu's start-up errors and fall
  back to the CPU. Where no accelerator is attached, ask for the CPU directly (ahead-of-time
  compilation for TPU topologies works with it). ``JAX_PLATFORMS`` set by the user wins."""
  if _os.environ.get("JAX_PLATFORMS") or _importlib_util.find_spec("libtpu") is None:
    return
  if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*") or _glob.glob("/dev/nvidia[0-9]*"):
    return  # a TPU VM (or a GPU): let JAX find it
  _os.environ["JAX_PLATFORMS"] = "cpu"
  # Nothing may ask a cloud metadata server for the TPU's type (there is none here).
  _os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


_quiet_tpu_runtime_without_a_tpu()
