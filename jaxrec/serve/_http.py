"""The HTTP face of a :class:`~jaxrec.serve._server.Service` (FastAPI; run by uvicorn).

Routes (the table in docs/serving.md): ``GET /healthz``, ``GET|POST /recommend``,
``GET /similar``, ``POST /items``, ``POST /events``, ``GET /metrics`` (Prometheus text),
``GET /status`` (the monitors as JSON) and ``GET /`` (an HTML page drawing them).

Every input is checked here, before anything reaches the model or the log, and a bad one is
answered ``{"error": "<field>: <what was expected>", "field": "<field>"}``: 404 for an
unknown user or item, 400 for a body that is not JSON, 422 for everything else. Each answer is
counted per route and status, each error also per field.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jaxrec.serve._server import InputError, Service

MAX_EVENTS_PER_REQUEST = 10_000
MAX_HISTORY = 10_000
MAX_BODY_BYTES = 16 * 2**20  # a JSON body: 10,000 events or a few items' features take well under 1 MB
_STATIC = Path(__file__).parent / "static"
_DECIMAL = re.compile(r"-?[0-9]+")
_ROUTES = {("GET", "/healthz"), ("GET", "/recommend"), ("POST", "/recommend"), ("GET", "/similar"),
           ("POST", "/items"), ("POST", "/events"), ("GET", "/metrics"), ("GET", "/status"), ("GET", "/")}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# ---------------------------------------------------------------------- input checks
def _int_value(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, f"expected an integer, got {json.dumps(value)[:40]}")
    return value


def _query_int(request: Request, name: str, default: int | None = None) -> int:
    """A query parameter written as a plain decimal integer (ASCII digits, an optional minus; not
    Python's wider ``int()`` syntax such as ``1_0`` or other scripts' digits), given once."""
    given = request.query_params.getlist(name)
    if not given:
        if default is None:
            raise InputError(name, "missing (a query parameter)")
        return default
    if len(given) > 1:
        raise InputError(name, f"given {len(given)} times; give it once")
    raw = given[0]
    if not _DECIMAL.fullmatch(raw):
        raise InputError(name, f"expected an integer, got {raw[:40]!r}")
    if len(raw.lstrip("-")) > 18:
        raise InputError(name, f"out of range ({len(raw)} digits)")
    return int(raw)


def _query_bool(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise InputError(name, f"expected true or false, got {raw[:40]!r}")


async def _read_body(request: Request) -> bytes:
    """The request body, read up to :data:`MAX_BODY_BYTES` (a 413 beyond: a large body is refused
    as it streams in, not after it has been held in memory whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InputError("body", f"{int(declared):,} bytes; at most {MAX_BODY_BYTES:,}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InputError("body", f"more than {MAX_BODY_BYTES:,} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_object(request: Request, *required: str) -> dict:
    raw = await _read_body(request)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError("body", f"not valid JSON ({error})", status=400) from None
    except RecursionError:
        raise InputError("body", "not valid JSON here: nested too deeply", status=400) from None
    if not isinstance(body, dict):
        raise InputError("body", f"expected a JSON object, got {type(body).__name__}")
    for name in required:
        if name not in body:
            raise InputError(name, "missing (a field of the JSON body)")
    return body


def _check_id(value: int, field: str) -> int:
    if value < 0:
        raise InputError(field, f"ids are non-negative, got {value}")
    return value


def _features(body: dict, widths: dict[str, int]) -> dict[str, np.ndarray]:
    """``{"features": {modality: [floats]}}`` -> rows (1, d) float32 (a modality left out is
    missing for the new item, as in ``Recommender.add_items``)."""
    features = body["features"]
    if not widths:
        raise InputError("features", "this model ranks items by id only; it cannot add items from features")
    if not isinstance(features, dict):
        raise InputError("features", "expected an object {modality: [numbers]}")
    unknown = sorted(set(features) - set(widths))
    if unknown:
        raise InputError(f"features.{unknown[0]}", f"unknown modality (the model uses {', '.join(sorted(widths))})")
    if not features:
        raise InputError("features", f"give at least one modality of {', '.join(sorted(widths))}")
    rows = {}
    for name, values in features.items():
        width = widths[name]
        field = f"features.{name}"
        if not isinstance(values, list):
            raise InputError(field, f"expected a list of {width} numbers")
        if len(values) != width:
            raise InputError(field, f"expected {width} numbers, got {len(values)}")
        for n, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{field}[{n}]", f"expected a number, got {json.dumps(value)[:40]}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond any float
                raise InputError(f"{field}[{n}]", f"{str(value)[:20]}... overflows float32") from None
            if not finite:
                raise InputError(f"{field}[{n}]", f"must be finite, got {value}")
        with np.errstate(over="ignore"):  # reported below as a 422, not as a warning in the server log
            row = np.asarray(values, dtype=np.float32)[None]
        if not np.isfinite(row).all():  # finite float64 beyond float32's range
            bad = int(np.flatnonzero(~np.isfinite(row[0]))[0])
            raise InputError(f"{field}[{bad}]", f"{values[bad]} overflows float32")
        rows[name] = row
    return rows


def _events(body: dict) -> list[tuple[int, int]]:
    events = body["events"]
    if not isinstance(events, list) or not events:
        raise InputError("events", "expected a non-empty list of {\"user_id\": u, \"item_id\": i}")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise InputError("events", f"at most {MAX_EVENTS_PER_REQUEST} per request, got {len(events)}")
    pairs = []
    for n, event in enumerate(events):
        if not isinstance(event, dict):
            raise InputError(f"events[{n}]", "expected an object {\"user_id\": u, \"item_id\": i}")
        ids = []
        for key in ("user_id", "item_id"):
            if key not in event:
                raise InputError(f"events[{n}].{key}", "missing")
            ids.append(_check_id(_int_value(event[key], f"events[{n}].{key}"), f"events[{n}].{key}"))
        pairs.append((ids[0], ids[1]))
    return pairs


# ---------------------------------------------------------------------- metrics
class _ServiceCollector:
    """Values read from the service at scrape time (they persist across restarts or are derived)."""

    def __init__(self, service: Service):
        self.service = service

    def collect(self):
        service = self.service
        yield GaugeMetricFamily("jaxrec_model_version", "version of the served model", value=service.recommender.version)
        yield CounterMetricFamily("jaxrec_events_received", "events accepted over the state's life",
                                  value=service.events_received)
        yield CounterMetricFamily("jaxrec_events_applied", "events the model has learned over the state's life",
                                  value=service.events_applied)
        yield GaugeMetricFamily("jaxrec_events_pending", "events accepted, not applied yet", value=service.events_pending)
        yield GaugeMetricFamily("jaxrec_catalog_items", "items in the catalog", value=service.recommender.n_items)
        quality = service.quality.summary(service.clock())
        for key, help_text in (("catalog_coverage", "distinct items served / catalog size"),
                               ("mean_popularity_percentile", "mean training-popularity percentile of served items"),
                               ("cold_share", "share of served slots holding added items"),
                               ("hit_rate", "served lists hit by a later event of their user within the window")):
            value = quality[key]
            yield GaugeMetricFamily(f"jaxrec_{key}", help_text, value=float("nan") if value is None else value)
        yield CounterMetricFamily("jaxrec_lists_served", "recommendation lists served", value=quality["lists_served"])
        drift = {name: report for name, report in service.drift.summary().items()}
        for key, help_text in (("z_max", "max |z| of added items' feature means vs training"),
                               ("z_mean", "mean |z| of added items' feature means vs training"),
                               ("w1", "mean per-dimension 1-Wasserstein distance, in training sds")):
            family = GaugeMetricFamily(f"jaxrec_feature_drift_{key}", help_text, labels=["modality"])
            for name, report in drift.items():
                family.add_metric([name], float("nan") if report[key] is None else report[key])
            yield family


def _route_label(method: str, path: str) -> str:
    return f"{method} {path}" if (method, path) in _ROUTES else "other"


class _Measure:
    """Pure ASGI middleware: ``on_done(method, path, status, seconds)`` after every HTTP request
    (cheaper per request than Starlette's ``BaseHTTPMiddleware``)."""

    def __init__(self, app, on_done):
        self.app = app
        self.on_done = on_done

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.on_done(scope["method"], scope["path"], status[0], time.perf_counter() - started)


# ---------------------------------------------------------------------- the app
def create_app(service: Service) -> FastAPI:
    """The FastAPI app of a started :class:`Service` (its start-up starts the micro-batchers)."""
    prometheus_client.disable_created_metrics()  # no *_created series: noise for a scraper
    registry = CollectorRegistry()
    requests_total = Counter("jaxrec_requests", "HTTP requests by route and status", ["route", "status"],
                             registry=registry)
    errors_total = Counter("jaxrec_errors", "requests answered with an error, by route, status and field",
                           ["route", "status", "field"], registry=registry)
    latency = Histogram("jaxrec_request_latency_seconds", "time from request to response", ["route"],
                        buckets=_LATENCY_BUCKETS, registry=registry)
    batch_sizes = Histogram("jaxrec_batch_size", "requests per jitted call", ["kind"], buckets=_BATCH_BUCKETS,
                            registry=registry)
    update_seconds = Histogram("jaxrec_update_duration_seconds", "time of one online update",
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry)
    registry.register(_ServiceCollector(service))
    service.on_batch = lambda kind, size: batch_sizes.labels(kind).observe(size)
    service.on_update = update_seconds.observe

    @asynccontextmanager
    async def lifespan(app):
        service.start_batchers()
        sampler = asyncio.get_running_loop().create_task(_sample_forever(service))
        try:
            yield
        finally:
            sampler.cancel()
            await service.stop_batchers()
            await run_in_threadpool(service.shutdown)

    app = FastAPI(title="jaxrec serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(route: str, status: int, field: str, message: str) -> JSONResponse:
        errors_total.labels(route, str(status), field).inc()
        return JSONResponse({"error": message, "field": field}, status_code=status)

    def done(method: str, path: str, status: int, seconds: float) -> None:
        route = _route_label(method, path)
        requests_total.labels(route, str(status)).inc()
        latency.labels(route).observe(seconds)
        if route in ("GET /recommend", "POST /recommend"):
            service.timeline.record(seconds)

    app.add_middleware(_Measure, on_done=done)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, bad: InputError):
        return error(_route_label(request.method, request.url.path), bad.status, bad.field, str(bad))

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, failure: StarletteHTTPException):
        answer = error(_route_label(request.method, request.url.path), failure.status_code, "path",
                       f"path: no route {request.method} {request.url.path} ({failure.detail})")
        if failure.status_code == 405:  # HTTP asks a 405 to say which methods the path takes
            answer.headers["Allow"] = ", ".join(sorted(m for m, p in _ROUTES if p == request.url.path))
        return answer

    @app.exception_handler(Exception)
    async def internal(request: Request, failure: Exception):  # a bug must not take the server down
        return error(_route_label(request.method, request.url.path), 500, "server",
                     f"server: internal error: {type(failure).__name__}: {failure}")

    @app.get("/healthz")
    async def healthz():
        health = {"status": "ok", "model": service.recommender.model_name,
                  "version": int(service.recommender.version),
                  "events_received": service.events_received, "events_applied": service.events_applied}
        failing = {name: getattr(service, name) for name in ("last_update_error", "last_snapshot_error")
                   if getattr(service, name) is not None}
        if failing:  # still serving (200), but the learner or the snapshots keep failing
            health.update(status="degraded", **failing)
        return health

    @app.get("/recommend")
    async def recommend(request: Request):
        user_id = _check_id(_query_int(request, "user_id"), "user_id")
        k = _query_int(request, "k", 20)
        exclude_seen = _query_bool(request, "exclude_seen", True)
        service.check_k(k)
        service.check_user(user_id)
        items, scores, version = await service.batchers["recommend"].submit((user_id, k, exclude_seen))
        return {"user_id": user_id, "items": items, "scores": scores, "version": version}

    @app.post("/recommend")
    async def fold_in(request: Request):
        body = await _json_object(request, "history")
        history = body["history"]
        if not isinstance(history, list) or not history:
            raise InputError("history", "expected a non-empty list of item ids")
        if len(history) > MAX_HISTORY:
            raise InputError("history", f"at most {MAX_HISTORY} items, got {len(history)}")
        for n, item in enumerate(history):
            service.check_item(_check_id(_int_value(item, f"history[{n}]"), f"history[{n}]"), f"history[{n}]", 404)
        k = _int_value(body.get("k", 20), "k")
        service.check_k(k)
        items, scores, version = await service.batchers["fold_in"].submit((history, k))
        return {"user_id": None, "items": items, "scores": scores, "version": version}

    @app.get("/similar")
    async def similar(request: Request):
        item_id = _check_id(_query_int(request, "item_id"), "item_id")
        k = _query_int(request, "k", 20)
        service.check_k(k)
        service.check_item(item_id)
        items, scores = await service.batchers["similar"].submit((item_id, k))
        return {"item_id": item_id, "items": items, "scores": scores}

    @app.post("/items")
    async def add_item(request: Request):
        body = await _json_object(request, "features")
        rows = _features(body, service.feature_widths)
        item_id = await run_in_threadpool(service.add_item, rows)
        return {"item_id": item_id}

    @app.post("/events")
    async def events(request: Request):
        body = await _json_object(request, "events")
        accepted = await run_in_threadpool(service.add_events, _events(body))
        return {"accepted": accepted}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    async def status():
        return _finite(service.status())

    @app.get("/")
    async def page():
        return HTMLResponse((_STATIC / "status.html").read_text())

    return app


def _finite(value):
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


async def _sample_forever(service: Service) -> None:
    while True:
        await asyncio.sleep(service.options.sample_seconds)
        service.sample_timeline()
