"""jaxrec: multimodal recommendation in JAX.

Subpackages, in the one-way order of their imports (each may import only those above it):
``data`` -> ``features`` -> ``losses`` -> ``fusion`` -> ``models`` -> ``eval`` -> ``train`` ->
``serve`` -> ``cli``.
"""

__version__ = "0.1.0"
