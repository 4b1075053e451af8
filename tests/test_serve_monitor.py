"""Serving internals without HTTP: the monitors against hand-worked numbers, the event log's
durability rules, and the micro-batcher."""

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jaxrec.serve._batcher import MicroBatcher
from jaxrec.serve._events import EventLog, StateError, StateLock
from jaxrec.serve._monitor import (
    DriftMonitor,
    LatencyTimeline,
    QualityMonitor,
    popularity_percentiles,
    wasserstein_1d,
)


def test_popularity_percentile_is_the_mid_rank_among_training_counts():
    # counts 0, 1, 1, 3: value 1 has one below and two equal -> (1 + 1) / 4.
    got = popularity_percentiles([0, 1, 1, 3], [0, 1, 2, 3, 7])
    np.testing.assert_allclose(got, [0.125, 0.5, 0.75, 0.875, 1.0])


def test_quality_monitor_matches_a_hand_worked_session():
    monitor = QualityMonitor(np.array([0, 1, 1, 3]), window_seconds=10)
    monitor.set_catalog_size(5)  # item 4 was added while serving
    monitor.record_served(0, [3, 1], now=0.0)
    monitor.record_served(1, [4, 2], now=1.0)
    monitor.record_served(None, [3], now=2.0)  # a fold-in user: counted, never hit
    monitor.record_events([(0, 1), (1, 0), (0, 3)], now=5.0)  # hits user 0's list once; user 1 missed
    summary = monitor.summary(now=5.0)
    assert summary["lists_served"] == 3
    assert summary["catalog_coverage"] == pytest.approx(4 / 5)  # items 1, 2, 3, 4 of 0..4
    assert summary["cold_share"] == pytest.approx(1 / 5)  # one slot of five holds item 4
    # percentiles: 3 -> .875, 1 -> .5, 4 (added, count 0) -> .125, 2 -> .5, 3 -> .875
    assert summary["mean_popularity_percentile"] == pytest.approx((0.875 + 0.5 + 0.125 + 0.5 + 0.875) / 5)
    assert (summary["hit_lists"], summary["decided_lists"], summary["open_lists"]) == (1, 1, 1)
    assert summary["hit_rate"] == 1.0
    # user 1's list (served at 1) is still open at 11 = 1 + window: an event then is a hit ...
    edge = QualityMonitor(np.array([0, 1, 1, 3]), window_seconds=10)
    edge.record_served(1, [4, 2], now=1.0)
    edge.record_events([(1, 2)], now=11.0)
    assert edge.summary(now=11.0)["hit_rate"] == 1.0
    # ... and closed after it: decided as a miss; a late event changes nothing.
    summary = monitor.summary(now=11.5)
    assert (summary["hit_lists"], summary["decided_lists"], summary["open_lists"]) == (1, 2, 0)
    monitor.record_events([(1, 4)], now=20.0)
    assert monitor.summary(now=20.0)["hit_rate"] == 0.5


def test_quality_monitor_bounds_its_open_lists():
    monitor = QualityMonitor(np.ones(3, dtype=int), window_seconds=100, max_open_lists=2)
    for user in range(5):
        monitor.record_served(user, [0], now=0.0)
    summary = monitor.summary(now=0.0)
    assert (summary["open_lists"], summary["decided_lists"]) == (2, 3)


def test_wasserstein_matches_hand_value_and_scipy():
    # F_u steps 1/3 at 0, 2, 4; F_v steps 1/2 at 4, 6: |F_u - F_v| integrates to 2/3 + 4/3 + 1.
    assert wasserstein_1d([0, 2, 4], [4, 6]) == pytest.approx(3.0)
    scipy_stats = pytest.importorskip("scipy.stats", reason="scipy (in the test extra) is the independent reference")
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=50), rng.normal(0.4, 2.0, size=31)
    assert wasserstein_1d(u, v) == pytest.approx(scipy_stats.wasserstein_distance(u, v), rel=1e-12)


def test_drift_monitor_z_scores_and_distance_by_hand():
    train = {"a": np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]), "b": np.zeros((3, 4))}
    monitor = DriftMonitor(train)
    assert monitor.summary()["a"] == {"n_added": 0, "z_max": None, "z_mean": None, "w1": None}
    monitor.record_added({"a": np.array([[4.0, 5.0], [6.0, 5.0]])})
    report = monitor.summary()["a"]
    sd = math.sqrt(8 / 3)  # dimension 1 is constant in training: left out
    assert report["n_added"] == 2
    assert report["z_max"] == pytest.approx((5 - 2) / (sd / math.sqrt(2)))
    assert report["z_mean"] == pytest.approx(report["z_max"])
    assert report["w1"] == pytest.approx(3.0 / sd)
    assert monitor.summary()["b"]["n_added"] == 0


