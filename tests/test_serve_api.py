"""jaxrec.serve's Python API on tiny trained runs: exactness against the evaluation, fold-in,
add_items, online updates with concurrent readers, save/load, export."""

import json
import shutil
import threading

import jax
import numpy as np
import pytest

from jaxrec.data._synthetic import make_synthetic
from jaxrec.errors import ConfigError, DataError
from jaxrec.eval import dot_product_scores, recall_at_k
from jaxrec.eval._ranking import split_top_k
from jaxrec.features import fit_standardizer
from jaxrec.serve import OnlineConfig, Recommender, export_run, load_export
from jaxrec.serve import _grow
from jaxrec.serve._foldin import _bpr_fit, bpr_vectors
from jaxrec.train import config_from_dict, evaluate_run, train_and_evaluate
from jaxrec.train._setup import prepare_eval_splits, prepare_experiment

DATA = dict(n_users=60, n_items=40, n_interactions=900, seed=2, dims={"img": 6, "txt": 5})


def _run(tmp_path_factory, model, args, epochs=3):
    dataset = make_synthetic(**DATA)
    raw = {"data": {"synthetic": DATA}, "model": {"name": model, "args": args},
           "train": {"epochs": epochs, "batch_size": 128, "learning_rate": 0.02, "seed": 5},
           "eval": {"ks": [10, 20]}}
    workdir = tmp_path_factory.mktemp(model)
    train_and_evaluate(config_from_dict(raw), workdir, dataset=dataset, quiet=True)
    return workdir, dataset


@pytest.fixture(scope="module")
def vbpr_run(tmp_path_factory):
    return _run(tmp_path_factory, "vbpr", {"embedding_size": 8, "visual_size": 4})


@pytest.fixture(scope="module")
def bpr_run(tmp_path_factory):
    return _run(tmp_path_factory, "bprmf", {"embedding_size": 8})


def test_recommend_equals_the_evaluation_ranking(vbpr_run):
    workdir, dataset = vbpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    experiment = prepare_experiment(rec.snapshot.learner.config, dataset)
    layout = prepare_eval_splits(experiment, ("test",))["test"]
    batches = dict(layout.batches, row_valid=layout.batches["num_relevant"] > 0)
    user_emb, item_emb = rec.embeddings()
    scores, items, _ = split_top_k(batches, layout.candidate_mask, user_emb, item_emb,
                                   score_fn=dot_product_scores, k=20)
    valid = np.asarray(batches["row_valid"]).reshape(-1)
    users = np.asarray(batches["users"]).reshape(-1)[valid]
    expected = np.asarray(items).reshape(-1, 20)[valid]
    expected_scores = np.asarray(scores).reshape(-1, 20)[valid]
    expected[np.isneginf(expected_scores)] = -1  # slots only a masked item could fill
    served, served_scores = rec.recommend(users, k=20)
    np.testing.assert_array_equal(served, expected)
    np.testing.assert_array_equal(served_scores, expected_scores)
    # The recall of the served lists is the one `jaxrec evaluate` reports.
    test = dataset.split_pairs("test")
    hits = np.array([[(u, i) in set(map(tuple, test[test[:, 0] == u])) for i in row] for u, row in zip(users, served)])
    relevant = np.array([np.sum(test[:, 0] == u) for u in users])
    recall = float(np.mean(np.asarray(recall_at_k(hits, relevant, k=20))))
    assert recall == pytest.approx(evaluate_run(workdir, dataset=dataset)["metrics"]["recall@20"], abs=1e-6)


