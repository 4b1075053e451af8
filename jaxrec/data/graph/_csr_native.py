r"""The CPU custom call behind :func:`~jaxrec.data.graph.propagate_fixed`: a CSR sparse product.

XLA:CPU runs :func:`~jaxrec.data.graph.propagate` as a gather of the source rows times the
weights, written to an (E, d) message array, then a sorted scatter-add: two passes over E x d
floats. ``csr_propagate.cc`` (next to this file) accumulates each output row in registers
instead, edge by edge in the same order, as a product then a sum (no fused multiply-add), so its
result is BIT FOR BIT the XLA path's product (tests/test_graph_native.py; inside a bigger program
XLA may fold a neighbouring add into its scatter and round otherwise: it did in MGCN, not in
LightGCN, BM3, LATTICE, FREEDOM, LGMRec or MMGCN, whose gradients are bit for bit the same) in a
fraction of the time (``benchmarks/bench_graph_models.py --native``; figures in the closing note
of issue 14 and ``experiments/results/lfm2k_speed.json``).

The source is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``,
``g++`` or ``clang++``; ``-O3 -march=native``, falling back to no ``-march`` flag) against the
XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``), into
``$JAXREC_NATIVE_CACHE`` (else ``$XDG_CACHE_HOME/jaxrec/native``, else
``~/.cache/jaxrec/native``), one file per source, jaxlib version, compiler, flags and CPU
(a shared cache folder never hands a library built for another CPU's instructions); written to
a temporary name and renamed, so concurrent processes never load a half-written file. Where no
compiler works, or ``JAXREC_NATIVE_KERNELS=0``, the XLA path runs, after one warning (none when
disabled on purpose). The call is lowered for CPU only; other platforms run the XLA path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("csr_propagate.cc")
TARGET = "jaxrec_csr_propagate"
_SYMBOL = "JaxrecCsrPropagate"
_BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math")
_lock = threading.Lock()


def native_cache_dir() -> Path:
    """``$JAXREC_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/jaxrec/native``, else ``~/.cache/jaxrec/native``."""
    if os.environ.get("JAXREC_NATIVE_CACHE"):
        return Path(os.environ["JAXREC_NATIVE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrec" / "native"


def native_disabled() -> bool:
    """Whether ``JAXREC_NATIVE_KERNELS`` turns the custom call off (``0``, ``false``, ``no``, ``off``)."""
    return os.environ.get("JAXREC_NATIVE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_fingerprint() -> str:
    """The machine and, on Linux, the CPU's model and instruction flags (what -march=native reads)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            lines = [line for line in file if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        text += platform.processor()
    return text


def _library_path(compiler: str, flags: tuple[str, ...]) -> Path:
    import jaxlib

    digest = hashlib.blake2b(digest_size=12)
    for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), compiler.encode(), " ".join(flags).encode(),
                 _cpu_fingerprint().encode()):
        digest.update(part)
        digest.update(b"\0")
    return native_cache_dir() / f"csr_propagate-{digest.hexdigest()}.so"


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compiles the source to ``target`` (temporary file, then rename); the compiler's error text or None."""
    temporary = None
    try:  # an unwritable cache folder is a failed build (XLA's path runs), not an error of the run
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(handle)
        command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", temporary]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip()[-2000:] or f"exit status {done.returncode}"
        os.replace(temporary, target)
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


@functools.lru_cache(maxsize=1)
def _registered() -> bool:
    """Compiles (or finds) the library and registers its FFI target; False (with one warning) on failure."""
    compiler = _compiler()
    if compiler is None:
        warnings.warn("jaxrec: no C++ compiler found ($CXX, c++, g++, clang++); graph propagation runs "
                      "XLA's scatter path (1.1-2.8x slower per epoch for the graph models on CPU). "
                      "Set JAXREC_NATIVE_KERNELS=0 to silence.",
                      RuntimeWarning, stacklevel=3)
        return False
    errors = []
    for flags in (_BASE_FLAGS + ("-march=native",), _BASE_FLAGS):
        path = _library_path(compiler, flags)
        if not path.exists():
            error = _compile(compiler, flags, path)
            if error is not None:
                errors.append(f"{' '.join(flags)}: {error}")
                continue
        try:
            library = ctypes.CDLL(str(path))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, _SYMBOL)), platform="cpu")
            return True
        except (OSError, AttributeError) as error:
            errors.append(f"{path}: {error}")
    warnings.warn("jaxrec: could not build the CPU graph-propagation kernel "
                  f"({SOURCE.name}); XLA's scatter path runs instead. {' | '.join(errors)[-1500:]}",
                  RuntimeWarning, stacklevel=3)
    return False


def native_available() -> bool:
    """Whether :func:`csr_propagate` can run the compiled kernel (compiling it on first call)."""
    if native_disabled():
        return False
    with _lock:
        return _registered()


def csr_propagate(starts: jax.Array, cols: jax.Array, weights: jax.Array, embeddings: jax.Array) -> jax.Array:
    r""":math:`\hat A E` for a row-sorted edge list given by its CSR row starts, by the custom call.

    The same values, bit for bit, as :func:`~jaxrec.data.graph.propagate` with
    ``indices_are_sorted=True`` over the edges ``(rows, cols, weights)`` whose
    :func:`~jaxrec.data.graph.row_starts` are ``starts``, on valid edges (cols in ``[0, n)``);
    edges with a column outside ``[0, n)`` are dropped. CPU only: call it where
    :func:`native_available` and the computation runs on CPU
    (:func:`~jaxrec.data.graph.propagate_fixed` arranges both).

    Args:
      starts: (n + 1,) int32: row r's edges are ``starts[r]:starts[r + 1]``.
      cols: (E,) int32.
      weights: (E,) float32.
      embeddings: (n, d) float32.

    Returns:
      (n, d) float32.
    """
    indptr = jnp.asarray(starts, jnp.int32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(embeddings.shape, jnp.float32), vmap_method="sequential")
    return call(indptr, jnp.asarray(cols, jnp.int32), jnp.asarray(weights, jnp.float32),
                jnp.asarray(embeddings, jnp.float32))


def dtype_supported(embeddings) -> bool:
    """The kernel is float32 only."""
    return np.dtype(embeddings.dtype) == np.float32
