"""``jaxrec serve`` as a user meets it: the real server (uvicorn in a subprocess on 127.0.0.1,
a free port) called over HTTP. Every route against the Python API, every bad input (answered,
counted, nothing changed), online learning while reads go on, kill -9 and SIGTERM, the state
lock, and the status page in a real browser.

One tiny VBPR run (a feature model, so items can be added) is shared by the module. Every
server is started through a fixture that kills it at the end, also when a test fails.
"""

import collections
import json
import socket
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="jaxrec serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="jaxrec serve needs the serve extra (fastapi, uvicorn)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from _xla_flags import FAST_COMPILE  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
N_USERS, N_ITEMS, DIMS = 60, 40, {"text": 6, "image": 5}
RUN_CONFIG = f"""
model: {{name: vbpr, args: {{embedding_size: 8, visual_size: 4}}}}
data: {{synthetic: {{n_users: {N_USERS}, n_items: {N_ITEMS}, n_interactions: 900, seed: 1,
                     dims: {{text: 6, image: 5}}}}}}
train: {{epochs: 2, batch_size: 256, learning_rate: 0.02, seed: 3}}
eval: {{ks: [10, 20]}}
"""
START_TIMEOUT = 240  # loading and compiling on a busy 2-core machine
UPDATE_TIMEOUT = 240  # an online update compiles its train step the first time


