"""The LAPACK library behind jax's CPU linear algebra is held to one thread by the trainer's set-up;
numpy's own BLAS is left as it was; a thread count the user set wins."""

import numpy as np
import pytest

import threadpoolctl  # core dependencies (threadpoolctl: pyproject; scipy: jax's own), never skipped

from jaxrec.train import config_from_dict, prepare_experiment
from jaxrec.train._lapack_threads import hold_lapack_threads


def _threads_by_file():
    import scipy.linalg.cython_lapack  # noqa: F401
    return {info["filepath"]: info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"}


def _scipy_files(files):
    return [f for f in files if "scipy.libs" in f or "/scipy/" in f]


def test_prepare_experiment_holds_scipys_lapack_to_one_thread_and_leaves_numpys(monkeypatch):
    for name in ("JAXREC_LAPACK_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = _threads_by_file()
    scipy_files = _scipy_files(before)
    if not scipy_files:
        pytest.skip("scipy links a shared system BLAS here; nothing of its own to tell apart")
    for f in scipy_files:  # start from two threads, so the set-up has something to change
        threadpoolctl.ThreadpoolController().select(filepath=f).limit(limits=2)
    numpy_before = {f: n for f, n in _threads_by_file().items() if f not in scipy_files}
    config = config_from_dict({"data": {"synthetic": dict(n_users=30, n_items=20, n_interactions=300, seed=1)},
                               "model": {"name": "bprmf", "args": {"embedding_size": 4}},
                               "train": {"epochs": 1, "batch_size": 64}})
    prepare_experiment(config)
    after = _threads_by_file()
    assert all(after[f] == 1 for f in scipy_files), after
    assert {f: after[f] for f in numpy_before} == numpy_before


def test_a_thread_count_the_user_set_wins_and_qr_is_unchanged(monkeypatch):
    import jax.numpy as jnp
    matrix = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    one = hold_lapack_threads()
    q_one = np.asarray(jnp.linalg.qr(matrix)[0])
    monkeypatch.setenv("JAXREC_LAPACK_THREADS", "2")
    try:
        assert hold_lapack_threads() == 2
        scipy_files = _scipy_files(_threads_by_file())
        if scipy_files:
            assert all(_threads_by_file()[f] == 2 for f in scipy_files)
        q_two = np.asarray(jnp.linalg.qr(matrix)[0])
    finally:
        monkeypatch.delenv("JAXREC_LAPACK_THREADS")
        assert hold_lapack_threads() == 1
    assert one == 1
    np.testing.assert_allclose(q_two, q_one, atol=1e-6)
    # and against numpy's own QR (an independent LAPACK call), up to the columns' signs
    q_np = np.linalg.qr(matrix.astype(np.float64))[0]
    np.testing.assert_allclose(np.abs(q_one), np.abs(q_np), atol=1e-5)
