"""Test set-up: four fake CPU devices for the multi-device tests, and the shared-data path.

Compilation is most of the suite's time: the test processes compile with FAST_COMPILE
(tests/_xla_flags.py). An XLA_FLAGS already set in the environment wins.
"""

import os
from pathlib import Path

# Must happen before jax is imported anywhere in the test process.
# Subprocesses that want one device (servers, notebook kernels) set XLA_FLAGS to FAST_COMPILE.
from _xla_flags import FAST_COMPILE  # noqa: E402
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()
LFM2K = SHARED_DATA / "lfm2k"


@pytest.fixture(scope="session")
def lfm2k_path() -> Path:
    """Path to the real Last.fm 2K data; skips the test when the shared data is absent."""
    if not (LFM2K / "lfm2k.inter").exists():
        pytest.skip(f"real data not found at {LFM2K} (it lives in ../shared/data beside the project)")
    return LFM2K