def test_reading_methods_against_numpy(vbpr_run):
    workdir, dataset = vbpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    user_emb, item_emb = rec.embeddings()
    # VBPR's user vectors end with a constant 1 opposite the item bias: the one fixed column.
    np.testing.assert_array_equal(rec.snapshot.fixed_columns, np.arange(user_emb.shape[1]) == user_emb.shape[1] - 1)
    users, items = np.array([0, 5, 5, 59]), np.array([3, 0, 39, 7])
    np.testing.assert_allclose(rec.score(users, items), np.sum(user_emb[users] * item_emb[items], 1), rtol=1e-5)
    top, top_scores = rec.recommend([4], k=45, exclude_seen=False)
    reference = user_emb[4] @ item_emb.T
    np.testing.assert_array_equal(top[0, :40], np.lexsort((np.arange(40), -reference)))
    assert np.all(top[0, 40:] == -1) and np.all(np.isneginf(top_scores[0, 40:]))
    seen = set(rec.seen_items(4))
    assert seen and not seen & set(rec.recommend([4], k=40)[0][0].tolist())
    only, _ = rec.recommend([4], k=3, candidates=[1, 2, 3], exclude_seen=False)
    assert set(only[0].tolist()) == {1, 2, 3}
    unit = item_emb[:, :-1] / np.linalg.norm(item_emb[:, :-1], axis=1, keepdims=True)
    cosine = unit @ unit[7]
    cosine[7] = -np.inf
    similar, similar_scores = rec.similar_items([7], k=5)
    np.testing.assert_array_equal(similar[0], np.argsort(-cosine, kind="stable")[:5])
    np.testing.assert_allclose(similar_scores[0], np.sort(cosine)[::-1][:5], rtol=1e-5)
    for bad in (lambda: rec.recommend([60]), lambda: rec.recommend([0], k=0), lambda: rec.score([0], [1, 2]),
                lambda: rec.similar_items([-1]), lambda: rec.recommend([0], candidates=[40]),
                lambda: rec.fold_in([[]]), lambda: rec.fold_in([[1, 40]])):
        with pytest.raises(DataError):
            bad()


def test_bpr_fold_in_hand_worked_case():
    # Items on the axes of the plane, plus a bias column opposite a fixed user value of 1.
    item_emb = np.array([[1, 0, 0.0], [0, 1, 0.5], [-1, 0, 0.0], [0, -1, 0.5]], np.float32)
    offset = np.array([[0, 0, 1.0]], np.float32)
    free = np.array([1, 1, 0], np.float32)
    history = np.array([[0]], np.int32)
    is_history = np.array([[True, False, False, False]])
    v = np.asarray(_bpr_fit(item_emb, offset, free, history, np.ones((1, 1), bool), is_history, np.int32(4),
                            jax.random.PRNGKey(0), steps=200, n_neg=8, learning_rate=0.05, reg=0.01))[0]
    # The objective is symmetric in the second axis: the optimum points along item 0.
    assert v[2] == 1.0 and v[0] > 0.5 and abs(v[1]) < 0.05 * v[0]


def test_bpr_fold_in_reaches_the_optimum_of_the_expected_objective():
    # Independent reference: the objective with the sampled negatives replaced by their expectation
    # (every item outside the history), minimized by scipy's L-BFGS in float64. The fold-in's Adam
    # steps on sampled negatives end within a few percent of its optimum (a wrong sign, a bias
    # column left free or a 10x ridge end 7% or more above it on this case).
    scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is in the test extra: pip install -e '.[test]'")
    rng = np.random.default_rng(3)
    n_items, d, reg = 30, 6, 0.01
    item_emb = rng.normal(size=(n_items, d)).astype(np.float32)  # the last column: a bias, user value 1
    offset = np.zeros((2, d), np.float32)
    offset[:, -1] = 1.0
    free = np.array([1, 1, 1, 1, 1, 0], np.float32)
    histories = [np.array([0, 4, 7, 11]), np.array([2, 3])]

    def expected_objective(v, history):
        u = offset[0] + v * free
        scores = item_emb.astype(np.float64) @ u
        negatives = np.setdiff1d(np.arange(n_items), history)
        z = scores[negatives][None, :] - scores[history][:, None]
        value = np.mean(np.logaddexp(0, z)) + reg * np.sum((v * free) ** 2)
        weight = 1 / (1 + np.exp(-z))
        grad = (weight[:, :, None] * (item_emb[negatives][None] - item_emb[history][:, None])).mean((0, 1))
        return value, grad * free + 2 * reg * v * free

    got = bpr_vectors(item_emb, offset, free, histories, n_items, reg=reg)
    for row, history in enumerate(histories):
        best = scipy_optimize.minimize(expected_objective, np.zeros(d), args=(history,), jac=True,
                                       method="L-BFGS-B", options={"gtol": 1e-10}).x
        assert got[row, -1] == 1.0  # the bias column keeps the trained users' value
        reached = expected_objective(got[row] - offset[0], history)[0]
        optimum = expected_objective(best, history)[0]
        assert optimum <= reached < 1.03 * optimum
        assert expected_objective(np.zeros(d), history)[0] > 1.3 * optimum  # the case tells a fit from none
        np.testing.assert_allclose(got[row], offset[0] + best * free, rtol=0, atol=0.2 * np.linalg.norm(best))


