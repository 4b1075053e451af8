"""jaxrec.cli."""
