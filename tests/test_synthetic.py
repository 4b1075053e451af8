"""Tests of the synthetic data generator against independent computations.

Sampler exactness is checked against the closed-form softmax, split sizes against integer
arithmetic per user, feature informativeness with a least-squares probe on held-out items.
"""

import math

import numpy as np
import pytest

from jaxrec.data import _synthetic_interactions as sampling
from jaxrec.data._synthetic import _STREAM_ACTIVITY, default_dataset, make_synthetic
from jaxrec.errors import ConfigError


def _all_arrays(data):
    inter = data.interactions
    arrays = {"users": inter.users, "items": inter.items, "split": inter.split}
    for name, mod in data.modalities.items():
        arrays[f"{name}.features"] = mod.features
        arrays[f"{name}.mask"] = mod.mask
        if mod.lengths is not None:
            arrays[f"{name}.lengths"] = mod.lengths
    return arrays


def _gini(counts):
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _probe_r2(features, targets, n_train):
    """R^2 of a least-squares linear probe fitted on the first rows, scored on the rest."""
    design = np.c_[features, np.ones(len(features))].astype(np.float64)
    weights, *_ = np.linalg.lstsq(design[:n_train], targets[:n_train], rcond=None)
    held_out = targets[n_train:]
    residual = ((design[n_train:] @ weights - held_out) ** 2).sum()
    return 1.0 - residual / ((held_out - held_out.mean(0)) ** 2).sum()


SMALL = dict(n_interactions=1500, dims={"text": 8, "image": 12}, sequence_modality=("video", 6, 5),
             missing_rate=0.2)


@pytest.mark.parametrize("sampler", ["exact", "candidates"])
def test_same_seed_bitwise_equal_and_other_seed_differs(sampler):
    first = _all_arrays(make_synthetic(120, 90, seed=7, sampler=sampler, **SMALL))
    again = _all_arrays(make_synthetic(120, 90, seed=7, sampler=sampler, **SMALL))
    other = _all_arrays(make_synthetic(120, 90, seed=8, sampler=sampler, **SMALL))
    for key, array in first.items():
        assert array.dtype == again[key].dtype and array.tobytes() == again[key].tobytes(), key
    for key in ("items", "split", "text.features", "video.features", "text.mask"):
        assert first[key].tobytes() != other[key].tobytes(), key


def test_a_modality_does_not_depend_on_which_others_are_generated():
    both = make_synthetic(30, 25, n_interactions=200, seed=3, dims={"image": 5, "text": 4})
    alone = make_synthetic(30, 25, n_interactions=200, seed=3, dims={"text": 4})
    assert both.modalities["text"].features.tobytes() == alone.modalities["text"].features.tobytes()
    assert both.interactions.items.tobytes() == alone.interactions.items.tobytes()


def test_shapes_dtypes_counts_and_distinct_pairs():
    data = make_synthetic(120, 90, seed=1, **SMALL)
    inter = data.interactions
    assert (data.n_users, data.n_items, len(inter)) == (120, 90, 1500)
    assert inter.users.dtype == np.int32 and inter.items.dtype == np.int32 and inter.split.dtype == np.int8
    assert inter.ratings is None and inter.timestamps is None
    pairs = inter.users.astype(np.int64) * data.n_items + inter.items
    assert len(np.unique(pairs)) == len(pairs), "a user got the same item twice"
    assert np.all(np.diff(pairs) > 0), "rows are sorted by (user, item)"
    assert data.modality_names == ("text", "image", "video")
    assert data.modalities["text"].features.shape == (90, 8)
    assert data.modalities["video"].features.shape == (90, 6, 5)
    for mod in data.modalities.values():
        assert mod.features.dtype == np.float32 and mod.mask.dtype == np.bool_
        assert mod.n_missing == round(0.2 * 90)
        assert not np.any(mod.features[~mod.mask]), "missing rows must be zero"
        assert np.all(np.abs(mod.features[mod.mask]).reshape(mod.mask.sum(), -1).sum(1) > 0)
    # Different modalities miss different items (independent draws).
    assert not np.array_equal(data.modalities["text"].mask, data.modalities["image"].mask)


def test_density_gives_the_same_count_as_n_interactions():
    by_density = make_synthetic(40, 50, density=0.25, seed=2, dims={"a": 3})
    assert len(by_density.interactions) == 500


def test_user_activity_sums_exactly_respects_floor_and_cap_and_is_heavy_tailed():
    rng = np.random.default_rng(0)
    counts = sampling.user_activity(2000, 500, 60_000, 5, rng)
    assert counts.sum() == 60_000 and counts.min() >= 5 and counts.max() <= 500
    assert counts.max() > 4 * np.median(counts)
    # Near-full matrix: most users hit the cap of n_items and the total is still exact.
    capped = sampling.user_activity(10, 12, 115, 5, np.random.default_rng(1))
    assert capped.sum() == 115 and capped.max() == 12 and capped.min() >= 5
    # Fewer interactions than users x floor: the floor drops so the total still fits.
    sparse = sampling.user_activity(100, 50, 150, 5, np.random.default_rng(2))
    assert sparse.sum() == 150 and sparse.min() >= 1


