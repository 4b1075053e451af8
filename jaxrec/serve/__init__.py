"""jaxrec.serve."""
