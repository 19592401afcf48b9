"""Test setup: 4 fake CPU devices (set before jax is imported), no network, quiet TensorFlow."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache for the whole test session: most trainer tests share a program.
os.environ.setdefault("SQZ_TEST_XLA_CACHE", "/tmp/sqzexplore-test-xla-cache")
