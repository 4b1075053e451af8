"""jaxrec: multimodal recommendation in JAX.

Subpackages, in the one-way order of their imports (each may import only those above it;
the exact table, checked by a test, is in docs/architecture.md): ``errors``, ``_checks`` ->
``data`` -> ``datasets`` -> ``features`` -> ``losses`` -> ``fusion`` -> ``models`` -> ``eval``
-> ``train`` -> ``serve`` -> ``cli``.
"""

__version__ = "0.1.0"
