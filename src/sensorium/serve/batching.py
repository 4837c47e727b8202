"""Dynamic batching: concurrent requests answered by as few generate() calls as possible, in one model thread.

Generating for 8 questions at once costs little more than for one (the frozen LM's weights are read
once per token for the whole batch), so requests that arrive together are answered together. The
first waiting request opens a short window (``max_wait_s``); whatever arrives within it, up to
``max_batch_size`` requests, joins the batch. The batch is split by what must agree inside one
generate() call, the base LM and layout (adapters may differ: ``generate_mixed``) and the decoding
options, and each part is encoded and generated at once. A composed model's requests batch only with
each other (its own ``batch_key``), its senses' media encoded sense by sense.

A request that samples with a ``seed`` (``options["seed"]``) generates alone, from its own seed: its answer
then depends on its seed and input, never on the requests that arrived beside it.

All model work runs in this one thread, so the server's event loop never waits on torch and the
injection hooks on a shared LM are never used by two batches at once. A batch nobody waits for any more (each of
its requests timed out, or its client went away) or a stopping server ends its generate() call at the next token
(``_Abandoned``): one slow request cannot hold the thread, and so every later request, past its own deadline.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..decoding import CompiledDecoding
from ..model import generate_mixed
from .adapters import HostedAdapter, HostedComposition


class ClientGone(Exception):
    """The client of a request closed its connection before the answer."""


@dataclass(frozen=True)
class Answer:
    text: str
    queue_ms: float  # from submission until its batch started (the batching window included)
    encode_ms: float  # the batch's encoder forward, shared by its requests
    generate_ms: float  # the batch's generate() call, shared by its requests
    batch_size: int  # requests answered by that generate() call


@dataclass
class _Job:
    adapter: HostedAdapter | HostedComposition
    media: Any
    question: str
    options: dict[str, Any]  # complete generate() options: the adapter's defaults, then the request's
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the request timed out or its client went away: skip it, or stop generating it

    def group(self) -> tuple:
        alone = id(self) if "seed" in self.options else None
        return self.adapter.batch_key, json.dumps(self.options, sort_keys=True), alone

    def settle(self, answer: Answer | None = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, answer, error)


def _settle(future: asyncio.Future, answer: Answer | None, error: BaseException | None) -> None:
    if future.done():  # cancelled by the request's timeout meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)


class _Abandoned(StoppingCriteria):
    """Ends a batch's generation at the next token once no request of it is waited for, or the server stops."""

    def __init__(self, jobs: list[_Job], stopping: threading.Event) -> None:
        self.jobs, self.stopping = jobs, stopping

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = self.stopping.is_set() or all(job.abandoned for job in self.jobs)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Random draws from ``seed`` inside, the generators' earlier state restored after: unseeded sampling of later
    requests stays as random as if no seed had been given."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class Batcher:
    """A queue of requests served by one model thread; ``max_batch_size=1`` turns batching off, and ``decoding``
    compiles the decode steps (see decoding.py)."""

    def __init__(self, max_batch_size: int = 8, max_wait_s: float = 0.01,
                 decoding: CompiledDecoding | None = None) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.decoding = decoding
        self.generate_calls = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the model thread is there to answer: a server whose thread has ended would only time out."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Requests queued for the model thread, not yet in a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="sensorium-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()  # a generation in progress ends at its next token
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    async def submit(self, adapter: HostedAdapter | HostedComposition, media: Any, question: str,
                     options: dict[str, Any], timeout_s: float, gone: Awaitable[None] | None = None) -> Answer:
        """The answer, or asyncio.TimeoutError after ``timeout_s`` (queueing included). ``gone`` returns when the
        client goes away (then ClientGone); after either, as after a cancellation, the request is dropped and its
        generation stopped, unless others of its batch still wait."""
        loop = asyncio.get_running_loop()
        job = _Job(adapter, media, question, options, loop, loop.create_future())
        watcher = asyncio.ensure_future(gone) if gone is not None else None
        self._queue.put(job)
        try:
            done, _ = await asyncio.wait([job.future, *([watcher] if watcher else [])], timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            raise ClientGone() if done else asyncio.TimeoutError()
        finally:
            if not job.future.done():
                job.abandoned = True
                job.future.cancel()
            if watcher is not None:
                watcher.cancel()

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            groups: dict[tuple, list[_Job]] = {}
            for job in self._collect(first):
                groups.setdefault(job.group(), []).append(job)
            for group in groups.values():
                self._answer(group)

    def _collect(self, first: _Job) -> list[_Job]:
        """The first job and those arriving within its window; jobs that waited longer than it join at once."""
        batch, deadline = [first], first.submitted + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop after this batch
                self._queue.put(None)
                break
            batch.append(job)
        return [job for job in batch if not job.abandoned]

    def _answer(self, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            features = self._encode(group)
            encoded = time.perf_counter()
            samples = [(job.adapter.model, tokens, job.question) for job, tokens in zip(group, features, strict=True)]
            options = dict(group[0].options)
            abandoned = StoppingCriteriaList([_Abandoned(group, self._stopping)])
            with seeded(options.pop("seed", None)):
                texts = generate_mixed(samples, stopping_criteria=abandoned, compiled=self.decoding, **options)
            self.generate_calls += 1
        except Exception as error:  # a failure belongs to these requests; the thread serves the next batch
            for job in group:
                job.settle(error=error)
            return
        done = time.perf_counter()
        for job, text in zip(group, texts, strict=True):
            job.settle(Answer(text, queue_ms=1000 * (started - job.submitted), encode_ms=1000 * (encoded - started),
                              generate_ms=1000 * (done - encoded), batch_size=len(group)))

    @staticmethod
    def _encode(group: list[_Job]) -> list[torch.Tensor]:
        """Encoder tokens per job, one forward per shared encoder and choice of stored blocks."""
        features: list[torch.Tensor | None] = [None] * len(group)
        rows_of: dict[tuple, list[int]] = {}
        for row, job in enumerate(group):
            rows_of.setdefault(job.adapter.encode_key, []).append(row)
        for rows in rows_of.values():
            encoded = group[rows[0]].adapter.model.encode([group[row].media for row in rows])
            for row, tokens in zip(rows, encoded, strict=True):
                features[row] = tokens
        return features