def test_split_ratio_per_user_matches_integer_rounding_and_is_random():
    data = make_synthetic(300, 200, n_interactions=9000, seed=3, dims={"a": 2})
    inter = data.interactions
    for user in range(data.n_users):
        labels = inter.split[inter.users == user]
        k = len(labels)
        # 10% rounded half up is (k + 5) // 10 in integers; train keeps at least one row.
        n_test = min((k + 5) // 10, max(k - 1, 0))
        n_valid = min((k + 5) // 10, max(k - 1 - n_test, 0))
        assert np.bincount(labels, minlength=3).tolist() == [k - n_valid - n_test, n_valid, n_test], user
    # Random, not positional: the test rows are not always each user's largest item ids.
    test_is_last = [inter.split[inter.users == u][-1] == 2 for u in range(data.n_users)]
    assert np.mean(test_is_last) < 0.4
    sizes = data.split_sizes()
    assert abs(sizes["train"] / len(inter) - 0.8) < 0.03


def test_popularity_skew_concentrates_interactions():
    shares, ginis = [], []
    for skew in (0.0, 1.0, 1.5):
        data = make_synthetic(800, 600, n_interactions=16_000, seed=4, popularity_skew=skew, dims={"a": 2})
        counts = np.bincount(data.interactions.items, minlength=data.n_items)
        shares.append(np.sort(counts)[::-1][:60].sum() / counts.sum())
        ginis.append(_gini(counts))
    assert shares[1] > 0.35 and shares[2] > shares[1] > shares[0]
    assert ginis[2] > ginis[1] > ginis[0]


def test_modalities_predict_held_out_item_factors_and_fusion_helps():
    data, truth = make_synthetic(300, 1200, n_interactions=6000, seed=5, return_truth=True)
    factors = truth.item_factors.astype(np.float64)
    single = {name: _probe_r2(mod.features, factors, 900) for name, mod in data.modalities.items()}
    fused = _probe_r2(np.concatenate([m.features for m in data.modalities.values()], axis=1), factors, 900)
    assert fused > 0.8, (fused, single)
    assert max(single.values()) < fused - 0.1, (fused, single)  # each modality sees a subspace only
    # The probe can fail: features of other items carry no information.
    shuffled = data.modalities["image"].features[np.random.default_rng(0).permutation(1200)]
    assert _probe_r2(shuffled, factors, 900) < 0.05


def test_interactions_follow_affinity():
    data, truth = make_synthetic(400, 300, n_interactions=8000, seed=6, return_truth=True, dims={"a": 2})
    inter = data.interactions
    chosen = np.einsum("ij,ij->i", truth.user_factors[inter.users], truth.item_factors[inter.items])
    rng = np.random.default_rng(1)
    random_pairs = np.einsum("ij,ij->i", truth.user_factors[rng.integers(0, 400, 8000)],
                             truth.item_factors[rng.integers(0, 300, 8000)])
    assert chosen.mean() > random_pairs.mean() + 1.0 * random_pairs.std()


def _softmax_target(truth, user):
    logits = truth.affinity_scale * truth.item_factors @ truth.user_factors[user] + truth.item_log_popularity
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def test_exact_sampler_draws_from_the_closed_form_softmax():
    _, truth = make_synthetic(3, 25, n_interactions=15, seed=9, return_truth=True, dims={"a": 2}, popularity_skew=1.2)
    draws = 40_000
    rows = np.zeros(draws, dtype=np.int64)  # the same user, one item per row: independent draws
    _, items = sampling._exact_chunk(rows, truth.user_factors, truth.item_factors, truth.item_log_popularity,
                                     np.ones(1, np.int64)[rows], truth.affinity_scale, np.random.default_rng(0))
    empirical = np.bincount(items, minlength=25) / draws
    target = _softmax_target(truth, 0)
    assert 0.5 * np.abs(empirical - target).sum() < 0.02  # total variation; sampling noise ~0.01
    # Several items per user come out distinct, best first.
    _, many = sampling._exact_chunk(np.arange(3), truth.user_factors, truth.item_factors, truth.item_log_popularity,
                                    np.array([25, 10, 1]), truth.affinity_scale, np.random.default_rng(1))
    assert len(many) == 36 and sorted(many[:25].tolist()) == list(range(25)) and len(set(many[25:35])) == 10


def test_candidate_sampler_tends_to_the_softmax_with_oversampling():
    _, truth = make_synthetic(3, 25, n_interactions=15, seed=9, return_truth=True, dims={"a": 2}, popularity_skew=1.2)
    table = sampling._alias_table(np.exp(truth.item_log_popularity.astype(np.float64)))
    target = _softmax_target(truth, 0)
    distances = []
    for oversample in (1, 64):
        picks = []
        for chunk in range(40):  # 40 x 500 users, all copies of user 0, one item each
            rows = np.zeros(500, dtype=np.int64)
            _, items, short = sampling._candidate_chunk(rows, truth.user_factors, truth.item_factors, table,
                                                        np.ones(1, np.int64), truth.affinity_scale, oversample,
                                                        np.random.default_rng([oversample, chunk]))
            assert short.size == 0
            picks.append(items)
        empirical = np.bincount(np.concatenate(picks), minlength=25) / 20_000
        distances.append(0.5 * np.abs(empirical - target).sum())
    assert distances[1] < 0.03 < distances[0]  # oversample 1 is pure popularity sampling


def test_alias_table_reproduces_the_distribution_exactly():
    probs = np.random.default_rng(3).random(200) ** 4
    probs /= probs.sum()
    table = sampling._alias_table(probs)
    implied = table.keep_probability / 200
    np.add.at(implied, table.alias, (1 - table.keep_probability) / 200)
    np.testing.assert_allclose(implied, probs, atol=1e-12)


def test_candidate_sampler_retries_short_users_then_falls_back_with_exact_counts(monkeypatch):
    # 40 items under a steep prior: popularity draws often hold too few distinct items.
    short_per_round, exact_users = [], []
    candidate_chunk, exact_chunk = sampling._candidate_chunk, sampling._exact_chunk

    def counting_candidate_chunk(rows, *args):
        result = candidate_chunk(rows, *args)
        short_per_round.append(len(result[2]))
        return result

    def counting_exact_chunk(rows, *args):
        exact_users.extend(rows.tolist())
        return exact_chunk(rows, *args)

    monkeypatch.setattr(sampling, "_candidate_chunk", counting_candidate_chunk)
    monkeypatch.setattr(sampling, "_exact_chunk", counting_exact_chunk)
    data = make_synthetic(60, 40, n_interactions=1200, seed=10, popularity_skew=2.0, sampler="candidates", dims={"a": 2})
    assert short_per_round[0] > short_per_round[-1] > 0 and len(exact_users) == short_per_round[-1]
    inter = data.interactions
    pairs = inter.users.astype(np.int64) * 40 + inter.items
    assert len(inter) == 1200 and len(np.unique(pairs)) == 1200
    expected = sampling.user_activity(60, 40, 1200, 5, sampling.stream_rng(10, _STREAM_ACTIVITY))
    np.testing.assert_array_equal(np.bincount(inter.users, minlength=60), expected)


def test_sequence_modality_lengths_and_padding():
    data = make_synthetic(50, 200, n_interactions=800, seed=11, dims={"a": 2}, sequence_modality=("video", 9, 4),
                          missing_rate={"video": 0.25})
    video = data.modalities["video"]
    assert video.is_sequence and video.lengths.dtype == np.int32
    present = video.lengths[video.mask]
    assert present.min() >= math.ceil(9 / 2) and present.max() <= 9 and len(np.unique(present)) == 5
    assert np.all(video.lengths[~video.mask] == 0)
    steps = np.arange(9)[None, :]
    valid = steps < video.lengths[:, None]
    assert not np.any(video.features[~valid]), "padding frames must be zero"
    assert np.all(np.abs(video.features[valid]).sum(-1) > 0)
    # Frames drift: the first and last valid frames of an item differ beyond the noise level.
    first, last = video.features[video.mask, 0], video.features[video.mask, 4]
    assert np.mean(np.linalg.norm(first - last, axis=1)) > 0.3 * math.sqrt(2 * 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_interactions=10, density=0.1), "exactly one"),
    (dict(), "exactly one"),
    (dict(n_interactions=10_000), "cannot fit"),
    (dict(n_interactions=50, missing_rate={"sound": 0.1}), "unknown modalities"),
    (dict(n_interactions=50, missing_rate=1.0), "missing_rate"),
    (dict(n_interactions=50, noise=-1.0), "noise"),
    (dict(n_interactions=50, temperature=0.0), "temperature"),
    (dict(n_interactions=50, split="temporal"), "unknown split"),
    (dict(n_interactions=50, split_ratios=(0.5, 0.5, 0.5)), "split_ratios"),
    (dict(n_interactions=50, sampler="dense"), "unknown sampler"),
    (dict(n_interactions=50, seed=-1), "seed"),
    (dict(n_interactions=50, sequence_modality=("text", 4, 3)), "clashes"),
    (dict(n_interactions=50, sequence_modality=("video", 4)), r"\(name, T, d\)"),
])
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_synthetic(20, 30, **kwargs)


def test_default_dataset_is_the_documented_size_and_cached():
    data = default_dataset()
    assert (data.n_users, data.n_items, len(data.interactions)) == (2000, 1500, 60_000)
    assert {n: m.dim for n, m in data.modalities.items()} == {"text": 64, "image": 96, "audio": 32}
    assert data.modalities["audio"].n_missing == 150
    assert default_dataset() is data
