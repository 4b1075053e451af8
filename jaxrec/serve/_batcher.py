"""Micro-batching: requests that arrive together share one jitted call.

A :class:`MicroBatcher` owns an asyncio queue and one worker task. The worker takes the
first waiting request, then collects more until ``max_batch`` are in hand or ``max_wait``
seconds have passed since that first one, runs the whole batch in one call on the model
thread, and hands each request its own slice of the result. While a batch runs, new requests
queue up and form the next batch, so under load batches grow by themselves and with
``max_wait = 0`` a lone request never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    """Batches calls of ``run_batch(payloads) -> results`` (one result per payload, in order).

    Args:
      run_batch: runs on ``executor`` (a single model thread), never on the event loop.
      max_batch: most payloads per call.
      max_wait: seconds the first request of a batch may wait for company.
      executor: where ``run_batch`` runs.
      on_batch: called with each batch's size (for the batch-size histogram).
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], *, max_batch: int, max_wait: float,
                 executor: Executor, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.executor = executor
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, payload: Any) -> Any:
        """Queues one payload; returns its result (or raises what the batch raised)."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((payload, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(payload, future) for payload, future in batch if not future.cancelled()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [p for p, _ in batch])
            except Exception as error:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
