"""Micro-batching: concurrent requests share one model call.

Requests wait in an asyncio queue; a single worker takes the first waiting request, then keeps
collecting until it holds `max_batch` texts or `max_wait_ms` has passed, and runs the model once in a
worker thread (so the event loop keeps accepting requests meanwhile). A request is never split; while
the model runs, new requests queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

Item = tuple[list[str], asyncio.Future]


class MicroBatcher:
    def __init__(self, predict: Callable[[list[str]], list], max_batch: int = 64, max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        # One model thread: the model itself uses every core; two calls at once would only fight.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentune-model")
        self.batch_sizes: list[int] = []  # texts per model call (recent ones), for /metadata and tests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Item] | None = None
        self._worker: asyncio.Task | None = None

    def _ensure_started(self) -> asyncio.Queue[Item]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # Started lazily, on the loop that serves requests (a test client may bring its own loop).
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run())
        return self._queue

    async def submit(self, texts: list[str]) -> list:
        """Predictions for `texts`, computed together with whatever else is waiting."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        await queue.put((texts, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[Item]) -> list[Item]:
        items = [await queue.get()]
        size = len(items[0][0])
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            items.append(item)
            size += len(item[0])
        return items

    async def _run(self) -> None:
        queue = self._queue
        while True:
            items = await self._collect(queue)
            items = [(texts, fut) for texts, fut in items if not fut.done()]  # drop disconnected clients
            texts = [t for batch, _ in items for t in batch]
            if not texts:
                continue
            self.batch_sizes = (self.batch_sizes + [len(texts)])[-1000:]
            try:
                results = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts)
            except Exception as e:  # a bug in the model call: every waiting request gets it (-> 500)
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for batch, fut in items:
                if not fut.done():
                    fut.set_result(results[start : start + len(batch)])
                start += len(batch)

    async def close(self) -> None:
        """Stop the worker (after uvicorn has let in-flight requests finish) and the model thread."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass
        self.executor.shutdown(wait=True)
