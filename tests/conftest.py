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


# The slowest test files, slowest first (one xdist worker's seconds on 2 CPU cores, 2026-12-06).
# xdist's loadfile scheduler (with --no-loadscope-reorder, pyproject's addopts) hands files out in
# collection order, one at a time as a worker frees up. Its default order, most tests first, put
# the files of few heavy tests (meshes, processes, servers) last, where one worker ran them alone
# while the other idled (a 16-minute -n 3 run held ~600 s of test time per worker). Heaviest first,
# the workers end together.
_SLOWEST_FILES = (
    "test_model_contract.py", "test_train_batched_search.py", "test_multiprocess.py", "test_train_mesh.py",
    "test_serving_audit_api.py", "test_model_fusion.py", "test_model_lattice.py", "test_notebooks.py",
    "test_device_sampler.py", "test_model_mmgcn.py", "test_serve_http.py", "test_model_vbpr.py",
    "test_train_epoch_update.py", "test_model_contrastive.py", "test_model_lgmrec.py",
    "test_missing_modality_runs.py", "test_model_freedom.py", "test_train_search.py", "test_model_mgcn.py",
    "test_serve_api.py",
)


def pytest_collection_modifyitems(config, items):
    """The slowest files first (:data:`_SLOWEST_FILES`), the others after them in their own order;
    the tests of a file keep theirs (a stable sort by file)."""
    rank = {name: index for index, name in enumerate(_SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
