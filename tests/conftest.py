"""Test-session setup: 8 fake CPU devices for sharding tests, absl flags parsed."""

import os

# Must happen before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import flags  # noqa: E402

# Grain's worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
