"""Multi-process runs on JAX's own distributed runtime (``jax.distributed``).

One logical run spans ``N`` processes, each driving its local devices; the global device
mesh spans every process's devices, and one ``jax.jit`` program runs on all of them (the
multi-controller model: every process runs the same Python, in the same order, on its part
of the data). What each process does:

- **start-up**: :func:`initialize` joins the runtime before any JAX computation (explicit
  coordinator, process count and id, or auto-detection by ``jax.distributed.initialize()``
  on SLURM, Open MPI, TPU pods and Kubernetes where JAX supports it); on CPU it switches on
  the gloo collectives so that CPU devices of different processes can reduce together.
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

import hashlib
import itertools
import re
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
      ConfigError: bad arguments, no cluster environment found with ``auto``, or a
        coordinator that cannot be reached within ``timeout_seconds``.
    """
    check_arguments(coordinator, num_processes, process_id, auto)
    if not auto and coordinator is None:
        return False
    if not auto:
        # JAX aborts the process (no Python exception) when the coordinator cannot be bound or
        # reached, so both are checked first, where a clear error is still possible.
        match = _ADDRESS.match(coordinator)
        _check_coordinator(match["host"].strip("[]"), int(match["port"]), process_id, num_processes,
                           timeout_seconds)
    # CPU devices of different processes reduce over gloo (without it, cross-process
    # collectives on CPU are unimplemented); other platforms ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
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
    return True


def _check_coordinator(host: str, port: int, process_id: int, num_processes: int, timeout_seconds: float) -> None:
    if process_id == 0:  # process 0 runs the coordinator service on the port
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as error:
                raise ConfigError(f"--coordinator {host}:{port}: process 0 cannot listen on port {port} "
                                  f"({error.strerror}); choose a free port") from None
        return
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.1, timeout_seconds))):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConfigError(f"process {process_id} of {num_processes} could not reach the coordinator "
                                  f"{host}:{port} within {timeout_seconds:g} s ({error.strerror or error}); start "
                                  "process 0 with the same --coordinator, or check the host name, port and "
                                  "firewall") from None
            time.sleep(0.25)


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
    index = jax.process_index()
    if index == 0:
        return default
    stem, _, suffix = default.rpartition(".")
    return f"{stem}.process{index}.{suffix}"


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather(values) -> np.ndarray:
    """``(process_count, *shape)``: every process's ``values`` (an array of one shape)."""
    values = np.asarray(values)
    if not is_multiprocess():
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values, tiled=False))


def check_same_everywhere(text: str, what: str) -> None:
    """Raise ConfigError unless every process has the same ``text`` (e.g. its config)."""
    if not is_multiprocess():
        return
    digest = np.frombuffer(hashlib.blake2b(text.encode(), digest_size=16).digest(), np.uint8)
    gathered = allgather(digest)
    differing = [i for i in range(gathered.shape[0]) if not np.array_equal(gathered[i], gathered[0])]
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