def test_fold_in_of_a_trained_users_history(bpr_run):
    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    train = dataset.split_pairs("train")
    users = np.array([1, 2, 3])
    histories = [train[train[:, 0] == u, 1] for u in users]
    items, scores = rec.fold_in(histories, k=10)
    for history, row in zip(histories, items):
        assert not set(history) & set(row.tolist())
    vectors = rec.fold_in_vectors(histories)
    _, item_emb = rec.embeddings()
    # fold_in ranks the fold-in vectors; histories are scored above the average item.
    for row, (vector, history) in enumerate(zip(vectors, histories)):
        best = np.max(np.where(np.isin(np.arange(40), history), -np.inf, item_emb @ vector))
        assert scores[row, 0] == pytest.approx(best, rel=1e-5)
        assert np.mean(item_emb[history] @ vector) > np.mean(item_emb @ vector)
    np.testing.assert_array_equal(rec.fold_in_vectors(histories), vectors)  # a fixed key: deterministic
    with pytest.raises(ConfigError):
        rec.fold_in(histories, method="propagate")


def test_lightgcn_propagation_fold_in_against_dense_numpy(tmp_path_factory):
    workdir, dataset = _run(tmp_path_factory, "lightgcn", {"embedding_size": 8, "n_layers": 2}, epochs=1)
    rec = Recommender.load(workdir, dataset=dataset)
    params = rec.snapshot.learner.params
    n_users, n_items = dataset.n_users, dataset.n_items
    train = np.unique(dataset.split_pairs("train"), axis=0)
    adjacency = np.zeros((n_users + n_items,) * 2)
    adjacency[train[:, 0], n_users + train[:, 1]] = adjacency[n_users + train[:, 1], train[:, 0]] = 1
    degree = adjacency.sum(1)
    inv = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1)), 0)
    norm = inv[:, None] * adjacency * inv[None, :]
    layers = [np.concatenate([params["user_embedding"], params["item_embedding"]]).astype(np.float64)]
    for _ in range(2):
        layers.append(norm @ layers[-1])
    history = np.array([0, 5, 9])
    item_degree = np.bincount(train[:, 1], minlength=n_items)
    w = 1 / np.sqrt(len(history) * (item_degree[history] + 1))
    expected = sum(w @ layer[n_users + history] for layer in layers[:2]) / 3
    got = rec.fold_in_vectors([history], method="propagate_only")[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # The default refines the free layer-0 row on top of the propagated part.
    refined = rec.fold_in_vectors([history])[0]
    assert not np.allclose(refined, got)


def test_add_items_vbpr_against_its_formula_and_bad_input(vbpr_run, bpr_run):
    workdir, dataset = vbpr_run
    rec = Recommender.load(workdir, dataset=dataset)
    user_before, item_before = rec.embeddings()
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(2, 5)).astype(np.float32)
    for bad in ({"img": img[:, :5]}, {"img": np.where(np.eye(2, 6) > 0, np.nan, img)}, {"sound": img},
                {"img": img, "txt": txt[:1]}, {}):
        with pytest.raises(DataError):
            rec.add_items(bad)
    assert rec.version == 0 and rec.n_items == 40
    ids = rec.add_items({"img": img, "txt": txt})
    np.testing.assert_array_equal(ids, [40, 41])
    assert rec.version == 1 and rec.n_items == 42 and list(rec.added_items()) == [40, 41]
    user_after, item_after = rec.embeddings()
    np.testing.assert_array_equal(user_after, user_before)
    np.testing.assert_array_equal(item_after[:40], item_before)  # train statistics scale the features
    params = rec.snapshot.learner.params
    features = np.concatenate([fit_standardizer(dataset, "img").apply(img.astype(np.float64)),
                               fit_standardizer(dataset, "txt").apply(txt.astype(np.float64))], axis=1)
    expected = np.concatenate([np.zeros((2, 8)), features @ params["E"], (features @ params["beta_prime"])[:, None]],
                              axis=1)
    np.testing.assert_allclose(item_after[40:], expected, rtol=1e-4, atol=1e-6)
    ranked, _ = rec.recommend([0], k=2, candidates=ids)
    assert set(ranked[0].tolist()) == {40, 41}
    bpr_dir, bpr_data = bpr_run
    with pytest.raises(ConfigError, match="ID only"):
        Recommender.load(bpr_dir, dataset=bpr_data).add_items({"img": img})


