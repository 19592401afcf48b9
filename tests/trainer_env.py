"""The environment of a trainer started in a subprocess by a test."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_FLAG = "--xla_force_host_platform_device_count"


def trainer_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """os.environ with the repository on the path, unbuffered output and `devices` fake CPU
    devices. One by default: the kill / SIGTERM / resume chains compare runs of one device count
    with each other, multi-device training is tested in the pytest process (4 fake devices,
    conftest.py) and across processes (test_distributed.py), and on the 2-core CI machine one
    device trains the tiny runs about twice as fast as four."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    flags.append(f"{DEVICE_FLAG}={devices}")
    return dict(
        os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO, XLA_FLAGS=" ".join(flags), **extra
    )
