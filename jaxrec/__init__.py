"""jaxrec: multimodal recommendation in JAX.

Subpackages, in the one-way order of their imports (each may import only those above it;
the exact table, checked by a test, is in docs/architecture.md): ``errors``, ``_checks`` ->
``data`` -> ``datasets`` -> ``features`` -> ``losses`` -> ``fusion`` -> ``models`` -> ``eval``
-> ``train`` -> ``serve`` -> ``cli``.

The Python API -- ``jaxrec.fit(config, ...)``, ``jaxrec.load_run(workdir)`` and the ``Run``
they return -- lives in ``jaxrec.api`` and is imported on first use, so ``import jaxrec``
stays light (no JAX until a model is trained).
"""

from jaxrec._version import __version__ as __version__

_API_NAMES = ("fit", "load_run", "make_config", "Run")
__all__ = ["__version__", *_API_NAMES]


def __getattr__(name: str):
    if name in _API_NAMES:
        from jaxrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxrec' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API_NAMES])