def test_update_grows_tables_and_readers_see_whole_versions(bpr_run):
    workdir, dataset = bpr_run
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=20))
    users = np.arange(10)
    before = rec.recommend(users, k=5)
    params_before = jax.tree.map(np.asarray, rec.snapshot.learner.params)
    results, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            results.append(rec.recommend(users, k=5))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        item = int(before[0][0, 0])
        for bad in (np.array([[0, 1, 2]]), np.array([[0.5, 1.0]]), [{"user_id": 0}], np.array([[200, 0]])):
            with pytest.raises(DataError):
                rec.update(bad)
        assert rec.version == 0
        version = rec.update([{"user_id": 0, "item_id": item}, {"user_id": 60, "item_id": 3},
                              {"user_id": 61, "item_id": 40}])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = rec.recommend(users, k=5)
    assert version == 1 and rec.version == 1 and rec.events_applied == 3
    assert rec.n_users == 62 and rec.n_items == 41
    learner = rec.snapshot.learner
    assert (learner.cap_users, learner.cap_items) == (120, 80)  # doubled
    assert results and all(any(np.array_equal(r[0], ref[0]) and np.array_equal(r[1], ref[1])
                               for ref in (before, after)) for r in results)
    assert item in rec.seen_items(0) and item not in rec.recommend([0], k=40)[0][0]
    assert rec.recommend([60, 61], k=3)[0].shape == (2, 3)
    # The old rows were carried over into the grown tables (then trained); the untouched
    # padding rows hold the model's random initialization scaled down to almost nothing.
    grown = np.asarray(learner.params["user_embedding"])
    scale = np.abs(params_before["user_embedding"]).max()
    assert grown.shape == (120, 8) and 0 < np.abs(grown[62:]).max() < 1e-2 * scale
    assert not np.array_equal(grown[:60], params_before["user_embedding"])
    with pytest.raises(DataError):
        rec.recommend([62])


def test_transplant_keeps_old_rows():
    old = {"table": np.arange(6.0).reshape(3, 2), "features": np.ones((3, 2)), "w": np.ones(4)}
    fresh = {"table": np.full((6, 2), 7.0), "features": np.full((6, 2), 5.0), "w": np.zeros(4)}
    deterministic = {"table": False, "features": True, "w": False}
    out = _grow.transplant(old, fresh, deterministic, {(3, 6)})
    np.testing.assert_array_equal(out["table"], np.concatenate([old["table"], np.full((3, 2), 7.0 * _grow.NEW_ROW_SCALE)]))
    np.testing.assert_array_equal(out["features"], np.concatenate([np.ones((3, 2)), np.full((3, 2), 5.0)]))
    np.testing.assert_array_equal(out["w"], np.ones(4))
    with pytest.raises(DataError):
        _grow.transplant(old, {**fresh, "w": np.zeros(5)}, deterministic, {(3, 6)})


