"""Micro-batching: concurrent requests that arrive within a short window share one batched funnel pass.

Requests wait in a bounded queue; one worker takes up to ``max_batch`` of them (waiting at most ``window_s`` after
the first for more to arrive), groups them by the options that change the computation (k, retriever, re-ranker,
explain, exclude_seen) and runs each group as one :meth:`Funnel.recommend` call in a single worker thread, so the
beam search and the re-ranker see the whole group as one batch. While the worker computes, new requests queue up
and form the next batch: under load batches grow by themselves, at low load a request waits at most the window.
A full queue refuses new work (:class:`Overloaded` → 503 + Retry-After), so memory stays bounded under overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from thinkrec.utils.config import check_valid, spec


class Overloaded(RuntimeError):
    """The queue is full (or the server is shutting down): the client should retry later."""


@dataclass
class BatcherConfig:
    window_ms: float = spec(5.0, ge=0.0)  # how long the first request of a batch waits for company
    max_batch: int = spec(64, ge=1)  # requests per batched pass
    # waiting requests beyond which new ones are refused (503): ~2 s of work at 60 req/s
    max_queue: int = spec(128, ge=1)

    def check(self) -> None:
        """Every range error at once (a :class:`~thinkrec.utils.config.ConfigError` naming ``serve.<field>``)."""
        check_valid(self, "serve")


@dataclass
class _Pending:
    key: Any  # requests with the same key share one call
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """``await submit(key, payload)`` → the result for ``payload``, computed by ``run_group(key, payloads)`` (a
    blocking function returning one result per payload, run in one worker thread) together with the payloads of
    the same key that arrived in the same window."""

    def __init__(self, run_group: Callable[[Any, list[Any]], list[Any]], config: BatcherConfig | None = None,
                 on_batch: Callable[[int, float], None] | None = None):
        self.config = config or BatcherConfig()
        self.config.check()
        self.run_group = run_group
        self.on_batch = on_batch  # (batch size, seconds) after every pass, for metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkrec-batch")
        self._closing = False
        self._busy = False  # a batch is being computed
        self.batches = 0

    @property
    def depth(self) -> int:
        """Requests waiting (not yet taken into a batch)."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, key: Any, payload: Any) -> Any:
        if self._queue is None or self._closing:
            raise Overloaded("the server is shutting down")
        if self._queue.qsize() >= self.config.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests waiting (serve.max_queue {self.config.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(key, payload, fut))
        return await fut

    async def _take(self) -> list[_Pending]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.config.window_ms / 1000
        while len(batch) < self.config.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self._busy = True
            groups: dict[Any, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            t0 = time.perf_counter()
            for key, items in groups.items():
                live = [p for p in items if not p.future.cancelled()]
                if not live:
                    continue
                try:
                    results = await loop.run_in_executor(self._pool, self.run_group, key, [p.payload for p in live])
                except Exception as exc:  # one failing group must not stop the worker; its callers get the error
                    for p in live:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, r in zip(live, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(r)
            self.batches += 1
            self._busy = False
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Graceful shutdown: refuse new requests, answer every queued and computing one, then stop the worker."""
        self._closing = True
        t_end = time.perf_counter() + timeout_s
        while (self.depth > 0 or self._busy) and time.perf_counter() < t_end:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:  # past the timeout: whoever still waits is told to retry
            while not self._queue.empty():
                p = self._queue.get_nowait()
                if not p.future.done():
                    p.future.set_exception(Overloaded("the server shut down before this request ran"))
        self._pool.shutdown(wait=True)
