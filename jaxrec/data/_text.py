"""Raw item text: an id -> text table, aligned to a dataset's dense item ids.

The table is a delimited file whose first column is the item's original id (as in the
dataset's ``item_ids``, or the dense id when the dataset has no id map) and whose second is
the text, e.g. ``lfm2k_text.tsv``::

    artistID<TAB>text
    1<TAB>gothic,j-rock,japanese,visual kei

Encoding the aligned texts into a modality is :func:`jaxrec.features.text_modality`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data._io import read_table
from jaxrec.errors import DataError


def read_item_text(path, *, id_field: str | None = None, text_field: str | None = None, delimiter: str = "\t",
                   encoding: str = "utf-8") -> dict[str, str]:
    """Reads an item-text table into ``{original id (str): text}``.

    Args:
      path: the table file, with a header line.
      id_field, text_field: column names; default: the first and the second column.
      delimiter: field separator (the text itself must not contain it).
      encoding: text encoding.

    Returns:
      The texts by id, in file order; ids keep their spelling (``"007"`` stays ``"007"``).

    Raises:
      DataError: missing file or column, a truncated line, an empty id or an id listed twice
        (naming the lines).
    """
    table = read_table(path, delimiter=delimiter, encoding=encoding)
    if table.n_columns < 2 and (id_field is None or text_field is None):
        raise DataError("an item-text table needs an id and a text column", path=table.path, line=1,
                        found=list(table.header), expected="a header like 'itemID<TAB>text'")
    id_field = id_field or table.header[0]
    text_field = text_field or table.header[1]
    ids, texts = table.strings(id_field), table.strings(text_field)
    by_id: dict[str, str] = {}
    first_row: dict[str, int] = {}
    for row, (item, text) in enumerate(zip(ids, texts)):
        if not item:
            raise table.error(row, id_field, "empty item id", found="an empty field", expected="an item id")
        if item in by_id:
            raise table.error(row, id_field, "item listed twice", found=f"{item!r} again (first on line "
                              f"{table.line_of(first_row[item])})", expected="one row per item")
        by_id[item] = text
        first_row[item] = row
    return by_id


def align_item_text(dataset: MultimodalDataset, texts: Mapping[str, str] | Sequence[str | None]) -> list[str | None]:
    """The text of each dense item id ``0..n_items-1``, None where there is none (or it is blank).

    Args:
      dataset: gives the item count and, through ``item_ids``, each item's original id.
      texts: ``{original id: text}`` (keys compared as strings, so ``1`` and ``"1"`` match), or
        a sequence already in dense-id order, of length ``n_items``.

    Returns:
      A list of ``n_items`` strings or None.
    """
    if not isinstance(texts, Mapping):
        texts = list(texts)
        if len(texts) != dataset.n_items:
            raise DataError("item texts need one entry per item", field="texts", found=f"{len(texts)} entries",
                            expected=f"{dataset.n_items} (or a mapping from original item id to text)")
        return [text if text and text.strip() else None for text in texts]
    keys = np.arange(dataset.n_items) if dataset.item_ids is None else dataset.item_ids
    lookup = {str(key).strip(): text for key, text in texts.items()}
    aligned = []
    for key in keys.tolist():
        text = lookup.get(str(key))
        aligned.append(text if text and text.strip() else None)
    return aligned
