"""Audit of what a finished run reports: its ``metrics.json`` (and ``jaxrec evaluate``) against a
plain-numpy recomputation from the run's exported embeddings and its split pairs, under the Cornac
protocol with a user sample, following the documented definitions only (no jaxrec.eval helper)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_eval_audit_inputs import _hand_metrics  # one hand-written reference for both files

KS = (1, 5, 40)  # 40 = every item
SAMPLE, SAMPLE_SEED = 20, 4


def _config(**eval_args):
    from jaxrec.train import config_from_dict

    return config_from_dict({
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "data": {"synthetic": {"n_users": 60, "n_items": 40, "n_interactions": 900, "seed": 3}},
        "train": {"epochs": 2, "batch_size": 256, "valid_metric": "ndcg@5", "learning_rate": 0.01},
        "eval": {"ks": list(KS), "metrics": ["recall", "ndcg", "precision", "map", "hit", "mrr", "recall2"],
                 "protocol": "cornac", "test_every_epoch": True, **eval_args},
    })


def _naive(scores, masked_pairs, target_pairs, ks):
    """Per-user full ranking: masked items dropped (the user's held-out items never are: Cornac),
    descending score then ascending id; MMRec recall/NDCG/precision/MAP, RecBole hit/MRR averaged over
    users with held-out items; recall2 = all hits / all held-out pairs."""
    held, masked = {}, {}
    for u, i in target_pairs.tolist():
        held.setdefault(u, set()).add(i)
    for pairs in masked_pairs:
        for u, i in pairs.tolist():
            masked.setdefault(u, set()).add(i)
    out, total_hits = {}, {k: 0 for k in ks}
    for u, items in held.items():
        drop = masked.get(u, set()) - items
        ranked = sorted((i for i in range(scores.shape[1]) if i not in drop), key=lambda i: (-scores[u, i], i))
        for k in ks:
            hit_list = [int(i in items) for i in ranked]
            total_hits[k] += sum(hit_list[:k])
            values = _hand_metrics(hit_list, len(items), k)
            for name, value in values.items():
                out.setdefault(f"{name}@{k}", []).append(value)
    result = {key: float(np.mean(values)) for key, values in out.items()}
    for k in ks:
        result[f"recall2@{k}"] = total_hits[k] / sum(len(items) for items in held.values())
    result["num_users"] = len(held)
    return result


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    from jaxrec.serve import export_run
    from jaxrec.train import prepare_experiment, train_and_evaluate

    root = tmp_path_factory.mktemp("sampled")
    config = _config(user_sample=SAMPLE, user_sample_seed=SAMPLE_SEED)
    train_and_evaluate(config, root / "run", quiet=True)
    export_run(root / "run", root / "export")
    dataset = prepare_experiment(config).dataset
    pairs = {name: np.asarray(dataset.split_pairs(name)) for name in ("train", "valid", "test")}
    return root, pairs


def test_metrics_json_equals_a_numpy_recomputation_of_the_sampled_users(sampled_run):
    root, pairs = sampled_run
    scores = (np.load(root / "export" / "user_embeddings.npy").astype(np.float64)
              @ np.load(root / "export" / "item_embeddings.npy").astype(np.float64).T)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    for split in ("valid", "test"):
        # eval.user_sample as documented: N users drawn by default_rng(seed) from the split's sorted users.
        users = np.sort(np.random.default_rng(SAMPLE_SEED).choice(np.unique(pairs[split][:, 0]), SAMPLE,
                                                                   replace=False))
        keep = {name: p[np.isin(p[:, 0], users)] for name, p in pairs.items()}
        masked = [keep["train"]] + ([keep["valid"]] if split == "test" else [])  # Cornac: valid masked at test
        expected = _naive(scores, masked, keep[split], KS)
        assert expected["num_users"] == SAMPLE
        assert set(metrics[split]) == {key for key in expected if "@" in key}
        for key, value in metrics[split].items():
            assert value == pytest.approx(expected[key], abs=1e-6), (split, key)


def test_evaluate_run_of_a_sampled_run_says_it_ranks_the_sample(sampled_run):
    from jaxrec.train._evaluate_run import evaluate_run

    root, _ = sampled_run
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    result = evaluate_run(root / "run", "test")
    assert result["num_users"] == SAMPLE
    assert result["eval_user_sample"] == {"users": SAMPLE, "seed": SAMPLE_SEED} == metrics["eval_user_sample"]
    for key, value in metrics["test"].items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-7), key
