"""MovieLens genre rows when movies.dat lists movies nobody rated: each genre row and title must
land on the rated movie with that id, never on a neighbouring id (checked by hand)."""

import numpy as np

from jaxrec.data import load


def test_unrated_movies_do_not_lend_their_genres_to_neighbouring_ids(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    # Rated movies: 10, 20, 30 (30 has no movies.dat row). Unrated: 25 (sorts just before 30) and 5
    # (sorts before 10, listed after it).
    (folder / "ratings.dat").write_text("1::10::5::1\n1::20::4::2\n2::30::3::3\n2::10::1::4\n")
    (folder / "movies.dat").write_text("10::Ten (1990)::Drama\n20::Twenty (1991)::Comedy\n"
                                       "25::Twenty-five (1992)::Horror\n5::Five (1993)::Western\n")
    dataset = load(folder)
    assert dataset.item_ids.tolist() == [10, 20, 30]
    genre = dataset.modalities["genre"]
    assert genre.provenance["vocabulary"] == ["Comedy", "Drama", "Horror", "Western"]
    np.testing.assert_array_equal(genre.features, np.float32([[0, 1, 0, 0],    # 10: Drama
                                                              [1, 0, 0, 0],    # 20: Comedy
                                                              [0, 0, 0, 0]]))  # 30: no row
    assert genre.mask.tolist() == [True, True, False]
    assert dataset.metadata["item_titles"].tolist() == ["Ten (1990)", "Twenty (1991)", ""]
    assert genre.provenance["movies_without_ratings"] == 2
