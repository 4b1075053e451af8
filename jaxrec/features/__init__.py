"""jaxrec.features."""
