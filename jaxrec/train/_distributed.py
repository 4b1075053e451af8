"""Multi-process runs on JAX's own distributed runtime (``jax.distributed``).

One logical run spans ``N`` processes, each driving its local devices; the global device
mesh spans every process's devices, and one ``jax.jit`` program runs on all of them (the
multi-controller model: every process runs the same Python, in the same order, on its part
of the data). What each process does:

- **start-up**: :func:`initialize` joins the runtime before any JAX computation (explicit
  coordinator, process count and id, or auto-detection by ``jax.distributed.initialize()``
  on SLURM, Open MPI, TPU pods and Kubernetes where JAX supports it); on CPU it switches on
  the gloo collectives so that CPU devices of different processes can reduce together. With
  an explicit coordinator the processes first meet on its port (:func:`_handshake`: a missing
  process, an id given twice or another process count is a ConfigError on every process
  involved, where JAX's start-up aborts them); every process must drive as many devices.
- **agreeing**: the config check, the small start-up exchanges and the run's barriers go
  through the coordination service's key-value store (:func:`_exchange`), and a process that
  exits says so there: the others stop with an error naming it instead of waiting for it.
- **data**: each process builds only its rows of every global batch
  (:func:`local_rows` from the batch sharding, :class:`jaxrec.train._data.EpochSampler`
  with ``rows=``) and :func:`global_array` assembles the global batch with
  ``jax.make_array_from_process_local_data``.
- **evaluation**: the mesh's sharded ranking (:mod:`jaxrec.eval._sharded`): users over the
  data axis, item-table rows over the model axis, so each process ranks its users against
  the item rows its devices hold; the metric sums are added over the mesh (the same metrics
  as one process).
- **outputs**: process 0 writes the run's files (``config.yaml``, ``history.jsonl``,
  ``metrics.json``, ``curves.png``, events); every process writes its own log
  (``log.txt`` for process 0, ``log.process<I>.txt`` for the others). Checkpoints are
  collective Orbax saves of the sharded state as it is on the mesh: every process calls
  them and writes the shards its devices hold, Orbax's primary process commits the step
  (:mod:`jaxrec.train._checkpoint`); no process gathers the whole state. The workdir must be
  on a file system every process sees.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import itertools
import re
import select
import socket
import time
from typing import Any

import jax
import numpy as np

from jaxrec.errors import ConfigError

_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(?P<port>[0-9]{1,5})$")


def check_arguments(coordinator: str | None, num_processes: int | None, process_id: int | None,
                    auto: bool) -> None:
    """Raise ConfigError for an incomplete or inconsistent set of launch arguments."""
    if auto:
        if coordinator is not None or num_processes is not None or process_id is not None:
            raise ConfigError("--distributed auto detects the coordinator, process count and id from the cluster "
                              "environment; do not also pass --coordinator, --num-processes or --process-id")
        return
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(value is None for value in given.values()):
        return
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ConfigError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I "
                          f"together; missing {', '.join(missing)}")
    match = _ADDRESS.match(coordinator)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ConfigError(f"--coordinator {coordinator!r}: expected HOST:PORT (e.g. 10.0.0.1:1234 or "
                          "node001:1234) with a port in 1..65535")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1; found {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in [0, {num_processes}) for --num-processes {num_processes}; "
                          f"found {process_id}")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False, timeout_seconds: int = 300) -> bool:
    """Join the distributed runtime (before any JAX computation); False when there is nothing
    to join (no arguments and ``auto`` False: a single-process run).

    Raises:
      ConfigError: bad arguments, no cluster environment found with ``auto``, a coordinator
        that cannot be reached within ``timeout_seconds``, processes that do not all join
        within it, an id given to two processes, another ``num_processes`` on another
        process (:func:`_handshake`), or processes driving different numbers of devices.
    """
    check_arguments(coordinator, num_processes, process_id, auto)
    if not auto and coordinator is None:
        return False
    if not auto:
        # JAX aborts the process (no Python exception, a C++ stack trace) when the coordinator
        # cannot be bound or reached, when a process never joins, or when two processes give the
        # same id, so the processes meet on the coordinator's port first (:func:`_handshake`),
        # where a clear error is still possible.
        match = _ADDRESS.match(coordinator)
        _handshake(match["host"].strip("[]"), int(match["port"]), process_id, num_processes, timeout_seconds)
    # CPU devices of different processes reduce over gloo (without it, cross-process
    # collectives on CPU are unimplemented); other platforms ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service catches SIGTERM and waits for the program to ask whether to save
    # and stop (``reached_preemption_sync_point``), which jaxrec never does: a ``kill``, a
    # ``timeout`` or a scheduler's stop left the process training on. Without it SIGTERM ends
    # the process as it ends a one-process run.
    jax.config.update("jax_enable_preemption_service", False)
    try:
        if auto:
            jax.distributed.initialize(initialization_timeout=timeout_seconds)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id,
                                       initialization_timeout=timeout_seconds)
    except (ValueError, RuntimeError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if auto:
            raise ConfigError(f"--distributed auto: no cluster environment JAX can read (SLURM, Open MPI, TPU pod, "
                              f"Kubernetes) was detected, or joining it failed ({text}); pass --coordinator, "
                              "--num-processes and --process-id instead") from None
        raise ConfigError(f"process {process_id} of {num_processes} could not join the run at coordinator "
                          f"{coordinator} within {timeout_seconds} s ({text}); check that process 0 is started "
                          "with the same --coordinator and --num-processes and that the port is reachable") from None
    _register_exit_announcement()
    _check_local_devices()
    return True


def _check_local_devices() -> None:
    """ConfigError unless every process drives the same number of devices: JAX's multi-process
    utilities (and Orbax's checkpoints with them) lay the devices out as processes x local
    devices, and fail with a raw reshape error deep in a run otherwise."""
    counts = [int(c) for c in allgather(np.array([jax.local_device_count()], np.int64)).reshape(-1)]
    if len(set(counts)) > 1:
        listed = ", ".join(f"process {i}: {c}" for i, c in enumerate(counts))
        raise ConfigError(f"the processes of one run drive different numbers of devices ({listed}; "
                          "jax.local_device_count()); every process needs the same number: give each as many "
                          "devices (CUDA_VISIBLE_DEVICES, --xla_force_host_platform_device_count on CPU)")


_HELLO = "jaxrec-join"


def _handshake(host: str, port: int, process_id: int, num_processes: int, timeout_seconds: float) -> None:
    """Meet every process of the run on the coordinator's port before JAX does.

    Process 0 listens on ``port`` (as its coordinator service will) and waits, up to
    ``timeout_seconds``, for processes ``1 .. N-1`` to connect and say which they are
    (``jaxrec-join <id> <N>``); it answers each ``ok`` once all have joined, or the reason
    the run cannot start (a process id given twice, another ``--num-processes``, processes
    missing after the timeout), and every process raises that as a ConfigError naming the
    flag. JAX's own start-up would abort each process with a C++ stack trace instead. Then
    process 0 closes the port and starts the coordinator service there.
    """
    deadline = time.monotonic() + timeout_seconds
    if process_id == 0:
        _host_handshake(host, port, num_processes, timeout_seconds, deadline)
    else:
        _join_handshake(host, port, process_id, num_processes, timeout_seconds, deadline)


def _send_line(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall((text.replace("\n", " ") + "\n").encode())
    except OSError:
        pass  # the peer has gone: it reports its own error


def _host_handshake(host: str, port: int, num_processes: int, timeout_seconds: float, deadline: float) -> None:
    where = f"--coordinator {host}:{port}"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
            server.listen(max(8, num_processes))
        except OSError as error:
            raise ConfigError(f"{where}: process 0 cannot listen on port {port} ({error.strerror}); choose a "
                              "free port") from None
        joined: dict[int, socket.socket] = {}
        pending: list[tuple[socket.socket, bytes]] = []
        try:
            while len(joined) < num_processes - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [i for i in range(1, num_processes) if i not in joined]
                    message = (f"{where}: processes {missing} of --num-processes {num_processes} did not join "
                               f"within {timeout_seconds:g} s (joined: {[0, *sorted(joined)]}); start every process "
                               f"with the same --coordinator and --num-processes and its own --process-id in "
                               f"0..{num_processes - 1}, or raise --distributed-timeout")
                    for conn in joined.values():
                        _send_line(conn, f"error {message}")
                    raise ConfigError(message)
                readable = [server] + [conn for conn, _ in pending]
                ready, _, _ = select.select(readable, [], [], min(left, 0.5))
                for sock in ready:
                    if sock is server:
                        conn, _ = server.accept()
                        pending.append((conn, b""))
                        continue
                    index = next(i for i, (conn, _) in enumerate(pending) if conn is sock)
                    conn, buffer = pending[index]
                    try:
                        chunk = conn.recv(256)
                    except OSError:
                        chunk = b""
                    if not chunk:  # closed without a word (a port probe): forget it
                        pending.pop(index)
                        conn.close()
                        continue
                    buffer += chunk
                    if b"\n" not in buffer and len(buffer) < 256:
                        pending[index] = (conn, buffer)
                        continue
                    pending.pop(index)
                    words = buffer.split(b"\n")[0].decode(errors="replace").split()
                    if len(words) != 3 or words[0] != _HELLO or not all(w.isdigit() for w in words[1:]):
                        conn.close()  # not one of ours
                        continue
                    other, count = int(words[1]), int(words[2])
                    if count != num_processes:
                        message = (f"{where}: process {other} was started with --num-processes {count}, process 0 "
                                   f"with --num-processes {num_processes}; give every process the same count")
                        for peer in [conn, *joined.values()]:
                            _send_line(peer, f"error {message}")
                        conn.close()
                        raise ConfigError(message)
                    if other in joined or not 0 < other < num_processes:
                        _send_line(conn, f"error {where}: --process-id {other} is "
                                         + ("already taken by another process" if other in joined else
                                            f"outside 1..{num_processes - 1}")
                                         + f"; give each of the {num_processes} processes its own id in "
                                         f"0..{num_processes - 1}")
                        conn.close()
                        continue
                    joined[other] = conn
            for conn in joined.values():
                _send_line(conn, "ok")
            # The joined processes close first (so that process 0's side of each connection
            # leaves no TIME_WAIT on the port the coordinator service binds next).
            for conn in joined.values():
                conn.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
                try:
                    conn.recv(1)
                except OSError:
                    pass
        finally:
            for conn in [*joined.values(), *(conn for conn, _ in pending)]:
                conn.close()


def _join_handshake(host: str, port: int, process_id: int, num_processes: int, timeout_seconds: float,
                    deadline: float) -> None:
    who = f"process {process_id} of {num_processes}"
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            break
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConfigError(f"{who} could not reach the coordinator {host}:{port} within {timeout_seconds:g} s "
                                  f"({error.strerror or error}); start process 0 with the same --coordinator, or "
                                  "check the host name, port and firewall") from None
            time.sleep(0.25)
    with conn:
        answer = b""
        try:
            conn.sendall(f"{_HELLO} {process_id} {num_processes}\n".encode())
            while b"\n" not in answer:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(min(left, 5.0))
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
        line = answer.split(b"\n")[0].decode(errors="replace")
        if line == "ok":
            return
        if line.startswith("error "):
            raise ConfigError(f"{who}: {line[len('error '):]}")
        if b"\n" not in answer and time.monotonic() >= deadline:
            raise ConfigError(f"{who}: the coordinator {host}:{port} did not start the run within "
                              f"{timeout_seconds:g} s (not every process of --num-processes {num_processes} joined?); "
                              "start every process with the same --coordinator and --num-processes, or raise "
                              "--distributed-timeout")
        raise ConfigError(f"{who}: {host}:{port} is not a jaxrec coordinator (it closed the connection without "
                          "answering); is --coordinator process 0's host and port?")


def check_parallel_mode(parallel: str, processes: int | None = None) -> None:
    """ConfigError for a multi-process run in a mode other than ``sharded``: of ``processes``
    (the launch's ``--num-processes``, checked before joining) or, by default, of the joined run."""
    if parallel != "sharded" and (is_multiprocess() if processes is None else processes > 1):
        raise ConfigError(f"a multi-process run needs train.parallel: sharded (found {parallel!r}): one "
                          "jit program over the devices of every process")


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_main() -> bool:
    """Whether this process writes the run's shared files (process 0)."""
    return jax.process_index() == 0


def log_name(default: str = "log.txt") -> str:
    """This process's log file name: ``log.txt`` for process 0, ``log.process<I>.txt`` else."""
    return log_name_of(jax.process_index(), default)


def log_name_of(index: int, default: str = "log.txt") -> str:
    """Process ``index``'s log file name (:func:`log_name`)."""
    if index == 0:
        return default
    stem, _, suffix = default.rpartition(".")
    return f"{stem}.process{index}.{suffix}"


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process); a
    ConfigError when another process has stopped instead (:func:`_exchange`)."""
    if is_multiprocess():
        _exchange(b"", f"the barrier {name!r}")


# Small host values are exchanged through the coordination service's key-value store rather
# than a device collective, so that a process that stops (an error only it raised, e.g. on
# its own copy of the config or data) is seen by the others, which then stop too with an error
# naming it, instead of waiting in a collective until the service gives up and aborts them.
_KV_LIMIT = 1 << 20  # bytes; larger arrays (the train-record shards) go through a device all-gather
_EXITED = "jaxrec/exited/"
_exchanges = itertools.count()


def _client():
    from jax._src import distributed

    return distributed.global_state.client


_announcing = False


def _register_exit_announcement() -> None:
    """:func:`_announce_exit` at interpreter exit, once (also for a process that joined with
    ``jax.distributed.initialize`` itself: registered at its first exchange). Registered after
    JAX's own exit handler, so it runs before JAX shuts the runtime down."""
    global _announcing
    if not _announcing:
        atexit.register(_announce_exit)
        _announcing = True


def _announce_exit() -> None:
    """At interpreter exit: tell the other processes that this one has stopped (any of them
    waiting in :func:`_exchange` then stops with an error instead of waiting forever)."""
    client = _client()
    if client is None:
        return
    try:
        client.key_value_set(f"{_EXITED}{jax.process_index()}", "exited", allow_overwrite=True)
    except Exception:  # noqa: BLE001 -- the service may be gone already; nothing to tell then
        pass


def _exchange(payload: bytes, what: str) -> list[bytes]:
    """Every process's ``payload`` in process order (all processes must call it, in the same
    order); ConfigError when a process has exited before reaching it (its own error, in its
    output or log, says why)."""
    _register_exit_announcement()
    client = _client()
    n, me = jax.process_count(), jax.process_index()
    prefix = f"jaxrec/exchange/{next(_exchanges)}/"
    client.key_value_set_bytes(f"{prefix}{me}", payload)
    wait = 0.001
    while True:
        entries = {key.rsplit("/", 1)[-1]: value for key, value in client.key_value_dir_get_bytes(prefix)}
        if len(entries) >= n:
            return [entries[str(i)] for i in range(n)]
        exited = sorted(int(key.rsplit("/", 1)[-1]) for key, _ in client.key_value_dir_get_bytes(_EXITED))
        gone = [i for i in exited if str(i) not in entries]
        if gone:
            raise ConfigError(f"process{'es' if len(gone) > 1 else ''} {', '.join(map(str, gone))} of the run "
                              f"stopped before {what} (see {'their' if len(gone) > 1 else 'its'} output or "
                              f"{log_name_of(gone[0])} for why); process {me} stops too: fix the cause and "
                              "start every process again")
        time.sleep(wait)
        wait = min(2 * wait, 0.1)


def _to_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def allgather(values) -> np.ndarray:
    """``(process_count, *shape)``: every process's ``values`` (an array of one shape)."""
    values = np.asarray(values)
    if not is_multiprocess():
        return values[None]
    if values.nbytes <= _KV_LIMIT:  # the same size on every process: all take the same way
        return np.stack([np.load(io.BytesIO(b), allow_pickle=False)
                         for b in _exchange(_to_bytes(values), "exchanging start-up values")])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values, tiled=False))


