"""Micro-batching with a token budget, a bounded queue and fair turns.

Each request becomes a job in a FIFO line. One worker waits for the first job, keeps collecting for up
to `max_wait_ms` (or until `max_batch` texts or `max_tokens` tokens wait), fills one batch from the
jobs in line order and runs the model once in a worker thread, so the event loop keeps accepting
requests meanwhile. A job larger than the budget is split: its first chunk runs now and the rest
rejoins the line *behind* whatever arrived during that model call, so one huge request cannot starve
the small ones (a small request waits for at most one chunk of each big job ahead of it).

The default wait is 0: an idle model starts on the first request at once (batch-1 latency, as a plain
pipeline server has), and under load the requests that arrive during one call make up the next batch, so
batches still form by themselves; a fixed wait only added its milliseconds to every lone request.

Tokenization happens off the model thread: with an `encode` function, each request's texts are encoded on
a tokenizer thread as soon as they arrive, while the model thread runs the batch before; the model call then
gets the encoded items (`Classifier.prepare` / `predict_prepared`).

Backpressure: `enqueue` refuses at once with `QueueFull` when `max_queue` texts already wait. A job
that times out, is cancelled (its client went away) or meets a shutdown leaves the line at once: its
texts never reach the model unless they are already running.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol


class QueueFull(Exception):
    """More than `max_queue` texts would wait; retry after `retry_after` seconds."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(f"{queued} texts are waiting for the model (limit {limit}); retry in {retry_after} s")
        self.retry_after = retry_after


class RequestTimeout(Exception):
    """The request waited longer than `request_timeout` for its predictions."""


class ShuttingDown(Exception):
    """The server is draining for shutdown."""


class BatchObserver(Protocol):
    def batch(self, texts: int, tokens: int, seconds: float) -> None: ...
    def queue(self, texts: int) -> None: ...


