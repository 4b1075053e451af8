"""jaxrec.fusion."""