def check_same_everywhere(text: str, what: str) -> None:
    """Raise ConfigError unless every process has the same ``text`` (e.g. its config)."""
    if not is_multiprocess():
        return
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    gathered = _exchange(digest, f"comparing {what.split(' (')[0]}")
    differing = [i for i in range(len(gathered)) if gathered[i] != gathered[0]]
    if differing:
        raise ConfigError(f"the processes of one run disagree on {what}: processes {differing} differ from process 0 "
                          "(launch every process with the same config, --set overrides and data)")


def local_rows(sharding, global_shape: tuple[int, ...], axis: int) -> slice:
    """The contiguous range of indices along ``axis`` that this process's devices hold
    under ``sharding`` (the rows of a global batch this process must supply)."""
    spans = set()
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        start, stop, _ = index[axis].indices(global_shape[axis])
        spans.add((start, stop))
    spans = sorted(spans)
    for (_, stop), (start, _) in itertools.pairwise(spans):
        if start != stop:
            raise ConfigError(f"this process's devices hold non-contiguous batch rows {spans}; order the mesh's "
                              "devices by process (jax.devices() order)")
    return slice(spans[0][0], spans[-1][1])


def global_array(sharding, local: np.ndarray, global_shape: tuple[int, ...]) -> jax.Array:
    """The global array whose rows this process holds in ``local``."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(local), tuple(global_shape))


def host_copy(x) -> Any:
    """A full copy of a (possibly global) array on this process: a replicated array's local
    shard, or the gathered rows of a sharded one (a collective: every process must call it)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if x.is_fully_replicated:
        return x.addressable_data(0)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
