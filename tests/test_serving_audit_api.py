"""Serving audit of the Python API: fold-in values against numpy (the documented equations,
per model family), saves and reloads (concurrent saves, the older saved layout), and list
lengths far past the catalogue."""

import shutil
import threading

import jax
import numpy as np
import pytest

from jaxrec.errors import ResourceError
from jaxrec.serve import OnlineConfig, Recommender
from jaxrec.serve._foldin import bpr_vectors

from _foldin_reference import numpy_bpr_fold_in
from test_serve_api import _run as _serve_run  # one small served-run recipe for both files


def _run(tmp_path_factory, model, args, epochs=1):
    return _serve_run(tmp_path_factory, model, args, epochs=epochs)


@pytest.fixture(scope="module")
def bpr_run(tmp_path_factory):
    return _run(tmp_path_factory, "bprmf", {"embedding_size": 8})


@pytest.fixture(scope="module")
def vbpr_run(tmp_path_factory):
    return _run(tmp_path_factory, "vbpr", {"embedding_size": 8, "visual_size": 4})


# -- fold-in against numpy -------------------------------------------------------------------

def test_bpr_fold_in_of_a_history_does_not_depend_on_the_other_users_of_the_call():
    # The fold-in draws its negatives from a fixed key, so "the same history gives the same
    # vector" -- also when the server's micro-batcher folds it in together with other users
    # (the draws were per row: a user's vector, and its list, changed with its row and the
    # call's size).
    rng = np.random.default_rng(4)
    n_items, d = 30, 5
    item_emb = rng.normal(size=(n_items, d)).astype(np.float32)
    free = np.array([1, 1, 1, 1, 0], np.float32)  # the last column: a bias, user value 1
    offset_row = np.array([0, 0, 0, 0, 1], np.float32)
    history = np.array([2, 5, 11])
    others = [np.array([0, 1]), np.array([7]), np.array([3, 4, 8, 9])]
    expected = numpy_bpr_fold_in(item_emb, offset_row.astype(np.float64), free.astype(np.float64), history, n_items)
    for lists in ([history], others + [history], [np.array([i % n_items]) for i in range(69)] + [history]):
        offset = np.tile(offset_row, (len(lists), 1))
        got = bpr_vectors(item_emb, offset, free, lists, n_items)[-1]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def _dense_item_layers(rec, normalization, n_layers):
    """Each layer's item rows of the model's propagation, from a dense numpy adjacency over the
    distinct training pairs (train split and streamed events)."""
    learner = rec.snapshot.learner
    params = learner.params
    n_users, n_items = learner.cap_users, learner.cap_items
    pairs = np.unique(learner.train_pairs(), axis=0)
    adjacency = np.zeros((n_users + n_items,) * 2)
    adjacency[pairs[:, 0], n_users + pairs[:, 1]] = adjacency[n_users + pairs[:, 1], pairs[:, 0]] = 1
    if normalization == "sym":
        degree = adjacency.sum(1)
        inv = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1)), 0)
        norm = inv[:, None] * adjacency * inv[None, :]
    else:  # LATTICE: D^-1 (A + I)
        looped = adjacency + np.eye(len(adjacency))
        norm = looped / looped.sum(1, keepdims=True)
    layers = [np.concatenate([params["user_embedding"], params["item_embedding"]]).astype(np.float64)]
    for _ in range(n_layers):
        layers.append(norm @ layers[-1])
    return [layer[n_users:] for layer in layers], np.bincount(pairs[:, 1], minlength=n_items)


