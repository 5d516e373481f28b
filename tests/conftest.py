"""Test-session setup: 8 fake CPU devices for sharding tests, absl flags parsed.

Tests marked ``long`` (minutes each, claims already covered at a smaller scale
by a default test) run only with ``T5VIDEO_LONG_TESTS=1``, so that the default
suite (``bash launch/local.sh test``, what CI runs) stays within its budget.
"""

import os
import tempfile

# Must happen before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Compiling, not running, is what most tests spend their time on: XLA's cheap pipeline
# (about 1.5-3x faster compiles; tiny programs run about as fast) and a persistent
# compilation cache shared by the xdist workers and by later runs (a program compiled by one
# test is read back by the next that builds the same one). Set either variable to override.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"t5video-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from absl import flags  # noqa: E402

# Grain's worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

# gcsfs >= 2026.10 (read when gcsfs is imported) asks a gRPC API for each bucket's type; the
# local GCS emulator does not speak it and each lookup waits 60 s. See tests/gcs_emulator.py.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator():
  """A local GCS emulator with bucket ``gs://t5video-test``; this process's clients point at it."""
  import gcs_emulator as emulator  # pylint: disable=g-import-not-at-top
  yield from emulator.session_fixture()


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the groups
def pytest_collection_modifyitems(config, items):
  # xdist --dist loadgroup: one group per test file (its module fixtures built once, as with
  # loadfile), except files that set XDIST_SPLIT = True, whose tests go to any free worker.
  if config.getoption("dist", "no") == "loadgroup":
    for item in items:
      module = getattr(item, "module", None)
      if module is not None and not getattr(module, "XDIST_SPLIT", False):
        item.add_marker(pytest.mark.xdist_group(module.__name__))
  if os.environ.get("T5VIDEO_LONG_TESTS", "") not in ("", "0"):
    return
  skip = pytest.mark.skip(reason="a long test: T5VIDEO_LONG_TESTS=1 runs it")
  for item in items:
    if "long" in item.keywords:
      item.add_marker(skip)
