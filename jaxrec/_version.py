"""The package version, in a module of its own so that any layer can read it without importing
the top-level package (which re-exports the Python API lazily)."""

__version__ = "0.1.0"
