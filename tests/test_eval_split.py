"""evaluate_split / evaluate_protocol / top_k_items against the naive per-user reference.

Embeddings are small integers, so float32 device scores and the reference's scores are the
same exact integers, and ties are plentiful: the tie-breaking rule is tested, not avoided.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrec.eval as jeval
from jaxrec.errors import ConfigError, DataError
from jaxrec.eval import _ranking
from test_eval_reference import METRICS, naive_evaluate, naive_ranking

ALL_METRICS = METRICS + ("recall2",)


def make_case(seed, *, num_users, num_items, dim, low, high, num_train, num_targets):
    rng = np.random.default_rng(seed)
    user_emb = rng.integers(low, high + 1, (num_users, dim)).astype(np.float32)
    item_emb = rng.integers(low, high + 1, (num_items, dim)).astype(np.float32)
    train = np.stack([rng.integers(0, num_users, num_train),
                      rng.integers(0, num_items, num_train)], 1)
    # Targets for only some users, so that users without held-out items exist.
    target_users = rng.choice(num_users, size=max(1, num_users * 2 // 3), replace=False)
    targets = np.stack([rng.choice(target_users, num_targets),
                        rng.integers(0, num_items, num_targets)], 1)
    scores = user_emb.astype(np.int64) @ item_emb.T.astype(np.int64)
    return user_emb, item_emb, train, targets, scores.astype(np.float64)


def assert_matches(got, expected):
    assert got["num_users"] == expected["num_users"]
    assert got["num_targets"] == expected["num_targets"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=2e-6), key


@pytest.mark.parametrize("seed, dim, low, high, batch_size", [
    (0, 3, -2, 2, 8),     # several batches, the last one padded
    (1, 2, -1, 1, None),  # scores in {-2..2}: heavy ties and signed zeros
    (2, 1, 0, 1, 5),      # scores 0/1 only: almost everything ties
])
@pytest.mark.parametrize("hits_from", ["rank_slots", "target_slots", "scatter"])
def test_evaluate_split_matches_naive(seed, dim, low, high, batch_size, hits_from, monkeypatch):
    # Every way of finding the hits: the held-out items' counted ranks (no top-k), the top-k list
    # against per-row target slots (above the rank-slot limit), and (above the slot limit) the
    # scattered (B, num_items) target matrix.
    from jaxrec.eval import _evaluate
    if hits_from != "rank_slots":
        monkeypatch.setattr(_ranking, "MAX_RANK_SLOTS", 0)
    if hits_from == "scatter":
        monkeypatch.setattr(_evaluate, "_MAX_TARGET_SLOTS", 0)
    user_emb, item_emb, train, targets, scores = make_case(
        seed, num_users=37, num_items=23, dim=dim, low=low, high=high, num_train=260,
        num_targets=90)
    ks = (1, 3, 10, 20, 30)  # 30 > 23 items
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=targets,
                               ks=ks, metrics=ALL_METRICS, batch_size=batch_size)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=targets, ks=ks,
                              metrics=ALL_METRICS)
    assert 0 < expected["num_users"] < 37  # some users have no held-out items
    split = jeval.prepare_split(num_items=23, train_pairs=train, target_pairs=targets, batch_size=batch_size)
    assert [key for key in ("rank_slots", "target_slots") if key in split.batches] == (
        [] if hits_from == "scatter" else [hits_from])
    assert_matches(got, expected)


@pytest.mark.parametrize("sums", ["float32", "int32"])
def test_rank_counts_are_exact_in_either_sum(sums, monkeypatch):
    # The per-slot counts are float32 products with a ones vector while every row total stays
    # below 2**24 (exact), int32 sums above; both must give the naive metrics. Scores with
    # heavy ties, so the id tie-break decides many places.
    if sums == "int32":
        monkeypatch.setattr(_ranking, "_FLOAT_EXACT", 0)
    user_emb, item_emb, train, targets, scores = make_case(
        5, num_users=41, num_items=29, dim=2, low=-1, high=1, num_train=300, num_targets=120)
    ks = (1, 5, 10, 40)
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=targets, ks=ks,
                               metrics=ALL_METRICS, batch_size=16)
    assert_matches(got, naive_evaluate(scores, train_pairs=train, target_pairs=targets, ks=ks, metrics=ALL_METRICS))


def outer_product_scores(users, user_emb, item_emb):
    """Elementwise products (no accumulation), so -1 * 0 stays -0.0 beside +0.0 scores."""
    return user_emb[users][:, :1] * item_emb[:, 0][None, :]


def test_signed_zero_scores_tie():
    user_emb, item_emb, train, targets, _ = make_case(
        11, num_users=24, num_items=16, dim=1, low=-1, high=1, num_train=60, num_targets=70)
    scores = np.outer(user_emb[:, 0], item_emb[:, 0]).astype(np.float64)
    assert np.signbit(scores[scores == 0]).any() and not np.signbit(scores[scores == 0]).all()
    ks = (2, 5, 10)
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=targets,
                               ks=ks, score_fn=outer_product_scores, batch_size=8)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=targets, ks=ks)
    assert_matches(got, expected)


def test_users_with_fewer_rankable_items_than_k():
    # Users 0-9 have every item but 2 excluded; k = 5, 8 exceed what they can be shown.
    user_emb, item_emb, _, targets, scores = make_case(
        3, num_users=20, num_items=12, dim=2, low=-2, high=2, num_train=0, num_targets=60)
    heavy = np.array([(u, i) for u in range(10) for i in range(12) if i not in (u % 12, 11)])
    ks = (1, 2, 5, 8)
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=heavy, target_pairs=targets,
                               ks=ks, metrics=ALL_METRICS, batch_size=6)
    expected = naive_evaluate(scores, train_pairs=heavy, target_pairs=targets, ks=ks,
                              metrics=ALL_METRICS)
    assert_matches(got, expected)


def test_cold_start_candidates_and_extra_exclusions():
    user_emb, item_emb, train, targets, scores = make_case(
        4, num_users=30, num_items=25, dim=2, low=-2, high=2, num_train=200, num_targets=150)
    candidates = np.array([3, 7, 8, 11, 19, 24, 7])  # duplicate 7 is harmless
    extra = np.stack([np.arange(30), (np.arange(30) * 7) % 25], 1)
    ks = (1, 4, 6, 10)  # 10 > 6 candidates
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=targets,
                               extra_exclude_pairs=extra, candidate_items=candidates, ks=ks,
                               metrics=ALL_METRICS, batch_size=7)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=targets,
                              extra_exclude_pairs=extra, candidate_items=candidates, ks=ks,
                              metrics=ALL_METRICS)
    assert_matches(got, expected)
    on_candidates = np.isin(targets[:, 1], candidates)
    assert got["num_dropped_targets"] == int((~on_candidates).sum()) > 0


@pytest.mark.parametrize("protocol", ["mmrec", "cornac"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_protocols_match_naive(protocol, split):
    user_emb, item_emb, train, test, scores = make_case(
        5, num_users=30, num_items=20, dim=2, low=-2, high=2, num_train=180, num_targets=70)
    rng = np.random.default_rng(55)
    valid = np.stack([rng.integers(0, 30, 70), rng.integers(0, 20, 70)], 1)
    # Make some held-out pairs also appear in train/valid: only Cornac keeps them rankable.
    train = np.concatenate([train, test[:10]])
    valid = np.concatenate([valid, test[10:15]])
    ks = (2, 5, 10)
    got = jeval.evaluate_protocol(user_emb, item_emb, split=split, protocol=protocol,
                                  train_pairs=train, valid_pairs=valid, test_pairs=test, ks=ks,
                                  batch_size=8)
    target = valid if split == "valid" else test
    extra = valid if (split, protocol) == ("test", "cornac") else None
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=target,
                              extra_exclude_pairs=extra, ks=ks,
                              keep_targets=protocol == "cornac")
    assert_matches(got, expected)


def test_protocols_differ_where_they_should():
    user_emb, item_emb, train, test, _ = make_case(
        6, num_users=30, num_items=20, dim=2, low=-2, high=2, num_train=150, num_targets=70)
    valid = np.stack([np.arange(30), (np.arange(30) * 3) % 20], 1)
    kwargs = dict(train_pairs=train, valid_pairs=valid, test_pairs=test, ks=(5,))
    mmrec = jeval.evaluate_protocol(user_emb, item_emb, split="test", **kwargs)
    cornac = jeval.evaluate_protocol(user_emb, item_emb, split="test", protocol="cornac",
                                     **kwargs)
    assert mmrec["recall@5"] != cornac["recall@5"]
    pairs = jeval.protocol_pairs(protocol="cornac", split="test", num_items=20, train_pairs=train,
                                 valid_pairs=valid, test_pairs=test)
    assert pairs["extra_exclude_pairs"] is not None
    assert jeval.protocol_pairs(protocol="mmrec", split="test", num_items=20, train_pairs=train,
                                valid_pairs=valid, test_pairs=test)["extra_exclude_pairs"] is None


def distance_scores(users, user_emb, item_emb):
    """A non-inner-product scorer with -inf for every third item (never recommendable)."""
    diff = user_emb[users][:, None, :] - item_emb[None, :, :]
    scores = -jnp.sum(diff * diff, axis=-1)
    return jnp.where(jnp.arange(item_emb.shape[0]) % 3 == 0, -jnp.inf, scores)


def test_custom_score_fn_and_minus_inf_scores():
    user_emb, item_emb, train, targets, _ = make_case(
        7, num_users=25, num_items=18, dim=3, low=-2, high=2, num_train=120, num_targets=80)
    diff = user_emb[:, None, :].astype(np.int64) - item_emb[None, :, :].astype(np.int64)
    scores = -np.sum(diff * diff, axis=-1).astype(np.float64)
    scores[:, np.arange(18) % 3 == 0] = -np.inf
    ks = (1, 5, 15)  # 15 > 12 finite-score items
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=train, target_pairs=targets,
                               ks=ks, score_fn=distance_scores, batch_size=10)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=targets, ks=ks)
    assert_matches(got, expected)


def test_top_k_items_matches_naive_ranking():
    user_emb, item_emb, train, _, scores = make_case(
        8, num_users=15, num_items=9, dim=2, low=-1, high=1, num_train=80, num_targets=1)
    users = np.array([4, 0, 13, 7])
    items, top_scores = jeval.top_k_items(user_emb, item_emb, users, k=12, exclude_pairs=train,
                                          candidate_items=np.arange(1, 9), batch_size=3)
    assert items.shape == top_scores.shape == (4, 12)
    for row, user in enumerate(users):
        excluded = {int(i) for u, i in train if u == user}
        expected = naive_ranking(scores[user], excluded, candidates=set(range(1, 9)))
        assert items[row].tolist() == expected + [-1] * (12 - len(expected))
        np.testing.assert_array_equal(top_scores[row, : len(expected)], scores[user, expected])
        assert np.all(top_scores[row, len(expected):] == -np.inf)


def test_lax_top_k_breaks_ties_by_lower_index():
    # The ranking contract relies on this documented lax.top_k behaviour; -0.0 ties with 0.0
    # only after masked_scores canonicalises zeros.
    values = jnp.array([[1.0, 3.0, 3.0, 0.0, -0.0, 3.0, 0.0, 1.0]])
    _, order = jax.lax.top_k(values, 8)
    assert order[0, :3].tolist() == [1, 2, 5]
    canonical = _ranking.masked_scores(values, jnp.array([1]), jnp.array([0]),
                                       jnp.ones(8, bool))  # row 1 is padding: dropped
    _, order = jax.lax.top_k(canonical, 8)
    assert order[0].tolist() == [1, 2, 5, 0, 7, 3, 4, 6]


def test_one_compilation_across_calls_with_new_embeddings():
    user_emb, item_emb, train, targets, _ = make_case(
        9, num_users=20, num_items=11, dim=2, low=-2, high=2, num_train=60, num_targets=40)
    split = jeval.prepare_split(num_items=11, train_pairs=train, target_pairs=targets,
                                batch_size=6)
    jeval.evaluate_prepared(split, user_emb, item_emb, ks=(3,))
    compiled = _ranking.split_metric_sums._cache_size()
    for scale in (2.0, -1.0, 0.5):
        jeval.evaluate_prepared(split, user_emb * scale, item_emb, ks=(3,))
    assert _ranking.split_metric_sums._cache_size() == compiled


def test_nan_scores_raise_unless_masked():
    user_emb, item_emb, train, targets, _ = make_case(
        10, num_users=10, num_items=6, dim=2, low=-2, high=2, num_train=0, num_targets=20)
    item_emb = item_emb.copy()
    item_emb[4] = np.nan
    with pytest.raises(DataError, match="NaN"):
        jeval.evaluate_split(user_emb, item_emb, train_pairs=None, target_pairs=targets, ks=(3,))
    # The same NaN item outside the candidate set never reaches the ranking.
    got = jeval.evaluate_split(user_emb, item_emb, train_pairs=None, target_pairs=targets,
                               ks=(3,), candidate_items=np.array([0, 1, 2, 3, 5]))
    assert np.isfinite(got["recall@3"])


@pytest.mark.parametrize("nan_count", ["packed", "own pass"])
@pytest.mark.parametrize("hits_from", ["rank_slots", "target_slots"])
def test_nan_count_covers_exactly_the_rankable_entries(nan_count, hits_from, monkeypatch):
    # The rank path counts NaNs on the UNMASKED scores (packed into the first slot's rank count,
    # or in a pass of its own above 46,339 items) and subtracts the excluded ones: the count
    # must be the naive one over candidates not excluded, on evaluated users only.
    if nan_count == "own pass":
        monkeypatch.setattr(_ranking, "_packs_nan_count", lambda num_items: False)
    if hits_from != "rank_slots":
        monkeypatch.setattr(_ranking, "MAX_RANK_SLOTS", 0)
    user_emb, item_emb, train, targets, _ = make_case(
        12, num_users=16, num_items=10, dim=2, low=-2, high=2, num_train=50, num_targets=30)
    user_emb, item_emb = user_emb.copy(), item_emb.copy()
    item_emb[[2, 6]] = np.nan   # item 6 is not a candidate: never counted
    user_emb[[5, 4]] = np.nan   # whole rows: user 5 is evaluated, user 4 is not (never counted)
    train = np.concatenate([train, [[u, 2] for u in range(0, 16, 3)], [[1, 2]]])  # (1, 2) twice
    candidates = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9])
    scores = user_emb.astype(np.float64) @ item_emb.T.astype(np.float64)
    evaluated = np.unique(targets[np.isin(targets[:, 1], candidates), 0])
    excluded = {(int(u), int(i)) for u, i in train}
    expected = sum(int(np.isnan(scores[u, i])) for u in evaluated for i in candidates if (u, i) not in excluded)
    assert expected > 0 and 5 in evaluated and 4 not in evaluated
    split = jeval.prepare_split(num_items=10, train_pairs=train, target_pairs=targets, candidate_items=candidates,
                                batch_size=5)
    assert hits_from in split.batches
    with pytest.raises(DataError, match=rf"found {expected} NaN scores"):
        jeval.evaluate_prepared(split, user_emb, item_emb, ks=(3,))


def test_rank_counts_subtract_excluded_items_ahead_and_never_count_an_excluded_target():
    # Hand-worked: one user, scores 5, 4, 4, 3, 0, -0.0 on items 0..5; train excludes items 0
    # and 2; the held-out items are 2 (also in train: masked, never a hit), 3 and 5.
    # Rankable order: 1 (4), 3 (3), 4 (0), 5 (-0.0 ties 0 and follows the lower id 4).
    item_emb = np.array([[5.0], [4.0], [4.0], [3.0], [0.0], [-0.0]], np.float32)
    user_emb = np.array([[1.0]], np.float32)
    split = jeval.prepare_split(num_items=6, train_pairs=np.array([[0, 0], [0, 2]]),
                                target_pairs=np.array([[0, 2], [0, 3], [0, 5]]), batch_size=1)
    assert "rank_slots" in split.batches
    got = jeval.evaluate_prepared(split, user_emb, item_emb, ks=(1, 2, 4), metrics=("recall", "precision"))
    # Hits at places 2 (item 3) and 4 (item 5); recall over the 3 held-out items.
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["recall@4"] == pytest.approx(2 / 3)
    assert got["precision@4"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(train_pairs=np.zeros((3, 3), int)), DataError, r"shape \(3, 3\)"),
    (dict(train_pairs=np.array([[0, 1], [2, 99]])), DataError, "row 1.*item id 99"),
    (dict(target_pairs=np.array([[-1, 0]])), DataError, "user id -1"),
    (dict(target_pairs=np.zeros((0, 2), int)), DataError, "no held-out pair"),
    (dict(target_pairs=np.array([[0, 1.0]])), DataError, "integer"),
    (dict(candidate_items=np.array([50])), DataError, "candidate_items"),
    (dict(ks=(0, 5)), ConfigError, "ks"),
    (dict(metrics=("recall", "auc")), ConfigError, "auc"),
    (dict(batch_size=0), ConfigError, "batch_size"),
])
def test_bad_input_raises_a_clear_error(kwargs, error, match):
    rng = np.random.default_rng(0)
    args = dict(train_pairs=np.array([[0, 1]]), target_pairs=np.array([[0, 2], [1, 3]]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        jeval.evaluate_split(rng.normal(size=(4, 2)), rng.normal(size=(6, 2)), **args)


def test_embedding_shape_errors():
    pairs = dict(train_pairs=None, target_pairs=np.array([[5, 1]]))
    with pytest.raises(DataError, match="same width"):
        jeval.evaluate_split(np.ones((6, 3)), np.ones((4, 2)), **pairs)
    with pytest.raises(DataError, match="user without an embedding"):
        jeval.evaluate_split(np.ones((3, 2)), np.ones((4, 2)), **pairs)
    with pytest.raises(ConfigError, match="protocol"):
        jeval.evaluate_protocol(np.ones((6, 2)), np.ones((4, 2)), split="test", protocol="recbole",
                                train_pairs=None, valid_pairs=None, test_pairs=pairs["target_pairs"])


@pytest.mark.shared_data
def test_real_lfm2k_split_matches_naive(lfm2k_path):
    table = np.loadtxt(lfm2k_path / "lfm2k.inter", skiprows=1, dtype=np.int64)
    pairs, label = table[:, :2], table[:, 3]
    num_users, num_items = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
    train, valid, test = pairs[label == 0], pairs[label == 1], pairs[label == 2]
    test = test[test[:, 0] < 300]  # the naive loops over 1,425 items per user are slow
    rng = np.random.default_rng(12)
    user_emb = rng.integers(-3, 4, (num_users, 6)).astype(np.float32)
    item_emb = rng.integers(-3, 4, (num_items, 6)).astype(np.float32)
    scores = (user_emb.astype(np.int64) @ item_emb.T.astype(np.int64)).astype(np.float64)
    ks = (10, 20)
    got = jeval.evaluate_protocol(user_emb, item_emb, split="test", protocol="cornac",
                                  train_pairs=train, valid_pairs=valid, test_pairs=test, ks=ks)
    expected = naive_evaluate(scores, train_pairs=train, target_pairs=test,
                              extra_exclude_pairs=valid, ks=ks, keep_targets=True)
    assert got["num_users"] == 300
    assert_matches(got, expected)


def test_top_k_items_input_errors():
    user_emb, item_emb = np.ones((5, 2), np.float32), np.ones((4, 2), np.float32)
    with pytest.raises(DataError, match="distinct"):
        jeval.top_k_items(user_emb, item_emb, np.array([1, 1]), k=2)
    with pytest.raises(DataError, match="user id 5"):
        jeval.top_k_items(user_emb, item_emb, np.array([5]), k=2)
    with pytest.raises(ConfigError, match="k must be"):
        jeval.top_k_items(user_emb, item_emb, np.array([0]), k=0)


@pytest.mark.parametrize("num_items, num_users, platform, expected", [
    (6710, 9308, "cpu", 2**20 // 6710),   # TikTok on CPU: 156 users per 4 MiB block
    (6710, 9308, "gpu", 2**24 // 6710),   # the same on an accelerator: 2,500
    (1425, 1858, "cpu", 2**20 // 1425),   # lfm2k: 735
    (1425, 1858, "tpu", 1858),            # the whole split in one block
    (50_000, 100_000, "cpu", 32),         # a large catalogue: at least 32 users per block ...
    (1_000_000, 50_000, "cpu", 32),       # ... while the block stays within 2**25 entries
    (10_000_000, 50_000, "cpu", 8),       # past that, at least 8
    (1_000_000, 50_000, "gpu", 16),
    (10, 100_000, "gpu", 4096),           # at most 4096
    (10, 5, "cpu", 5),                    # never more than the users
])
def test_auto_batch_size_keeps_the_cpu_score_block_in_cache(num_items, num_users, platform, expected):
    from jaxrec.eval._evaluate import auto_batch_size

    assert auto_batch_size(num_items, num_users, platform) == expected


def test_the_default_batch_size_follows_the_default_device_and_gives_the_same_metrics():
    rng = np.random.default_rng(3)
    train = np.stack([rng.integers(0, 300, 3000), rng.integers(0, 5000, 3000)], 1)
    targets = np.stack([np.arange(300), rng.integers(0, 5000, 300)], 1)
    split = jeval.prepare_split(num_items=5000, train_pairs=train, target_pairs=targets)
    assert jax.default_backend() == "cpu" and split.batch_size == 2**20 // 5000
    user_emb, item_emb = rng.normal(size=(300, 8)), rng.normal(size=(5000, 8))
    whole = jeval.prepare_split(num_items=5000, train_pairs=train, target_pairs=targets, batch_size=300)
    assert whole.batch_size == 300
    got = jeval.evaluate_prepared(split, user_emb, item_emb)
    want = jeval.evaluate_prepared(whole, user_emb, item_emb)
    for key in ("recall@20", "ndcg@20", "mrr@50"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