def test_drift_of_items_from_the_training_distribution_is_small():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor({"x": rng.normal(size=(4000, 8))})
    monitor.record_added({"x": rng.normal(size=(400, 8))})
    same = monitor.summary()["x"]
    shifted = DriftMonitor({"x": rng.normal(size=(4000, 8))})
    shifted.record_added({"x": rng.normal(1.0, 1.0, size=(400, 8))})
    moved = shifted.summary()["x"]
    assert same["z_max"] < 4 and same["w1"] < 0.15
    assert moved["z_mean"] > 10 and moved["w1"] > 0.8


def test_latency_timeline_percentiles():
    timeline = LatencyTimeline(max_samples=2)
    for ms in (1, 2, 3, 4):
        timeline.record(ms / 1e3)
    point = timeline.sample(10.0, {"hit_rate": None})
    assert point["requests"] == 4
    assert point["p50_ms"] == pytest.approx(2.5) and point["p99_ms"] == pytest.approx(3.97)  # 3 + .97 * (4 - 3)
    assert timeline.sample(11.0, {})["p50_ms"] is None
    timeline.sample(12.0, {})
    assert [p["time"] for p in timeline.history()] == [11.0, 12.0]


def test_event_log_reopens_what_it_wrote_and_cuts_a_torn_tail(tmp_path):
    log = EventLog(tmp_path)
    assert log.open().events == []
    assert log.append_events([(0, 1), (2, 3)]) == 0
    offset = log.append_item(7, {"img": [0.5, -1.0]})
    log.undo(offset)  # the add failed: never acknowledged
    log.append_item(7, {"img": [0.25, 1e-8]})
    assert log.append_events([(4, 7)]) == 2
    log.close()
    with open(tmp_path / "log.jsonl", "ab") as handle:
        handle.write(b'{"kind": "events", "first": 3, "ev')  # a kill -9 in the middle of a write
    log = EventLog(tmp_path)
    contents = log.open()
    assert contents.events == [(0, 1), (2, 3), (4, 7)]
    assert contents.items == [(7, {"img": [0.25, 1e-8]})]
    assert contents.torn_bytes > 0 and log.n_events == 3
    log.append_events([(5, 5)])
    log.close()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["events", "item", "events", "events"]


def test_event_log_refuses_a_damaged_middle_line(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"kind": "events", "first": 0, "events": [[1, 2]]}\nnot json\n'
                                        '{"kind": "events", "first": 1, "events": [[1, 3]]}\n')
    with pytest.raises(StateError, match=r"log.jsonl, line 2"):
        EventLog(tmp_path).open()


def test_state_lock_is_exclusive(tmp_path):
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(StateError, match="another server"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_micro_batcher_groups_concurrent_requests():
    seen = []

    def run_batch(payloads):
        seen.append(len(payloads))
        return [p * 10 for p in payloads]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(run_batch, max_batch=4, max_wait=0.05, executor=pool)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(n) for n in range(10)))
            lone = await batcher.submit(99)
            await batcher.stop()
            return results, lone

    results, lone = asyncio.run(main())
    assert results == [n * 10 for n in range(10)] and lone == 990
    assert seen == [4, 4, 2, 1]


def test_micro_batcher_hands_a_failure_to_every_request_of_the_batch():
    raised = []  # (payloads of the call, the exception it raised), one per call

    def run_batch(payloads):
        error = RuntimeError(f"boom {list(payloads)}")
        raised.append((list(payloads), error))
        raise error

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(run_batch, max_batch=8, max_wait=0.01, executor=pool)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True)
            await batcher.stop()
            return results

    results = asyncio.run(main())
    assert len(results) == 3
    # every payload went to exactly one call, and each request got that call's exception object
    assert sorted(p for payloads, _ in raised for p in payloads) == [0, 1, 2]
    for n, result in enumerate(results):
        payloads, error = next((payloads, error) for payloads, error in raised if n in payloads)
        assert result is error and str(result) == f"boom {payloads}"


def test_cli_option_table_matches_serve_options():
    from jaxrec.cli.serve_cmd import _OPTIONS
    from jaxrec.serve._server import ServeOptions

    assert {name: default for name, (default, _) in _OPTIONS.items()} == ServeOptions().__dict__


def test_cli_refuses_bad_use_without_creating_anything(tmp_path, capsys):
    from jaxrec.cli.main import main

    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert "no such run folder" in capsys.readouterr().err
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["serve", str(not_a_run), "--port", "0"]) == 1
    assert "config.yaml" in capsys.readouterr().err
    assert list(not_a_run.iterdir()) == []  # no serving/ folder left behind
    assert main(["serve", str(not_a_run), "--port", "0", "--max-batch", "0"]) == 1
    assert "--max-batch must be at least 1" in capsys.readouterr().err
