"""jaxrec.losses."""
