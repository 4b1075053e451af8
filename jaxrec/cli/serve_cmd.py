"""``jaxrec serve RUN_DIR``: a trained run as an HTTP recommender (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import signal
import socket
from pathlib import Path

from jaxrec.cli._paths import check_output_folder
from jaxrec.errors import JaxrecError


# ServeOptions' fields with their defaults and help, written out here so that building the
# parser does not import jaxrec.serve (and with it jax); a test checks they match ServeOptions.
_OPTIONS = {
    "max_batch": (64, "most requests per jitted call"),
    "max_wait_ms": (1.0, "how long a batch's first request waits for company (ms)"),
    "update_every_events": (256, "apply pending events once this many are waiting ..."),
    "update_every_seconds": (10.0, "... or once the oldest has waited this long (s)"),
    "max_update_events": (65_536, "most events one online update takes"),
    "snapshot_every_updates": (1, "snapshot the model after every N-th update (and on exit)"),
    "hit_window_seconds": (1800.0, "online hit rate: how long after serving a list an event counts as a hit"),
    "sample_seconds": (5.0, "interval of the latency / hit-rate timeline (s)"),
    "max_k": (1000, "largest k a request may ask for"),
}


def _port(text: str) -> int:
    """``--port``'s type: an integer 0-65535 (argparse names the option in its error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer 0-65535; found {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0 picks a free one); found {port}")
    return port


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve a trained run over HTTP: recommend, fold-in, new items, online learning, monitors",
        description="Serve RUN_DIR (a run or search folder, see 'jaxrec train') as JSON over HTTP. Events posted "
                    "to /events are logged durably and learned online; the state (event log, snapshots) lives in "
                    "RUN_DIR/serving or --state and is resumed on the next start. Routes: GET /healthz, "
                    "GET|POST /recommend, GET /similar, POST /items, POST /events, GET /metrics, GET /status, GET /.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  jaxrec serve runs/bpr --port 8000\n"
               "  curl 'http://127.0.0.1:8000/recommend?user_id=3&k=10'")
    serve.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by 'jaxrec train'")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--state", metavar="DIR", help="state folder (default: RUN_DIR/serving)")
    group = serve.add_argument_group("batching, online learning and monitors")
    for name, (default, help_text) in _OPTIONS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default,
                           help=f"{help_text} (default: {default})")
    serve.set_defaults(func=_serve)


def _serve(args) -> int:
    try:
        import uvicorn

        from jaxrec.serve import create_app
    except ModuleNotFoundError as error:
        raise JaxrecError(f"jaxrec serve needs {error.name}: pip install 'jaxrec[serve]'") from None
    from jaxrec.serve import ServeOptions, Service

    try:
        options = ServeOptions(**{name: getattr(args, name) for name in ServeOptions.__dataclass_fields__})
    except ValueError as error:
        raise JaxrecError(str(error)) from None
    # The state folder, checked before listening or loading anything (the server creates it).
    if args.state:  # (as Service reads it: an empty --state means the default)
        check_output_folder("--state", args.state)
    elif Path(args.run_dir).expanduser().is_dir():  # (a missing RUN_DIR gets its own error)
        check_output_folder("state folder (the default of --state)", Path(args.run_dir).expanduser() / "serving")
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
        listener.listen(2048)  # connections wait in the backlog until uvicorn serves them
    except OSError as error:
        listener.close()
        raise JaxrecError(f"--host {args.host} --port {args.port}: cannot listen there ({error.strerror})") from None
    service = Service(args.run_dir, args.state, options)
    try:
        service.start()
    except BaseException:
        listener.close()
        raise
    host, port = listener.getsockname()[:2]
    print(f"jaxrec serve: {service.recommender.model_name} version {service.recommender.version} from "
          f"{service.run_dir} on http://{host}:{port} (state {service.state_dir}; "
          f"{service.replayed['events']} events to replay"
          + (f"; a torn last log line of {service.replayed['torn_bytes']} bytes, never acknowledged, was cut off"
             if service.replayed["torn_bytes"] else "") + ")", flush=True)
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10)
    # uvicorn answers SIGTERM and SIGINT (Ctrl-C) with a graceful shutdown (the app's shutdown
    # snapshots the model), then re-raises the signal to the handler it found: make those no-ops,
    # so the server exits 0 after its clean shutdown instead of dying of the re-raised signal
    # (SIGINT's default handler would end it as an interrupted command, exit 130).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    uvicorn.Server(config).run(sockets=[listener])
    return 0
