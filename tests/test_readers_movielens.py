"""MovieLens 100K / 1M / latest: tiny files written in each exact distributed format."""

import numpy as np
import pytest

from jaxrec.data import detect_format, load, read_movielens
from jaxrec.data._readers_movielens import ML100K_GENRES
from jaxrec.errors import DataError


def flags(*names):
    return "|".join("1" if genre in names else "0" for genre in ML100K_GENRES)


@pytest.fixture
def ml100k(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n"
                                   "196\t51\t2\t880606923\n")
    (folder / "u.item").write_bytes((
        f"51|Legends of the Fall (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Legends|{flags('Drama', 'Romance', 'War', 'Western')}\n"
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{flags('Comedy')}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/Title?L%2EA%2E|{flags('Crime', 'Film-Noir', 'Mystery', 'Thriller')}\n"
        f"1300|Caf\xe9 au lait (1993)|01-Jan-1993||http://x|{flags('Comedy')}\n").encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(ML100K_GENRES)) + "\n")
    return folder


def test_ml100k_ratings_ids_and_the_19_genre_flags(ml100k):
    dataset = read_movielens(ml100k)
    assert detect_format(ml100k) == "movielens" and dataset.metadata["variant"] == "ml-100k"
    np.testing.assert_array_equal(dataset.user_ids, [22, 186, 196])
    np.testing.assert_array_equal(dataset.item_ids, [51, 242, 302])
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[2, 1], [1, 2], [0, 1], [2, 0]])
    np.testing.assert_array_equal(dataset.interactions.ratings, np.float32([3, 3, 1, 2]))
    np.testing.assert_array_equal(dataset.interactions.timestamps, [881250949, 891717742, 878887116, 880606923])
    genre = dataset.modalities["genre"]
    assert genre.dim == 19 and genre.provenance["vocabulary"] == list(ML100K_GENRES)
    expected = np.zeros((3, 19), np.float32)
    for row, names in enumerate([("Drama", "Romance", "War", "Western"), ("Comedy",),
                                 ("Crime", "Film-Noir", "Mystery", "Thriller")]):
        expected[row, [ML100K_GENRES.index(n) for n in names]] = 1
    np.testing.assert_array_equal(genre.features, expected)
    assert genre.mask.all() and genre.provenance["movies_without_ratings"] == 1
    assert list(dataset.metadata["item_titles"]) == ["Legends of the Fall (1994)", "Kolya (1996)",
                                                     "L.A. Confidential (1997)"]


def test_ml1m_double_colon_files_and_multi_hot_genres(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
                                        "10::3::2::978300000\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Gr\xfcmpier Old Men (1995)::Comedy|Romance\n".encode("latin-1"))
    dataset = load(folder)
    assert dataset.metadata["variant"] == "ml-1m"
    np.testing.assert_array_equal(dataset.user_ids, [1, 2, 10])
    np.testing.assert_array_equal(dataset.item_ids, [3, 661, 1193])
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[0, 2], [0, 1], [1, 2], [2, 0]])
    genre = dataset.modalities["genre"]
    vocabulary = ["Animation", "Children's", "Comedy", "Drama", "Musical", "Romance"]
    assert genre.provenance["vocabulary"] == vocabulary
    np.testing.assert_array_equal(genre.features, np.float32([[0, 0, 1, 0, 0, 1], [1, 1, 0, 0, 1, 0],
                                                              [0, 0, 0, 1, 0, 0]]))
    assert dataset.metadata["item_titles"][0] == "Gr\xfcmpier Old Men (1995)"


def test_ml_latest_csv_with_quoted_titles_and_no_genres(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,3.5,964981247\n"
                                        "5,193609,0.5,1537109082\n")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '193609,"Andrew Dice Clay: Dice Rules (1991)",(no genres listed)\n')
    dataset = read_movielens(folder)
    assert dataset.metadata["variant"] == "ml-latest"
    np.testing.assert_array_equal(dataset.interactions.ratings, np.float32([4.0, 3.5, 0.5]))
    genre = dataset.modalities["genre"]
    assert genre.provenance["vocabulary"] == ["Adventure", "Animation", "Children", "Comedy", "Drama", "Fantasy",
                                              "Romance"]
    np.testing.assert_array_equal(genre.features, np.float32([[1, 1, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 0, 1],
                                                              [0, 0, 0, 0, 0, 0, 0]]))
    np.testing.assert_array_equal(genre.mask, [True, True, False])  # "(no genres listed)" is missing
    assert dataset.metadata["item_titles"][1] == "American President, The (1995)"


def test_ratings_without_a_movies_file_load_without_genres(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::5::3::1\n")
    dataset = read_movielens(folder)
    assert dataset.modalities == {} and len(dataset.interactions) == 1
    assert read_movielens(folder, genres=False).modalities == {}


def test_bad_ratings_line_names_file_line_and_column(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::abc::3::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2, field 'MovieID': not a valid number; found 'abc'"):
        read_movielens(folder)


def test_a_folder_without_ratings_is_not_movielens(tmp_path):
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        read_movielens(tmp_path)
    with pytest.raises(DataError, match="unknown MovieLens variant"):
        read_movielens(tmp_path, variant="ml-20m")