# ---------------------------------------------------------------------- servers
class Server:
    """A ``jaxrec serve`` subprocess; :meth:`stop` reaps it whatever state it is in."""

    def __init__(self, run_dir: Path, state: Path, *options: str):
        env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # one CPU device
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
        env["JAX_PLATFORMS"] = "cpu"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jaxrec.cli.main", "serve", str(run_dir), "--host", "127.0.0.1", "--port", "0",
             "--state", str(state), *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT_ROOT)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.base = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.base is None:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise AssertionError(f"server did not start in {START_TIMEOUT} s:\n{self.log}") from None
            if line is None:
                raise AssertionError(f"server exited with {self.process.wait()}:\n{self.log}")
            if " on http://" in line:
                self.base = line.split(" on ", 1)[1].split()[0]
        wait_for(lambda: get(self, "/healthz")[0] == 200, START_TIMEOUT, "healthz")

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    @property
    def log(self) -> str:
        return "".join(self.output)

    def signal(self, signum) -> int:
        """Sends ``signum`` and waits (bounded) for the exit code."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=120)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture
def servers():
    """Starts servers for one test; kills every one of them at the end, pass or fail."""
    started = []

    def start(run_dir, state, *options):
        server = Server(run_dir, state, *options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def request(server, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    text = payload.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get(server, path, **kw):
    return request(server, "GET", path, **kw)


def post(server, path, body=None, **kw):
    return request(server, "POST", path, body, **kw)


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric_values(server) -> dict:
    status, text = get(server, "/metrics")
    assert status == 200
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


# ---------------------------------------------------------------------- the shared run and server
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from jaxrec.cli.main import main

    folder = tmp_path_factory.mktemp("serve_http")
    config = folder / "vbpr.yaml"
    config.write_text(RUN_CONFIG)
    assert main(["train", str(config), "--workdir", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def recommender(run_dir):
    from jaxrec.serve import Recommender

    return Recommender.load(run_dir)


@pytest.fixture(scope="module")
def main_server(run_dir, tmp_path_factory):
    state = tmp_path_factory.mktemp("main_state")
    server = Server(run_dir, state, "--update-every-events", "3", "--update-every-seconds", "0.5",
                    "--sample-seconds", "0.5", "--max-wait-ms", "5", "--hit-window-seconds", "600")
    server.state = state
    server.served = []  # every list this module received (checked against the quality monitors)
    yield server
    server.stop()


def served(server, response: dict) -> dict:
    server.served.append(response["items"])
    return response


# ---------------------------------------------------------------------- routes
def test_reads_equal_the_python_api(main_server, recommender):
    status, health = get(main_server, "/healthz")
    assert status == 200
    assert health == {"status": "ok", "model": "vbpr", "version": 0, "events_received": 0, "events_applied": 0}
    for user, k, exclude in ((3, 5, True), (7, 12, False), (0, N_ITEMS, True)):
        status, body = get(main_server, f"/recommend?user_id={user}&k={k}&exclude_seen={str(exclude).lower()}")
        assert status == 200 and body["user_id"] == user and body["version"] == 0
        served(main_server, body)
        items, scores = recommender.recommend([user], k=k, exclude_seen=exclude)
        keep = items[0] >= 0
        assert body["items"] == items[0][keep].tolist()
        np.testing.assert_allclose(body["scores"], scores[0][keep], rtol=1e-6)
    assert len(body["items"]) == N_ITEMS - len(recommender.seen_items(0))  # all unseen items, nothing else

    status, body = post(main_server, "/recommend", {"history": [1, 2, 3], "k": 6})
    items, scores = recommender.fold_in([[1, 2, 3]], k=6)
    assert status == 200 and body["items"] == items[0].tolist() and body["user_id"] is None
    served(main_server, body)

    status, body = get(main_server, "/similar?item_id=2&k=4")
    items, scores = recommender.similar_items([2], k=4)
    assert status == 200 and body == {"item_id": 2, "items": items[0].tolist(), "scores": pytest.approx(
        scores[0].tolist(), rel=1e-6)}


BAD_INPUTS = [
    # method, path, body (dict, or bytes sent as they are), status, field
    ("GET", "/recommend?user_id=9999", None, 404, "user_id"),
    ("GET", "/recommend", None, 422, "user_id"),
    ("GET", "/recommend?user_id=abc", None, 422, "user_id"),
    ("GET", "/recommend?user_id=-3", None, 422, "user_id"),
    ("GET", "/recommend?user_id=1&k=0", None, 422, "k"),
    ("GET", "/recommend?user_id=1&k=100000", None, 422, "k"),
    ("GET", "/recommend?user_id=1&k=2.5", None, 422, "k"),
    ("GET", "/recommend?user_id=1_0", None, 422, "user_id"),  # Python's int() syntax, not a plain integer
    ("GET", "/recommend?user_id=%D9%A3", None, 422, "user_id"),  # an Arabic-Indic 3
    ("GET", "/recommend?user_id=%205", None, 422, "user_id"),
    ("GET", "/recommend?user_id=0&user_id=1", None, 422, "user_id"),  # given twice
    ("GET", "/recommend?user_id=" + "9" * 5000, None, 422, "user_id"),
    ("GET", "/recommend?user_id=1&exclude_seen=perhaps", None, 422, "exclude_seen"),
    ("GET", "/similar?item_id=4000", None, 404, "item_id"),
    ("GET", "/similar?item_id=1&k=-1", None, 422, "k"),
    ("POST", "/recommend", b"{not json", 400, "body"),
    ("POST", "/recommend", b"[1, 2]", 422, "body"),
    ("POST", "/recommend", b"[" * 100_000, 400, "body"),  # nested past the JSON decoder's recursion limit
    ("POST", "/recommend", {"k": 3}, 422, "history"),
    ("POST", "/recommend", {"history": []}, 422, "history"),
    ("POST", "/recommend", {"history": [1, 4000]}, 404, "history[1]"),
    ("POST", "/recommend", {"history": [1, "2"]}, 422, "history[1]"),
    ("POST", "/recommend", {"history": [1], "k": "ten"}, 422, "k"),
    ("POST", "/items", b"", 400, "body"),
    ("POST", "/items", {"features": {"text": [0.1] * 5}}, 422, "features.text"),
    ("POST", "/items", {"features": {"text": [0.1] * 5 + [float("nan")]}}, 422, "features.text[5]"),
    ("POST", "/items", b'{"features": {"image": [1, 2, Infinity, 4, 5]}}', 422, "features.image[2]"),
    ("POST", "/items", {"features": {"image": [1, 2, 3, 4, 1e300]}}, 422, "features.image[4]"),
    ("POST", "/items", b'{"features": {"image": [1, 2, 3, 4, 1' + b"0" * 400 + b"]}}", 422, "features.image[4]"),
    ("POST", "/items", {"features": {"audio": [0.0]}}, 422, "features.audio"),
    ("POST", "/items", {"features": {"text": [0.1] * 5 + [True]}}, 422, "features.text[5]"),
    ("POST", "/items", {"features": {}}, 422, "features"),
    ("POST", "/items", {"feature": {}}, 422, "features"),
    ("POST", "/events", {"events": []}, 422, "events"),
    ("POST", "/events", {"events": [{"user_id": 1}]}, 422, "events[0].item_id"),
    ("POST", "/events", {"events": [{"user_id": 1, "item_id": 2}, {"user_id": 1, "item_id": 4000}]}, 422,
     "events[1].item_id"),
    ("POST", "/events", {"events": [{"user_id": -1, "item_id": 2}]}, 422, "events[0].user_id"),
    ("POST", "/events", {"events": [{"user_id": 1.5, "item_id": 2}]}, 422, "events[0].user_id"),
    ("POST", "/events", {"events": [{"user_id": 5000, "item_id": 2}]}, 422, "events[0].user_id"),
    ("POST", "/events", {"events": [[1, 2]]}, 422, "events[0]"),
    ("POST", "/events", b'{"events": [{"user_id": 1, "item_id": 2}', 400, "body"),
    ("DELETE", "/recommend", None, 405, "path"),
    ("GET", "/nowhere", None, 404, "path"),
]


def _route(method: str, path: str) -> str:
    """The route label /metrics counts a request under."""
    path = path.split("?")[0]
    known = {("GET", "/recommend"), ("POST", "/recommend"), ("GET", "/similar"), ("POST", "/items"),
             ("POST", "/events")}
    return f"{method} {path}" if (method, path) in known else "other"


def test_bad_input_is_answered_counted_and_changes_nothing(main_server):
    before = metric_values(main_server)
    _, status_before = get(main_server, "/status")
    log = main_server.state / "log.jsonl"
    log_size = log.stat().st_size if log.exists() else 0
    for method, path, body, expected, field in BAD_INPUTS:
        raw = body if isinstance(body, bytes) else None
        status, answer = request(main_server, method, path, None if raw is not None else body, raw=raw)
        assert (status, answer.get("field")) == (expected, field), (method, path, body, answer)
        assert answer["error"].startswith(f"{field}: "), answer
    after = metric_values(main_server)
    expected_counts = collections.Counter((_route(method, path), str(status), field)
                                          for method, path, _, status, field in BAD_INPUTS)
    for (route, status, field), count in expected_counts.items():
        labels = {"route": route, "status": status, "field": field}
        assert metric(after, "jaxrec_errors_total", **labels) - metric(before, "jaxrec_errors_total", **labels) \
            == count, labels
    _, status_after = get(main_server, "/status")
    for key in ("version", "n_users", "n_items", "events_received", "events_applied"):
        assert status_after[key] == status_before[key], key
    assert (log.stat().st_size if log.exists() else 0) == log_size
    assert get(main_server, "/healthz")[0] == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(main_server):
    from jaxrec.serve._http import MAX_BODY_BYTES

    host, port = main_server.base.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode() + b'{"events": [')
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
                reply.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]):
            chunk = conn.recv(65536)  # headers and body may come in separate reads
            if not chunk:
                break
            reply += chunk
    head, body = reply.decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["field"] == "body"
    assert get(main_server, "/healthz")[0] == 200


def test_a_wrong_method_names_the_allowed_ones(main_server):
    req = urllib.request.Request(main_server.base + "/recommend", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    assert caught.value.code == 405 and caught.value.headers["Allow"] == "GET, POST"


def test_healthz_says_degraded_while_the_learner_or_snapshots_fail():
    # The route on a stand-in service (no model): a failing learner keeps serving (200) but says so.
    import asyncio
    import types

    from jaxrec.serve._http import create_app

    service = types.SimpleNamespace(recommender=types.SimpleNamespace(model_name="vbpr", version=3),
                                    events_received=5, events_applied=4, last_update_error=None,
                                    last_snapshot_error=None)
    healthz = next(r.endpoint for r in create_app(service).routes if getattr(r, "path", None) == "/healthz")
    base = {"model": "vbpr", "version": 3, "events_received": 5, "events_applied": 4}
    assert asyncio.run(healthz()) == {"status": "ok", **base}
    service.last_update_error = "RuntimeError: boom"
    assert asyncio.run(healthz()) == {"status": "degraded", **base, "last_update_error": "RuntimeError: boom"}
    service.last_update_error, service.last_snapshot_error = None, "OSError: disk full"
    assert asyncio.run(healthz()) == {"status": "degraded", **base, "last_snapshot_error": "OSError: disk full"}


def test_items_events_and_online_learning(main_server):
    _, before = get(main_server, "/status")
    status, body = post(main_server, "/items", {"features": {"text": [0.5, -0.2, 0.1, 0.0, 1.0, 0.3],
                                                             "image": [0.1, 0.2, 0.3, 0.4, 0.5]}})
    assert status == 200 and body == {"item_id": N_ITEMS}
    status, similar = get(main_server, f"/similar?item_id={N_ITEMS}&k=3")
    assert status == 200 and len(similar["items"]) == 3  # rankable at once, from its features
    user = 11
    _, first = get(main_server, f"/recommend?user_id={user}&k=5")
    served(main_server, first)
    events = [{"user_id": user, "item_id": first["items"][0]}, {"user_id": user, "item_id": N_ITEMS},
              {"user_id": N_USERS, "item_id": 4}, {"user_id": N_USERS + 1, "item_id": 5}]
    status, body = post(main_server, "/events", {"events": events})
    assert status == 200 and body == {"accepted": 4}
    status, body = get(main_server, f"/recommend?user_id={N_USERS}")
    assert status in (200, 404)  # 404 (not learned yet) until the learner has run
    if status == 200:
        served(main_server, body)
    wait_for(lambda: get(main_server, "/healthz")[1]["events_applied"] == 4, UPDATE_TIMEOUT, "the online update")
    _, health = get(main_server, "/healthz")
    assert health["events_received"] == 4 and health["version"] >= before["version"] + 2  # item + update
    _, status_now = get(main_server, "/status")
    assert status_now["last_update_error"] is None and status_now["update_ranges_contiguous"]
    assert status_now["n_users"] == N_USERS + 2 and status_now["n_items"] == N_ITEMS + 1
    # The learned events are now excluded from the user's list; new users are served.
    _, after = get(main_server, f"/recommend?user_id={user}&k={N_ITEMS + 1}")
    served(main_server, after)
    assert first["items"][0] not in after["items"] and N_ITEMS not in after["items"]
    status, new_user = get(main_server, f"/recommend?user_id={N_USERS}&k=3")
    assert status == 200 and 4 not in new_user["items"] and new_user["version"] == health["version"]
    served(main_server, new_user)
    # The served list held first["items"][0], which the user then consumed: one hit.
    quality = status_now["quality"]
    assert quality["hit_lists"] >= 1
    assert status_now["drift"]["text"]["n_added"] == 1 and status_now["drift"]["image"]["n_added"] == 1


def test_concurrent_reads_during_updates(main_server):
    before = metric_values(main_server)
    errors, versions = [], []

    def reader(worker: int):
        seen = []
        for n in range(25):
            status, body = get(main_server, f"/recommend?user_id={(worker * 7 + n) % N_USERS}&k=10")
            if status != 200 or not 1 <= len(set(body["items"])) == len(body["items"]) <= 10:
                errors.append((status, body))
                return
            served(main_server, body)
            seen.append(body["version"])
        versions.append(seen)

    threads = [threading.Thread(target=reader, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    _, health = get(main_server, "/healthz")
    post(main_server, "/events", {"events": [{"user_id": u, "item_id": u % N_ITEMS} for u in range(20, 26)]})
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors and len(versions) == 8
    assert all(v == sorted(v) for v in versions)  # a reader never sees the model go back
    wait_for(lambda: get(main_server, "/healthz")[1]["events_applied"] == health["events_received"] + 6,
             UPDATE_TIMEOUT, "the update")
    after = metric_values(main_server)
    batches = metric(after, "jaxrec_batch_size_count", kind="recommend") - metric(
        before, "jaxrec_batch_size_count", kind="recommend")
    requests_done = metric(after, "jaxrec_batch_size_sum", kind="recommend") - metric(
        before, "jaxrec_batch_size_sum", kind="recommend")
    assert requests_done == 200  # every read went through the batcher ...
    assert batches < 200  # ... and some shared a call


def test_metrics_and_status_agree_with_what_was_served(main_server):
    # Traffic of its own, so the checks hold alone (``-k``) as after the module's other tests: a new
    # (cold) item, lists long enough to hold it, and two batches of events (the server updates every 3),
    # each learned before the next is sent.
    before = metric_values(main_server)
    status, body = post(main_server, "/items", {"features": {"text": [0.2, 0.1, -0.3, 0.4, 0.0, 0.5],
                                                             "image": [0.5, 0.4, 0.3, 0.2, 0.1]}})
    assert status == 200
    cold_item = body["item_id"]
    reads = 0
    for user in (21, 22, 23):
        status, body = get(main_server, f"/recommend?user_id={user}&k={cold_item + 1}")  # every unseen item
        assert status == 200 and cold_item in body["items"]
        served(main_server, body)
        reads += 1
    for batch in range(2):
        received = get(main_server, "/healthz")[1]["events_received"]
        events = [{"user_id": 30 + 3 * batch + j, "item_id": cold_item} for j in range(3)]
        assert post(main_server, "/events", {"events": events}) == (200, {"accepted": 3})
        wait_for(lambda: get(main_server, "/healthz")[1]["events_applied"] == received + 3, UPDATE_TIMEOUT,
                 f"update {batch + 1}")
    _, status = get(main_server, "/status")
    values = metric_values(main_server)
    lists = main_server.served
    quality = status["quality"]
    n_items = status["n_items"]
    assert quality["lists_served"] == len(lists)
    assert quality["catalog_coverage"] == pytest.approx(len({i for items in lists for i in items}) / n_items)
    slots = sum(len(items) for items in lists)
    cold = sum(1 for items in lists for i in items if i >= N_ITEMS)
    assert quality["cold_share"] == pytest.approx(cold / slots)
    assert metric(values, "jaxrec_catalog_coverage") == pytest.approx(quality["catalog_coverage"])
    assert metric(values, "jaxrec_model_version") == status["version"]
    assert metric(values, "jaxrec_events_received_total") == status["events_received"]
    assert metric(values, "jaxrec_events_applied_total") == status["events_applied"]
    assert metric(values, "jaxrec_events_pending") == status["events_pending"] == 0
    assert metric(values, "jaxrec_update_duration_seconds_count") == len(status["last_updates"]) >= 2
    assert metric(values, "jaxrec_request_latency_seconds_count", route="GET /recommend") - metric(
        before, "jaxrec_request_latency_seconds_count", route="GET /recommend") == reads
    assert metric(values, "jaxrec_feature_drift_w1", modality="text") == pytest.approx(status["drift"]["text"]["w1"])
    wait_for(lambda: any(p["requests"] for p in get(main_server, "/status")[1]["timeline"]), 30, "a timeline sample")


def test_second_server_on_the_same_state_is_refused(main_server, run_dir):
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # one CPU device
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    result = subprocess.run([sys.executable, "-m", "jaxrec.cli.main", "serve", str(run_dir), "--port", "0",
                             "--state", str(main_server.state)], capture_output=True, text=True, timeout=180,
                            env=env, cwd=PROJECT_ROOT)
    assert result.returncode == 1
    assert "another server" in result.stderr and "Traceback" not in result.stderr


def test_status_page_in_a_browser(main_server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM} (Debian package chromium; .ci/run installs it in CI)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the status page test drives chromium with playwright")
    _, status = get(main_server, "/status")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(main_server.base + "/", timeout=60_000)
            page.wait_for_selector("#cards .card", timeout=30_000)
            assert page.text_content("#model") == f"vbpr, version {status['version']}"
            cards = dict(zip(page.locator(".card .label").all_text_contents(),
                             page.locator(".card .value").all_text_contents()))
            assert cards["events applied"] == str(status["events_applied"])
            assert float(cards["catalog coverage"]) == pytest.approx(status["quality"]["catalog_coverage"], abs=5e-4)
            page.wait_for_selector("#latency polyline.series", state="attached", timeout=30_000)
            assert page.locator("#quality polyline.series").count() >= 1
            assert page.locator("#drift tr").count() == 1 + len(DIMS)
            assert page.text_content("#error") == ""
            page.screenshot(path=str(tmp_path / "status_page.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "status_page.png").stat().st_size > 10_000


# ---------------------------------------------------------------------- durability
def test_kill9_then_restart_loses_nothing_and_applies_nothing_twice(servers, run_dir, tmp_path):
    state = tmp_path / "state"
    first = servers(run_dir, state, "--update-every-events", "4", "--update-every-seconds", "600")
    batch_a = [{"user_id": 1, "item_id": i} for i in (30, 31, 32, 33)]
    assert post(first, "/events", {"events": batch_a}) == (200, {"accepted": 4})
    wait_for(lambda: get(first, "/healthz")[1]["events_applied"] == 4, UPDATE_TIMEOUT, "the first update")
    wait_for(lambda: (state / "snapshot.json").exists(), 60, "the snapshot")
    assert post(first, "/items", {"features": {"image": [0.3, 0.1, -0.2, 0.0, 0.5]}}) == (200, {"item_id": N_ITEMS})
    batch_b = [{"user_id": 1, "item_id": 34}, {"user_id": 2, "item_id": N_ITEMS}, {"user_id": N_USERS, "item_id": 3}]
    assert post(first, "/events", {"events": batch_b}) == (200, {"accepted": 3})  # acknowledged: on disk
    _, health = get(first, "/healthz")
    assert (health["events_received"], health["events_applied"]) == (7, 4)
    first.process.kill()  # kill -9: no snapshot of the item or of batch_b
    first.process.wait(timeout=60)

    second = servers(run_dir, state, "--update-every-events", "100", "--update-every-seconds", "0.5")
    assert "3 events to replay" in second.log
    wait_for(lambda: get(second, "/healthz")[1]["events_applied"] == 7, UPDATE_TIMEOUT, "the replay")
    _, status = get(second, "/status")
    assert status["events_received"] == 7 and status["events_pending"] == 0
    assert status["replayed_at_start"] == {"events": 3, "items": 1, "torn_bytes": 0}
    assert [(u["first"], u["end"]) for u in status["last_updates"]] == [(0, 4), (4, 7)]
    assert status["n_items"] == N_ITEMS + 1 and status["n_users"] == N_USERS + 1
    _, ranked = get(second, f"/recommend?user_id=1&k={N_ITEMS + 1}")
    assert not {30, 31, 32, 33, 34} & set(ranked["items"])  # every acknowledged event learned
    _, ranked = get(second, f"/recommend?user_id=2&k={N_ITEMS + 1}")
    assert N_ITEMS not in ranked["items"]
    version = status["version"]

    assert second.signal(signal.SIGTERM) == 0  # SIGTERM: snapshot, clean exit
    manifest = json.loads((state / "snapshot.json").read_text())
    assert (manifest["events_applied"], manifest["version"]) == (7, version)
    assert "Traceback" not in second.log

    with open(state / "log.jsonl", "ab") as log:  # a crash mid-write: half a record, never acknowledged
        log.write(b'{"kind": "ev')
    newest = manifest["folder"]
    third = servers(run_dir, state)
    assert "0 events to replay; a torn last log line of 12 bytes, never acknowledged, was cut off" in third.log
    _, health = get(third, "/healthz")
    assert health == {"status": "ok", "model": "vbpr", "version": version, "events_received": 7, "events_applied": 7}
    assert get(third, "/status")[1]["replayed_at_start"] == {"events": 0, "items": 0, "torn_bytes": 12}
    assert third.signal(signal.SIGINT) == 0  # Ctrl-C: the same clean shutdown
    assert json.loads((state / "snapshot.json").read_text())["folder"] == newest  # idle: no copy of the snapshot