def estimate_tokens(text: str, limit: int) -> int:
    """Tokens a text will cost, without tokenizing on the event loop: about 4 characters per token for
    English WordPiece/BPE, plus the special tokens, capped at `limit` (the model truncates there)."""
    return min(limit, 2 + len(text) // 4)


@dataclass(eq=False)
class Job:
    texts: list[str]
    costs: list[int]
    future: asyncio.Future
    results: list = field(default_factory=list)
    encoded: asyncio.Future | None = None  # the texts' model inputs, computed on the tokenizer thread
    scheduled: int = 0  # texts handed to the model so far
    finished: int = 0

    @property
    def waiting(self) -> tuple[int, int]:
        """(texts, tokens) not yet handed to the model."""
        return len(self.texts) - self.scheduled, sum(self.costs[self.scheduled :])


Chunk = tuple[Job, int, int]  # job, first text, end


MAX_WAIT_MS = 0.0  # the default batch wait (see the module docstring); the CLI's --max-wait-ms says the same


class MicroBatcher:
    def __init__(self, predict: Callable[[list[str]], list], max_batch: int = 64, max_wait_ms: float = MAX_WAIT_MS, *,
                 max_tokens: int | None = None, max_queue: int | None = None,
                 cost: Callable[[str], int] = lambda text: 1, observer: BatchObserver | None = None,
                 encode: Callable[[list[str]], list] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or (max_tokens or 1) < 1 or (max_queue or 1) < 1:
            raise ValueError("max_batch, max_tokens and max_queue must be >= 1 and max_wait_ms >= 0")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_tokens = max_tokens or math.inf
        self.max_queue = max_queue
        self.cost = cost
        self.observer = observer
        # One model thread: the model itself uses every core; two calls at once would only fight.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentune-model")
        # encode: texts -> model inputs, one item per text; predict then takes those items instead of texts
        self.encode = encode
        self.tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentune-tokenize")
        self.batch_sizes: list[int] = []  # texts per model call (recent ones), for tests
        self.queued_texts = 0
        self.queued_tokens = 0
        self.seconds_per_token: float | None = None  # running estimate, for Retry-After
        self.draining = False
        self._drain_deadline = math.inf  # loop time by which every model call must have ended
        self._line: deque[Job] = deque()
        self._resume: Job | None = None  # a split job, rejoining the line after the current batch
        self._live: set[Job] = set()
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # Started lazily, on the loop that serves requests (a test client may bring its own loop).
            self._loop, self._arrived = loop, asyncio.Event()
            self._line.clear()
            self._resume = None
            self.queued_texts = self.queued_tokens = 0
            self._worker = loop.create_task(self._run())

    def enqueue(self, texts: list[str], timeout: float | None = None) -> asyncio.Future:
        """A future for the predictions of `texts`; cancel it to withdraw the texts still waiting."""
        self._ensure_started()
        loop, arrived = self._loop, self._arrived
        assert loop is not None and arrived is not None  # set by _ensure_started
        if self.draining:
            raise ShuttingDown("the server is shutting down")
        if self.max_queue is not None and self.queued_texts and self.queued_texts + len(texts) > self.max_queue:
            raise QueueFull(self.queued_texts, self.max_queue, self.retry_after())
        costs = [max(1, self.cost(t)) for t in texts]
        job = Job(list(texts), costs, loop.create_future(), results=[None] * len(texts))
        if self.encode is not None:
            job.encoded = loop.run_in_executor(self.tokenizer, self.encode, job.texts)
            # a job that leaves before its batch never reads it: retrieve the outcome so nothing is logged
            job.encoded.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._line.append(job)
        self._live.add(job)
        self._count(len(texts), sum(costs))
        job.future.add_done_callback(lambda _f: self._forget(job))
        if timeout is not None:
            timer = loop.call_later(timeout, self._fail, job, RequestTimeout(
                f"no answer within the request timeout of {timeout:g} s"))
            job.future.add_done_callback(lambda _f: timer.cancel())
        arrived.set()
        return job.future

    async def submit(self, texts: list[str], timeout: float | None = None) -> list:
        """Predictions for `texts`, computed together with whatever else is waiting."""
        return await self.enqueue(texts, timeout)

    def retry_after(self) -> int:
        """Seconds until the waiting texts have probably been served (1..60)."""
        if not self.seconds_per_token:
            return 1
        return max(1, min(60, math.ceil(self.queued_tokens * self.seconds_per_token)))

    def _count(self, texts: int, tokens: int) -> None:
        self.queued_texts += texts
        self.queued_tokens += tokens
        if self.observer is not None:
            self.observer.queue(self.queued_texts)

    @staticmethod
    def _fail(job: Job, error: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(error)

    def _forget(self, job: Job) -> None:
        """A finished, failed or cancelled job leaves the line; its unscheduled texts no longer wait."""
        self._live.discard(job)
        if self._resume is job:
            self._resume = None
        elif job in self._line:
            self._line.remove(job)
        else:
            return
        self._count(*(-n for n in job.waiting))
        job.scheduled = len(job.texts)

    async def _wait_for_batch(self) -> None:
        loop, arrived = asyncio.get_running_loop(), self._arrived
        assert arrived is not None  # the worker runs only after _ensure_started
        while not self._line:
            arrived.clear()
            await arrived.wait()
        deadline = loop.time() + self.max_wait
        while self.queued_texts < self.max_batch and self.queued_tokens < self.max_tokens:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[Chunk]:
        """Texts from the jobs in line order, up to the text count and token budget (at least one text)."""
        chunks: list[Chunk] = []
        texts = tokens = 0
        while self._line:
            job = self._line[0]
            start = end = job.scheduled
            while end < len(job.texts) and texts < self.max_batch and (
                    texts == 0 or tokens + job.costs[end] <= self.max_tokens):
                texts, tokens, end = texts + 1, tokens + job.costs[end], end + 1
            if end == start:
                break  # the budget is full
            self._line.popleft()
            self._count(start - end, -sum(job.costs[start:end]))
            job.scheduled = end
            chunks.append((job, start, end))
            if end < len(job.texts):
                self._resume = job
                break
        return chunks

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._resume is not None:  # behind the jobs that arrived while its last chunk ran
                self._line.append(self._resume)
                self._resume = None
            await self._wait_for_batch()
            chunks = self._take_batch()
            texts = await self._inputs(chunks)
            if not texts:
                continue
            tokens = sum(sum(job.costs[start:end]) for job, start, end in chunks)
            if loop.time() + tokens * (self.seconds_per_token or 0.0) > self._drain_deadline:
                # draining: a call that would outlast the grace period would hold up the exit; answer 503 now
                for job, _, _ in chunks:
                    self._fail(job, ShuttingDown("the server is shutting down"))
                continue
            self.batch_sizes = (self.batch_sizes + [len(texts)])[-1000:]
            began = loop.time()
            try:
                results = await loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as e:  # a bug in the model call: every request in the batch gets it (-> 500)
                for job, _, _ in chunks:
                    self._fail(job, e)
                continue
            self._observe(len(texts), tokens, loop.time() - began)
            self._deliver(chunks, results)

    async def _inputs(self, chunks: list[Chunk]) -> list:
        """The model inputs of the chunks: their texts, or their encoded items (an encoding error fails its job)."""
        if self.encode is None:
            return [t for job, start, end in chunks for t in job.texts[start:end]]
        inputs: list = []
        for job, start, end in list(chunks):
            assert job.encoded is not None  # set by enqueue when encode is given
            try:
                inputs += (await job.encoded)[start:end]
            except Exception as e:  # a bug in encode: this job gets it (-> 500), the others go on
                self._fail(job, e)
                chunks.remove((job, start, end))
        return inputs

    def _observe(self, texts: int, tokens: int, seconds: float) -> None:
        per_token = seconds / tokens
        self.seconds_per_token = per_token if self.seconds_per_token is None else (
            0.8 * self.seconds_per_token + 0.2 * per_token)
        if self.observer is not None:
            self.observer.batch(texts, tokens, seconds)

    @staticmethod
    def _deliver(chunks: list[Chunk], results: list) -> None:
        offset = 0
        for job, start, end in chunks:
            part, offset = results[offset : offset + end - start], offset + end - start
            if job.future.done():
                continue  # timed out or withdrawn meanwhile
            job.results[start:end] = part
            job.finished += end - start
            if job.finished == len(job.texts):
                job.future.set_result(job.results)

    async def warm_up(self, texts: list[str]) -> None:
        """One model call outside the line (first calls allocate and tune kernels)."""
        loop = asyncio.get_running_loop()
        inputs = texts if self.encode is None else await loop.run_in_executor(self.tokenizer, self.encode, texts)
        await loop.run_in_executor(self.executor, self.predict, inputs)

    def begin_drain(self, seconds: float) -> None:
        """Shutdown: refuse new texts, keep serving the waiting ones, fail what is left after `seconds`.

        A batch that would probably not end within `seconds` (by the running seconds-per-token estimate)
        is answered 503 instead of started: the process cannot exit while a model call runs."""
        self.draining = True
        if self._loop is not None:
            self._drain_deadline = self._loop.time() + seconds
            self._loop.call_later(seconds, self.fail_all, ShuttingDown("the server shut down before answering"))

    def fail_all(self, error: Exception) -> None:
        for job in list(self._live):
            self._fail(job, error)

    async def close(self) -> None:
        """Stop the worker (after uvicorn has let in-flight requests finish) and the model thread."""
        self.fail_all(ShuttingDown("the server shut down before answering"))
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass
        self.executor.shutdown(wait=True)
        self.tokenizer.shutdown(wait=True)
