"""One thread for the LAPACK library behind jax's CPU linear algebra.

On CPU, jax runs ``jnp.linalg.qr``, ``eigh``, ``cholesky``, ``svd`` and triangular solves as calls
into scipy's LAPACK (``scipy.linalg.cython_lapack``, in the wheels an OpenBLAS build shipped in
``scipy.libs``). That library keeps its own thread pool, one thread per core, beside XLA's. Inside a
compiled step the two pools compete for the same cores, and OpenBLAS's threads spin while they wait.
For the small factorizations a step makes (the subspace model's QR of a (D, k) projection every
step), one thread is faster on a quiet machine and far faster on a busy one, where the waiting
threads turn a millisecond's QR into tens or hundreds. :func:`hold_lapack_threads` sets that pool
to one thread for the rest of the process, as ``OPENBLAS_NUM_THREADS=1`` would have done at start-up; the
arithmetic, and so every result, is the same. numpy's own BLAS (``numpy.libs``, the host-side
products) is left alone. A thread count the user set (``OPENBLAS_NUM_THREADS``,
``MKL_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``JAXREC_LAPACK_THREADS``) wins: it is applied as set.
"""

from __future__ import annotations

import os
from pathlib import Path

_USER_SETTINGS = ("JAXREC_LAPACK_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _scipy_blas(controller):
    """The BLAS/LAPACK libraries scipy loaded: those under scipy's package or its ``scipy.libs``
    folder. Where scipy links a shared system library instead (conda, distributions) nothing is
    under its folders and every loaded BLAS library is taken, since that one library serves both."""
    import scipy

    roots = {Path(scipy.__file__).resolve().parent, Path(scipy.__file__).resolve().parent.parent / "scipy.libs"}
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    own = [lib for lib in blas if any(root in Path(lib.filepath).resolve().parents for root in roots)]
    return own or blas


def hold_lapack_threads() -> int | None:
    """Set the thread pool of the LAPACK library jax's CPU kernels call to one thread (or to the
    user's setting); see the module docstring.

    Returns:
      The thread count now set, or None where nothing could be set (no threadpoolctl, no scipy,
      or no BLAS library found); the run goes on either way.
    """
    try:
        import scipy.linalg.cython_lapack  # noqa: F401  (loads the library, as jax's CPU backend does)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    threads = 1
    for name in _USER_SETTINGS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            threads = int(value)
            break
    libraries = _scipy_blas(ThreadpoolController())
    if not libraries:
        return None
    for library in libraries:
        library.set_num_threads(threads)
    return threads