def test_save_load_and_export(vbpr_run, tmp_path):
    workdir, dataset = vbpr_run
    rec = Recommender.load(workdir, dataset=dataset, online=OnlineConfig(batch_size=64, max_steps=10))
    rec.update(np.array([[0, 1], [60, 2]]))
    rec.add_items({"img": np.ones((1, 6), np.float32)})
    saved = rec.save(tmp_path / "served")
    rec.save(tmp_path / "served")  # replaced in place
    again = Recommender.load(saved, dataset=dataset)
    assert (again.version, again.n_users, again.n_items, again.events_applied) == (2, 61, 41, 2)
    users = np.array([0, 7, 60])
    for a, b in zip(again.recommend(users, k=10), rec.recommend(users, k=10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.seen_items(60), rec.seen_items(60))

    out = export_run(again, tmp_path / "export", k=10)
    exported = load_export(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "vbpr" and manifest["version"] == 2 and manifest["n_items"] == 41
    assert exported["id_maps"]["items"][-1] == "added:40"
    # Only jax.export is needed to run the artifacts.
    score = jax.export.deserialize(bytearray((out / "score.jaxexport").read_bytes()))
    user_emb, item_emb = np.load(out / "user_embeddings.npy"), np.load(out / "item_embeddings.npy")
    np.testing.assert_allclose(np.asarray(score.call(user_emb[users], item_emb)),
                               user_emb[users] @ item_emb.T, rtol=1e-5, atol=1e-6)
    indptr, indices = np.load(out / "seen_indptr.npy"), np.load(out / "seen_indices.npy")
    exclude = np.zeros((3, 41), bool)
    for row, u in enumerate(users):
        exclude[row, indices[indptr[u]:indptr[u + 1]]] = True
    values, items = exported["top_k"].call(user_emb[users], item_emb, exclude)
    np.testing.assert_array_equal(np.asarray(items), again.recommend(users, k=10)[0])
    (out / "item_embeddings.npy").write_bytes(np.zeros(3).tobytes())
    with pytest.raises(DataError, match="checksum"):
        load_export(out)


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_and_save_never_replace_a_folder_that_is_not_theirs(bpr_run, tmp_path, capsys):
    from jaxrec.cli.main import main

    workdir, dataset = bpr_run
    run_copy = tmp_path / "run_copy"
    shutil.copytree(workdir, run_copy)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine\n")
    a_file = tmp_path / "metrics.json"
    a_file.write_text("{}\n")
    before = {folder: _tree(folder) for folder in (run_copy, other)}
    rec = Recommender.load(workdir, dataset=dataset)
    for target, message in ((run_copy, "is not a jaxrec export"), (other, "is not a jaxrec export"),
                            (a_file, "a file already stands there"), (a_file / "x", "is a file, not a folder")):
        assert main(["export", str(workdir), "--output", str(target)]) == 1
        assert message in capsys.readouterr().err
        with pytest.raises(ConfigError, match="is not a saved served model|a file already|is a file, not"):
            rec.save(target)
    assert {folder: _tree(folder) for folder in (run_copy, other)} == before  # untouched, byte for byte
    assert a_file.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "notes", "run_copy"]  # no leftovers
    # New, empty and earlier folders of the same kind are written (an earlier one replaced whole).
    (tmp_path / "empty").mkdir()
    assert main(["export", str(workdir), "--output", str(tmp_path / "empty"), "--k", "3"]) == 0
    assert main(["export", str(workdir), "--output", str(tmp_path / "empty"), "--k", "4"]) == 0
    assert json.loads((tmp_path / "empty" / "manifest.json").read_text())["k"] == 4
    saved = rec.save(tmp_path / "served")
    assert rec.save(saved) == saved
    with pytest.raises(ConfigError, match="is not a saved served model"):
        rec.save(tmp_path / "empty")  # an export is not a served model
    with pytest.raises(ConfigError, match="is not a jaxrec export"):
        export_run(rec, saved)  # nor the other way round


def test_a_refused_item_never_reaches_the_servers_log(bpr_run, vbpr_run, tmp_path, monkeypatch):
    # The server checks an item before it logs it: a crash between logging and refusing would
    # leave a record the next start replays, and refuses again, so that state never started.
    from jaxrec.serve._server import InputError, Service

    for (workdir, dataset), refused in ((bpr_run, True), (vbpr_run, False)):
        service = Service(workdir, tmp_path / f"state_{workdir.name}")
        service.start()
        try:
            widths = dict(Recommender.load(workdir, dataset=dataset).feature_dims) or {"img": 6, "txt": 5}
            features = {name: np.full((1, d), 0.5, np.float32) for name, d in widths.items()}
            logged = []
            original = service.log.append_item
            monkeypatch.setattr(service.log, "append_item", lambda *a, **k: logged.append(a) or original(*a, **k))
            version = service.recommender.version
            if refused:
                with pytest.raises(InputError, match="ID only|without item features"):
                    service.add_item(features)
                assert logged == [] and service.recommender.version == version  # never logged
            else:
                assert service.add_item(features) == service.recommender.n_items - 1 and len(logged) == 1
        finally:
            service.shutdown(snapshot=False)


def test_load_resolves_search_folders_and_refuses_others(bpr_run, tmp_path):
    workdir, dataset = bpr_run
    search = tmp_path / "search"
    shutil.copytree(workdir, search / "trial_001")
    (search / "search.json").write_text(json.dumps({"best": {"trial": 1, "workdir": "/elsewhere/trial_001"}}))
    assert Recommender.load(search, dataset=dataset).source == (search / "trial_001").resolve()
    (search / "search.json").write_text(json.dumps({"best": None}))
    with pytest.raises(ConfigError, match="no winning trial"):
        Recommender.load(search, dataset=dataset)
    with pytest.raises(ConfigError, match="neither a jaxrec run"):
        Recommender.load(tmp_path, dataset=dataset)
    with pytest.raises(ConfigError, match="no such run folder"):
        Recommender.load(tmp_path / "missing")


def test_export_command(bpr_run, tmp_path):
    from jaxrec.cli.main import main

    workdir, _ = bpr_run
    assert main(["export", str(workdir), "--output", str(tmp_path / "out"), "--k", "5"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["k"] == 5 and set(manifest["sha256"]) >= {"score.jaxexport", "user_embeddings.npy"}
    assert main(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "o2")]) == 1