def test_lightgcn_propagation_uses_graph_degrees_after_a_repeated_event(tmp_path_factory):
    # A streamed event that repeats a training pair is one more interaction but no new edge of
    # the model's graph (repeated pairs count once): the new user's weights 1/sqrt(|H| (d_i + 1))
    # use the graph degree d_i (they used the interaction count).
    workdir, dataset = _run(tmp_path_factory, "lightgcn", {"embedding_size": 8, "n_layers": 2})
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=2))
    train = dataset.split_pairs("train")
    repeated = train[:6]
    rec.update(repeated)
    history = np.array([int(repeated[0, 1]), int(repeated[1, 1]), 9])
    layers, degree = _dense_item_layers(rec, "sym", 2)
    assert np.any(rec.item_counts()[history] != degree[history])  # the case tells counts from degrees
    w = 1 / np.sqrt(len(history) * (degree[history] + 1))
    expected = sum(w @ layer[history] for layer in layers[:2]) / 3
    got = rec.fold_in_vectors([history], method="propagate_only")[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_lattice_propagation_fold_in_is_its_random_walk_row(tmp_path_factory):
    # LATTICE's user-item graph is D^-1 (A + I): the new user's row averages itself and its
    # |H| items, e^(k+1) = (e^(k) + sum_H e_i^(k)) / (|H| + 1), not LightGCN's symmetric weights.
    workdir, dataset = _run(tmp_path_factory, "lattice", {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 5})
    rec = Recommender.load(workdir, dataset=dataset)
    layers, _ = _dense_item_layers(rec, "rw", 2)
    for history in (np.array([0, 5, 9]), np.array([17])):
        user, total = np.zeros(8), np.zeros(8)
        for k in range(2):
            user = (user + layers[k][history].sum(0)) / (len(history) + 1)
            total += user
        expected = total / 3
        got = rec.fold_in_vectors([history], method="propagate_only")[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


# -- saving and loading ----------------------------------------------------------------------

def test_concurrent_saves_all_complete_and_reload(bpr_run, tmp_path):
    # Orbax's checkpointer is not safe from two threads at once: two saves of one process
    # collided (OSError "Directory not empty", tensorstore NOT_FOUND) or hung on its 300 s
    # signal barrier. Saves now run one after the other.
    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=2))
    errors, saved = [], []
    start = threading.Barrier(4)

    def saver(name):
        start.wait()
        for _ in range(8):
            try:
                saved.append(rec.save(tmp_path / name))
            except Exception as error:  # noqa: BLE001 -- reported below
                errors.append(repr(error)[:300])

    threads = [threading.Thread(target=saver, args=(name,), daemon=True) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    start.wait()
    rec.update(np.array([[0, 3], [60, 2]]))  # saving while updating
    for thread in threads:
        thread.join(timeout=120)  # a bound on the test, not a timing check: a hang fails it
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and len(saved) == 24
    users = np.arange(60)  # the users of both versions
    for name in ("a", "b", "c"):
        again = Recommender.load(tmp_path / name, dataset=dataset)
        reference = rec if again.version == rec.version else Recommender.load(workdir, dataset=dataset)
        assert again.version in (0, 1)
        for a, b in zip(again.recommend(users, k=10), reference.recommend(users, k=10)):
            np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_a_save_in_the_older_layout_reloads_with_features_at_their_ids(vbpr_run, tmp_path):
    # Folders saved before added-item rows were aligned with item ids hold one feature row per
    # add_items item only; an event-introduced item (40 here) had none. Such a folder loaded
    # the added item's row into item 40 as well (broadcast) or failed inside numpy.
    workdir, dataset = vbpr_run
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=2))
    rec.update(np.array([[0, 40], [60, 2]]))  # item 40 first appears in an event: no features
    img = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)
    assert list(rec.add_items({"img": img})) == [41, 42]
    saved = rec.save(tmp_path / "served")
    old = tmp_path / "old"
    shutil.copytree(saved, old)
    with np.load(old / "arrays.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    for name in list(arrays):
        if name.startswith(("features/", "masks/")):
            arrays[name] = arrays[name][1:]  # the older layout: no row for item 40
    with open(old / "arrays.npz", "wb") as handle:
        np.savez(handle, **arrays)
    again = Recommender.load(old, dataset=dataset)
    added = again.snapshot.learner.added
    np.testing.assert_array_equal(added.masks["img"], [False, True, True])
    np.testing.assert_array_equal(added.features["img"], np.concatenate([np.zeros((1, 6), np.float32), img]))
    np.testing.assert_array_equal(added.masks["txt"], [False, False, False])
    users = np.arange(61)
    for a, b in zip(again.recommend(users, k=10), rec.recommend(users, k=10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.embeddings()[1], rec.embeddings()[1])


# -- list lengths ----------------------------------------------------------------------------

def test_a_list_length_past_memory_is_refused_naming_k(bpr_run):
    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    for call in (lambda k: rec.recommend([0, 1], k=k), lambda k: rec.fold_in([[1, 2]], k=k),
                 lambda k: rec.similar_items([3], k=k)):
        with pytest.raises(ResourceError, match=r"'k'.*k <= 40"):
            call(2**62)
    items, scores = rec.recommend([0], k=45, exclude_seen=False)  # past the catalogue: filled
    assert items.shape == (1, 45) and np.all(items[0, 40:] == -1) and np.all(np.isneginf(scores[0, 40:]))


def test_ids_past_int64_are_refused_naming_the_field(bpr_run):
    # An event id past int64 in a dict raised a raw OverflowError from numpy; a huge id in an
    # array or a float was cast first and reported as a wrapped-around negative number.
    from jaxrec.errors import DataError

    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    cases = (
        (lambda: rec.update([{"user_id": 0, "item_id": 1}, {"user_id": 2**63, "item_id": 0}]),
         "events[1].user_id", 2**63),
        (lambda: rec.update(np.array([[0, 2**63 + 7]], np.uint64)), "events.item_id", 2**63 + 7),
        (lambda: rec.recommend([0, 1e20]), "user_ids", 10**20),
    )
    for call, field, found in cases:
        with pytest.raises(DataError) as raised:
            call()
        assert raised.value.field == field and raised.value.found == found
    assert rec.version == 0 and rec.events_applied == 0


def _exact_catalogue(dataset, rows: dict):
    """``dataset`` with one more item (``rows[modality]`` its (1, d) features), no padding."""
    import dataclasses

    from jaxrec import data as jdata

    modalities = {name: jdata.Modality(name, np.concatenate([mod.features, rows[name]]).astype(np.float32),
                                       np.concatenate([mod.mask, [True]]), None, dict(mod.provenance))
                  for name, mod in dataset.modalities.items()}
    return dataclasses.replace(dataset, n_items=dataset.n_items + 1, modalities=modalities, item_ids=None)


@pytest.mark.parametrize("model, args", [
    ("lattice", {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 5}),
    ("lgmrec", {"embedding_size": 8, "feat_embed_dim": 8}),
])
def test_capacity_padding_never_reaches_real_rows(tmp_path_factory, model, args):
    # add_items doubles the item tables (40 -> 80): featureless padding rows. LATTICE's learned
    # kNN graph and LGMRec's hypergraph run over every row, so padding items became neighbours
    # of real ones and moved their embeddings. Reference: the model built on exactly the 41
    # items (the dataset extended by hand), with the served parameters' real rows.
    from jaxrec import models
    from jaxrec.serve._load import make_encoder

    workdir, dataset = _run(tmp_path_factory, model, args)
    rec = Recommender.load(workdir, dataset=dataset)
    rows = {"img": np.linspace(-1, 1, 6, dtype=np.float32)[None], "txt": np.full((1, 5), 0.3, np.float32)}
    assert list(rec.add_items(rows)) == [40]
    built = models.build(model, _exact_catalogue(dataset, rows), **args)
    shapes = jax.tree.map(np.shape, built.module.init(jax.random.PRNGKey(0), built.ctx,
                                                      method=built.module.encode)["params"])
    served = rec.snapshot.learner.params

    def real_rows(value, shape):  # the served leaf cut to the exact model's shape
        value = np.asarray(value)
        return value[tuple(slice(0, n) for n in shape)]

    params = jax.tree.map(real_rows, served, shapes, is_leaf=lambda x: isinstance(x, tuple))
    users, items = make_encoder(built.module)(params, built.ctx)
    user_emb, item_emb = rec.embeddings()
    np.testing.assert_allclose(item_emb, np.asarray(items), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(user_emb, np.asarray(users), rtol=1e-5, atol=1e-6)


def test_online_config_and_load_options_are_checked_up_front(bpr_run):
    # A string learning rate raised a raw TypeError; inf passed / learning rates and a negative
    # seed were accepted and failed inside an update (OverflowError, numpy's ValueError); an
    # `online` that is not an OnlineConfig failed at the first update (AttributeError).
    from jaxrec.errors import ConfigError

    for kwargs, field in (({"learning_rate": "0.1"}, "online.learning_rate"),
                          ({"learning_rate": float("inf")}, "online.learning_rate"),
                          ({"passes": float("inf")}, "online.passes"), ({"seed": -1}, "online.seed"),
                          ({"seed": "a"}, "online.seed"), ({"batch_size": 0}, "online.batch_size")):
        with pytest.raises(ConfigError, match=field):
            OnlineConfig(**kwargs)
    assert OnlineConfig(batch_size=np.int64(16), learning_rate=np.float32(0.01)).batch_size == 16
    workdir, dataset = bpr_run
    with pytest.raises(ConfigError, match="online must be a jaxrec.serve.OnlineConfig"):
        Recommender.load(workdir, dataset=dataset, online={"learning_rate": 0.1})
    # seen_splits="valid" is that split (it was read letter by letter: "unknown split 'v'").
    rec = Recommender.load(workdir, dataset=dataset, seen_splits="valid")
    valid = dataset.split_pairs("valid")
    for user in range(5):
        np.testing.assert_array_equal(np.sort(rec.seen_items(user)), np.unique(valid[valid[:, 0] == user, 1]))


def test_a_reload_keeps_the_saved_models_seen_splits(bpr_run, tmp_path):
    # A model served with seen_splits=("train", "valid") was reloaded with the default
    # ("train",): its reloaded lists held the validation items it had excluded.
    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset, seen_splits=("train", "valid"))
    again = Recommender.load(rec.save(tmp_path / "served"), dataset=dataset)
    users = np.arange(60)
    for a, b in zip(again.recommend(users, k=10), rec.recommend(users, k=10)):
        np.testing.assert_array_equal(a, b)
    pairs = np.concatenate([dataset.split_pairs("train"), dataset.split_pairs("valid")])
    for user in range(5):  # against the splits themselves
        np.testing.assert_array_equal(np.sort(again.seen_items(user)), np.unique(pairs[pairs[:, 0] == user, 1]))
    assert not set(again.recommend([0], k=40)[0][0].tolist()) & set(pairs[pairs[:, 0] == 0, 1].tolist())
    only_train = Recommender.load(tmp_path / "served", dataset=dataset, seen_splits="train")  # an explicit choice wins
    train = dataset.split_pairs("train")
    np.testing.assert_array_equal(np.sort(only_train.seen_items(0)), np.unique(train[train[:, 0] == 0, 1]))


def test_a_damaged_saved_folder_is_a_config_error_naming_the_field(bpr_run, tmp_path):
    # A served.json without a field, with a string version or capacities below the counts, an
    # arrays.npz without events, or a missing state/ raised KeyError, ValueError (numpy's
    # reshape) or FileNotFoundError from Orbax.
    import json

    from jaxrec.errors import ConfigError

    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=2))
    rec.update(np.array([[0, 40], [60, 2]]))
    saved = rec.save(tmp_path / "served")

    def damaged(name, info=None, arrays=None, remove=None):
        folder = tmp_path / name
        shutil.copytree(saved, folder)
        if info is not None:
            data = json.loads((folder / "served.json").read_text())
            info(data)
            (folder / "served.json").write_text(json.dumps(data))
        if arrays is not None:
            with np.load(folder / "arrays.npz") as stored:
                data = {key: stored[key] for key in stored.files}
            arrays(data)
            with open(folder / "arrays.npz", "wb") as handle:
                np.savez(handle, **data)
        if remove is not None:
            shutil.rmtree(folder / remove)
        return folder

    cases = [
        (damaged("no_step", info=lambda d: d.pop("step")), r"field 'step' must be a non-negative integer"),
        (damaged("version", info=lambda d: d.update(version="x")), r"field 'version' must be"),
        (damaged("caps", info=lambda d: d.update(cap_items=40)), r"field 'cap_items' \(40\) is below 'n_items' \(41\)"),
        (damaged("other_caps", info=lambda d: d.update(cap_items=100)), r"state: a saved parameter has shape"),
        (damaged("no_events", arrays=lambda d: d.pop("events")), r"field 'events' is missing"),
        (damaged("bad_events", arrays=lambda d: d.update(events=np.array([[900, 0]], np.int32))),
         r"field 'events' holds ids outside"),
        (damaged("no_state", remove="state"), r"state is missing"),
        (damaged("splits", info=lambda d: d.update(seen_splits=["train", "dev"])), r"field 'seen_splits' must be"),
    ]
    for folder, message in cases:
        with pytest.raises(ConfigError, match=message):
            Recommender.load(folder, dataset=dataset)


def test_exported_top_k_never_hands_back_an_excluded_item(bpr_run, tmp_path):
    # With fewer unseen items than k, the exported top_k filled the last slots with excluded
    # (seen) item ids at score -inf; Recommender.recommend gives -1 there.
    from jaxrec.serve import export_run, load_export

    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    exported = load_export(export_run(rec, tmp_path / "export", k=40))
    users = np.arange(60)
    user_emb, item_emb = np.load(tmp_path / "export" / "user_embeddings.npy"), np.load(
        tmp_path / "export" / "item_embeddings.npy")
    exclude = np.zeros((60, 40), bool)
    train = dataset.split_pairs("train")
    exclude[train[:, 0], train[:, 1]] = True  # seen items, from the split itself
    values, items = (np.asarray(x) for x in exported["top_k"].call(user_emb[users], item_emb, exclude))
    unseen = 40 - exclude.sum(1)
    for user in users:
        assert np.all(items[user, unseen[user]:] == -1) and np.all(np.isneginf(values[user, unseen[user]:]))
        assert not set(items[user, :unseen[user]].tolist()) & set(np.flatnonzero(exclude[user]).tolist())
    np.testing.assert_array_equal(items, rec.recommend(users, k=40)[0])
