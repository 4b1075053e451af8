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

# A persistent compilation cache for the run: many tests compile programs that another test of
# the same process, the other xdist worker or a subprocess compiled before (the same models on
# the same small data), and compiling is most of the suite's time. The first process (the xdist
# controller, or pytest alone) makes one folder that the workers and every subprocess inherit
# through the environment, and removes it at the end; a cache folder already set in the
# environment is used as it is and kept. An entry that does not read back (a process killed
# while writing it) is a warning and a fresh compile in JAX.
_OWN_COMPILE_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_COMPILE_CACHE = tempfile.mkdtemp(prefix="jaxrec-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_COMPILE_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Free JAX's compiled programs and arrays while the session is still running.

    An xdist worker reports its end from this hook; pytest then runs gc.collect() five times at
    unconfigure, and execnet sends a worker still busy 5 s after the controller's shutdown request
    a SIGINT, which landed in JAX's gc callback as a PytestUnraisableExceptionWarning. Freeing
    the suite's programs here (the slow part of those collections) keeps the later ones short."""
    import gc
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()


def pytest_unconfigure(config):
    """Remove the compilation cache folder this process made (the workers never make one)."""
    if _OWN_COMPILE_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_COMPILE_CACHE, ignore_errors=True)
