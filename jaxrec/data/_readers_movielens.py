"""MovieLens as GroupLens distributes it: ML-100K, ML-1M (also ML-10M) and ML-latest (also 20M/25M/32M).

=============  ==================================  ======================================
variant        ratings                             movies (-> a ``"genre"`` modality)
=============  ==================================  ======================================
``ml-100k``    ``u.data``: tab, user item rating   ``u.item``: ``|``-separated, Latin-1,
               timestamp, no header                19 genre flags (names from ``u.genre``)
``ml-1m``      ``ratings.dat``: ``::``-separated   ``movies.dat``: ``id::title::genres``,
                                                   Latin-1, genres ``|``-separated
``ml-latest``  ``ratings.csv``: header             ``movies.csv``: quoted titles, genres
               ``userId,movieId,rating,timestamp`` ``|``-separated
=============  ==================================  ======================================

Users and items are the ones that rated / were rated, in increasing original id order; the
original ids are kept in ``user_ids`` / ``item_ids``. Ratings and timestamps are kept; no split
is made (``metadata["needs_split"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxrec.data._dataset import Interactions, Modality, MultimodalDataset
from jaxrec.data._io import FLOAT, ID, INT, TIME, deduplicate, dense_ids, frozen, read_table, require_file, \
    require_folder
from jaxrec.errors import DataError

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
NO_GENRE = "(no genres listed)"

# variant: (ratings file, read options, column names of user, item, rating, timestamp)
_RATINGS = {
    "ml-100k": ("u.data", {"delimiter": "\t", "header": ("user", "item", "rating", "timestamp")},
                ("user", "item", "rating", "timestamp")),
    "ml-1m": ("ratings.dat", {"delimiter": "::", "header": ("UserID", "MovieID", "Rating", "Timestamp")},
              ("UserID", "MovieID", "Rating", "Timestamp")),
    "ml-latest": ("ratings.csv", {"delimiter": ","}, ("userId", "movieId", "rating", "timestamp")),
}
VARIANTS = tuple(_RATINGS)
_GROUPLENS_ENCODING = {"ml-100k": "latin-1", "ml-1m": "latin-1", "ml-latest": "utf-8"}


def detect_movielens(folder) -> str | None:
    """The MovieLens variant whose ratings file is in ``folder``, or None."""
    folder = Path(folder)
    for variant, (ratings_file, _, _) in _RATINGS.items():
        if (folder / ratings_file).is_file():
            return variant
    return None


def read_movielens(path, *, variant: str = "auto", duplicates: str = "warn", genres: bool = True,
                   name: str | None = None, encoding: str | None = None) -> MultimodalDataset:
    """Reads a MovieLens folder (as unzipped from GroupLens) into a :class:`MultimodalDataset`.

    Args:
      path: the folder (``ml-100k/``, ``ml-1m/``, ``ml-latest-small/`` ...).
      variant: ``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"`` or ``"auto"`` (by the ratings file present).
      duplicates: ``"warn"`` keeps the first of repeated (user, item) ratings; ``"error"`` rejects.
      genres: add the ``"genre"`` modality (multi-hot, float32) from the movies file when present;
        items missing from it, or with no genre listed, get mask False.
      name: dataset name (default: the folder name).
      encoding: text encoding of the files; default: GroupLens' (Latin-1 for ML-100K/1M, UTF-8
        for ml-latest).

    Returns:
      The dataset: float32 ratings, int64 timestamps, every interaction in the train split.

    Raises:
      DataError: naming the file, line and field of any malformed input.
    """
    folder = require_folder(path)
    if variant == "auto":
        variant = detect_movielens(folder)
        if variant is None:
            raise DataError("no MovieLens ratings file in the folder", path=folder, found=sorted(
                p.name for p in folder.iterdir())[:10], expected=f"one of {[r[0] for r in _RATINGS.values()]}")
    if variant not in _RATINGS:
        raise DataError("unknown MovieLens variant", field="variant", found=variant, expected=f"one of {VARIANTS}")
    ratings_file, options, (user_col, item_col, rating_col, time_col) = _RATINGS[variant]
    table = read_table(require_file(folder / ratings_file, what="ratings file"), **options,
                       encoding=encoding or _GROUPLENS_ENCODING[variant])
    columns = table.numbers({user_col: ID, item_col: ID, rating_col: FLOAT, time_col: TIME})
    users, user_ids = dense_ids(columns[user_col])
    items, item_ids = dense_ids(columns[item_col])
    keep = deduplicate(users, items, table, duplicates=duplicates, user_field=user_col, item_field=item_col,
                       user_ids=user_ids, item_ids=item_ids)
    rows = slice(None) if keep is None else keep
    interactions = Interactions(users[rows], items[rows], np.zeros(len(users), np.int8)[rows],
                                columns[rating_col][rows], columns[time_col][rows])
    metadata = {"source": os.fspath(folder), "format": "movielens", "variant": variant,
                "ratings_file": ratings_file, "split_method": "none", "needs_split": True,
                "duplicates_dropped": 0 if keep is None else int(len(users) - len(keep))}
    modalities = {}
    reader = {"ml-100k": _genres_100k, "ml-1m": _genres_1m, "ml-latest": _genres_latest}[variant]
    if genres:
        found = reader(folder, item_ids, encoding or _GROUPLENS_ENCODING[variant])
        if found is not None:
            modality, titles = found
            modalities["genre"] = modality
            metadata["item_titles"] = frozen(titles)
    return MultimodalDataset(name=name or folder.name, n_users=len(user_ids), n_items=len(item_ids),
                             interactions=interactions, modalities=modalities, user_ids=user_ids,
                             item_ids=item_ids, metadata=metadata)


def _genres_100k(folder: Path, item_ids: np.ndarray, encoding: str):
    path = folder / "u.item"
    if not path.is_file():
        return None
    names = _genre_names_100k(folder, encoding)
    header = ("movie id", "movie title", "release date", "video release date", "IMDb URL", *names)
    table = read_table(path, delimiter="|", header=header, encoding=encoding)
    flags_columns = table.numbers({"movie id": ID, **{genre: INT for genre in names}})
    for genre in names:
        bad = np.flatnonzero((flags_columns[genre] != 0) & (flags_columns[genre] != 1))
        if bad.size:
            raise table.error(int(bad[0]), genre, "genre flag is not 0 or 1", found=str(flags_columns[genre][bad[0]]),
                              expected="0 or 1")
    flags = np.stack([flags_columns[genre] for genre in names], axis=1).astype(np.float32)
    titles = table.strings("movie title")
    return _genre_modality(table, flags_columns["movie id"], flags, titles, item_ids, list(names))


def _genre_names_100k(folder: Path, encoding: str) -> tuple[str, ...]:
    path = folder / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    table = read_table(path, delimiter="|", header=("genre", "index"), encoding=encoding)
    index = table.numbers({"index": ID})["index"]
    names = table.strings("genre")
    if sorted(index.tolist()) != list(range(len(names))):
        raise DataError("genre indices are not 0..n-1", path=path, field="index", found=index.tolist(),
                        expected=f"each of 0..{len(names) - 1} once")
    return tuple(names[k] for k in np.argsort(index))


def _genres_1m(folder: Path, item_ids: np.ndarray, encoding: str):
    path = folder / "movies.dat"
    if not path.is_file():
        return None
    table = read_table(path, delimiter="::", header=("MovieID", "Title", "Genres"), encoding=encoding)
    return _genres_from_text(table, "MovieID", "Title", "Genres", item_ids)


def _genres_latest(folder: Path, item_ids: np.ndarray, encoding: str):
    path = folder / "movies.csv"
    if not path.is_file():
        return None
    table = read_table(path, delimiter=",", quoted=True, encoding=encoding)
    return _genres_from_text(table, "movieId", "title", "genres", item_ids)


def _genres_from_text(table, id_col: str, title_col: str, genre_col: str, item_ids: np.ndarray):
    movie_ids = table.numbers({id_col: ID})[id_col]
    lists = [[g.strip() for g in text.split("|") if g.strip() and g.strip() != NO_GENRE]
             for text in table.strings(genre_col)]
    vocabulary = sorted({genre for genres in lists for genre in genres})
    column_of = {genre: k for k, genre in enumerate(vocabulary)}
    flags = np.zeros((len(lists), len(vocabulary)), dtype=np.float32)
    for row, genres in enumerate(lists):
        flags[row, [column_of[g] for g in genres]] = 1.0
    return _genre_modality(table, movie_ids, flags, table.strings(title_col), item_ids, vocabulary)


def _genre_modality(table, movie_ids: np.ndarray, flags: np.ndarray, titles: list[str], item_ids: np.ndarray,
                    vocabulary: list[str]):
    _, first = np.unique(movie_ids, return_index=True)
    if first.size != movie_ids.size:
        repeated = np.setdiff1d(np.arange(movie_ids.size), first)[0]
        original = first[np.searchsorted(movie_ids[first], movie_ids[repeated])]
        raise table.error(int(repeated), table.header[0], "movie listed twice",
                          found=f"id {movie_ids[repeated]} again (first on line {table.line_of(int(original))})",
                          expected="one row per movie")
    position = np.searchsorted(item_ids, movie_ids)
    rated = (position < len(item_ids)) & (item_ids[np.minimum(position, len(item_ids) - 1)] == movie_ids)
    features = np.zeros((len(item_ids), len(vocabulary)), dtype=np.float32)
    features[position[rated]] = flags[rated]
    mask = features.any(axis=1)
    item_titles = np.full(len(item_ids), "", dtype=object)
    item_titles[position[rated]] = np.asarray(titles, dtype=object)[rated]
    modality = Modality("genre", features, mask, provenance={
        "encoder": "multi-hot genres", "source": os.fspath(table.path), "vocabulary": list(vocabulary),
        "movies_without_ratings": int((~rated).sum())})
    return modality, item_titles.astype(str)
