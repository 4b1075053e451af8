"""jaxrec.datasets: what is specific to one dataset, on top of the generic readers of
:mod:`jaxrec.data`.

- :mod:`jaxrec.datasets.lfm2k`: Last.fm 2K's artist tags as a knowledge graph
  (``item --tagged--> tag``) for KG models such as CKE (``model.args.tag_kg``).
"""

from jaxrec.datasets.lfm2k import add_tag_kg as add_tag_kg
from jaxrec.datasets.lfm2k import tag_kg_triples as tag_kg_triples
