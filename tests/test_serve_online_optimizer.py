"""Online updates' optimizer against hand-worked numbers: the step size is ``OnlineConfig``'s
learning rate (Adam's first step moves every entry with a gradient by that rate, since
``m_hat / sqrt(v_hat) = g / |g|`` there), Adam's state and the step counter carry over from one
update to the next while the tables keep their capacities (step counts from the documented
formula), and the state is re-made when a table grows. Negatives of an update come from the
real catalogue, outside each user's known items, never from the capacity padding."""

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrec.data import make_synthetic
from jaxrec.serve import OnlineConfig, Recommender
from jaxrec.serve import _grow, _online
from jaxrec.serve._snapshot import make_snapshot, seen_pairs
from jaxrec.train import config_from_dict, init_state, prepare_experiment


@pytest.fixture(scope="module")
def experiment():
    dataset = make_synthetic(n_users=30, n_items=20, n_interactions=300, seed=3)
    config = config_from_dict({"data": {"synthetic": {}}, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
                               "train": {"batch_size": 64, "learning_rate": 0.02, "seed": 5}})
    return prepare_experiment(config, dataset)


def served(exp, online):
    """A served BPR-MF at its initial parameters, laid out as ``Recommender.load`` lays out a run
    (no training: the optimizer's arithmetic is all these tests look at)."""
    state = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, 5)
    base = exp.dataset
    learner = _online.Learner(config=exp.config, base=base, built=exp.built, ctx=exp.built.ctx, params=state.params,
                              opt_state=None, step=0, rng=state.rng, loss_weights=dict(exp.loss_weights),
                              events=np.zeros((0, 2), np.int32), added=_grow.AddedItems.empty(base),
                              n_users=base.n_users, n_items=base.n_items, cap_users=base.n_users,
                              cap_items=base.n_items)
    snapshot = make_snapshot(learner, 0, seen_pairs(base, ("train",), learner.events), 0, np.zeros(0, np.int64))
    return Recommender(snapshot, source=Path("."), online=online)


def _adam_count(opt_state) -> int:
    counts = [int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
              if "count" in jax.tree_util.keystr(path)]
    assert counts and len(set(counts)) == 1, counts  # Adam's count (and the schedule's, where it keeps one)
    return counts[0]


def _update_steps(n_events, online):
    """The documented number of steps of one update (``OnlineConfig`` and ``training_batches``)."""
    draws = max(1, round(online.passes * n_events))
    new_rows = max(1, min(online.batch_size, round(online.batch_size * online.new_share), draws))
    return min(max(-(-draws // new_rows), online.min_steps), online.max_steps)


def test_the_first_online_step_moves_each_entry_by_the_online_learning_rate(experiment):
    online = OnlineConfig(batch_size=64, learning_rate=0.5, min_steps=1, max_steps=1)  # the run's rate: 0.02
    rec = served(experiment, online)
    before = np.asarray(rec.snapshot.learner.params["user_embedding"], np.float64)
    rec.update(np.array([[0, 1]]))  # a known user and item: no table grows
    after = np.asarray(rec.snapshot.learner.params["user_embedding"], np.float64)
    moved = np.abs(after - before)
    assert moved.max() == pytest.approx(0.5, rel=1e-3)
    assert np.all(moved <= 0.5 * (1 + 1e-6))


def test_adam_state_and_step_carry_over_between_updates_until_a_table_grows(experiment):
    online = OnlineConfig(batch_size=64, passes=4.0, new_share=0.5, min_steps=3, max_steps=50)
    rec = served(experiment, online)
    first, second = np.array([[0, 1], [2, 3]]), np.array([[4, 5]])
    steps = [_update_steps(len(first), online), _update_steps(len(second), online)]
    assert steps == [3, 3]  # 8 draws in batches of 8 new rows -> 1 step, raised to min_steps
    rec.update(first)
    learner = rec.snapshot.learner
    assert (learner.step, _adam_count(learner.opt_state)) == (3, 3)
    rec.update(second)  # known ids again: the same capacities, so the optimizer state carries over
    learner = rec.snapshot.learner
    assert (learner.step, _adam_count(learner.opt_state)) == (6, 6)
    # A new user and a new item double the tables: Adam's state is re-made for the new shapes (its
    # count restarts), the step counter (which keys each step's dropout) goes on.
    capacities = (learner.cap_users, learner.cap_items)
    rec.update(np.array([[rec.n_users, rec.n_items]]))
    learner = rec.snapshot.learner
    assert learner.cap_users > capacities[0] and learner.cap_items > capacities[1]
    assert (learner.step, _adam_count(learner.opt_state)) == (9, 3)

    # The next update's negatives: real items only (the grown table's padding rows are never
    # drawn), none of them a known item of the row's user.
    assert learner.cap_items > learner.n_items
    events = np.array([[1, 2], [3, 4]])
    batches = _online.training_batches(learner, events, OnlineConfig(batch_size=64, max_steps=4), version=5)
    known = {}
    for user, item in learner.train_pairs():
        known.setdefault(int(user), set()).add(int(item))
    negatives = batches["neg_items"]
    assert negatives.min() >= 0 and negatives.max() < learner.n_items
    for user, row in zip(batches["users"].reshape(-1), negatives.reshape(len(batches["users"].reshape(-1)), -1)):
        assert not set(row.tolist()) & known.get(int(user), set())
