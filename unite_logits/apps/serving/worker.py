"""The thread that runs every generation of the server, batching requests that arrive together.

Requests wait in a FIFO queue. When the worker is free it takes the oldest, waits
``batch_wait_s`` for others to arrive, and runs every waiting request that can share its
batch as the rows of one ``generate`` call (`unite_logits.Ensemble.run`): with batched
auxiliaries a batch of B rows costs far less than B generations one after another. Requests
share a batch when they decode alike (all greedy, or the same temperature and top-p), carry
no ``seed`` (a seeded request runs in a batch of its own, so its seed governs exactly its own
sampling), fit in ``max_batch`` rows, and every prompt fits the primary's context window with
the batch's largest ``max_tokens``. Greedy choices of one prompt within a request are one row.
Each row stops, streams and is cancelled on its own, and its result is reported the moment it
ends; requests arriving while a batch runs form the next one (static batching: transformers'
``generate`` cannot take rows midway).

Each batch gets its own `UniTEProcessor`, so no request sees another's auxiliary state; the
models are shared, and running them from one thread means no two batches interleave on them.

Events reach the caller through ``job.notify(event)`` from the worker thread: `Rejected` when
a prompt cannot be used (too long for a context window, invalid text, refused by a chat
template) and nothing was generated; otherwise `Started`, then `PieceReady` as a choice's text
becomes final, `ChoiceDone` per choice as it ends, and finally `Ended` or `Failed`. Prompts are
checked on the worker thread because encoding them uses the tokenizers that generation uses.
Whatever one request raises fails that request only: the worker goes on with the next, and
`GenerationWorker.alive` says whether its thread still runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ...core.checks import check_int, context_window
from ...core.scoring import ScoreRequest, TokenScores
from ...ensemble.options import GenerationOptions
from ...ensemble.prompts import PreparedPrompt, PromptError
from ...ensemble.streaming import GenerationRequest, GenerationResult, Piece

__all__ = ["Job", "GenerationWorker", "FinishedJob", "DEFAULT_MAX_BATCH", "DEFAULT_BATCH_WAIT_S", "Event",
           "Started", "Rejected", "PieceReady", "Echoed", "ChoiceDone", "Ended", "Failed"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    """The worker took the job: its prompts passed every check and generation begins."""


@dataclass(frozen=True)
class Rejected:
    """A prompt cannot be used (nothing was generated)."""

    error: PromptError


@dataclass(frozen=True)
class PieceReady:
    """Choice ``choice`` has more final text."""

    choice: int
    piece: Piece


@dataclass(frozen=True)
class ChoiceDone:
    """Choice ``choice`` ended."""

    choice: int
    result: GenerationResult


@dataclass(frozen=True)
class Echoed:
    """Choice ``choice``'s prompt scored: its ids and the ensemble's log-probability of each
    token after the first (`unite_logits.TokenScores`)."""

    choice: int
    prompt_ids: list[int]
    scores: TokenScores


@dataclass(frozen=True)
class Ended:
    """Every choice of the job ended (or it was cancelled before it started)."""


@dataclass(frozen=True)
class Failed:
    """The job failed; ``error`` says why."""

    error: BaseException


Event = Union[Started, Rejected, PieceReady, Echoed, ChoiceDone, Ended, Failed]
Notify = Callable[[Event], None]

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_S = 0.02  # a step of the smallest catalogue pair takes ~70 ms on two CPU cores


@dataclass
class Job:
    """One request: a prompt per choice, how to decode, where events go, a cancel flag; with
    ``echo``, each prompt is scored (`Echoed`) and, if ``generate``, continued as well."""

    request_id: str
    prompts: Sequence[Any]
    chat: bool
    options: GenerationOptions
    notify: Notify
    cancel: threading.Event = field(default_factory=threading.Event)
    echo: bool = False
    generate: bool = True


@dataclass(frozen=True)
class FinishedJob:
    """What became of a job: its finish reasons, tokens, and the batch it ran in (for logs and tests)."""

    request_id: str
    finish_reasons: tuple[str, ...]
    completion_tokens: int
    batch_rows: int = 0
    batch_requests: int = 0


class _Row:
    """One generation of a batch and the choices (job, index) that receive it."""

    def __init__(self, admitted: "_Admitted", prepared: PreparedPrompt) -> None:
        self.admitted = admitted
        self.prepared = prepared
        self.indices: list[int] = []


class _Admitted:
    """A job whose prompts passed the checks: its rows, and what it needs of a batch."""

    def __init__(self, job: Job, rows_by_index: Sequence[PreparedPrompt]) -> None:
        self.job = job
        self.rows: list[_Row] = []
        shared: dict[int, _Row] = {}  # greedy answers a prompt the same way every time: one row
        for index, prepared in enumerate(rows_by_index):
            key = id(prepared)
            row = shared.get(key) if not job.options.sampling else None
            if row is None:
                row = _Row(self, prepared)
                self.rows.append(row)
                shared[key] = row
            row.indices.append(index)
        self.longest_prompt = max(len(row.prepared.primary_ids) for row in self.rows)
        self.results: dict[int, GenerationResult] = {}
        self.batch_rows = 0
        self.batch_requests = 0


class GenerationWorker:
    """Runs `Job`s on one daemon thread, oldest first, batching those that can share a batch.

    ``max_batch``: the most rows (generations) in one batch; a request with more choices
    than that still runs, in a batch of its own. ``max_batch=1`` serves one generation at a
    time. ``batch_wait_s``: how long the oldest request waits for others to join its batch.
    """

    def __init__(self, ensemble: Any, history: int = 64, *, max_batch: int = DEFAULT_MAX_BATCH,
                 batch_wait_s: float = DEFAULT_BATCH_WAIT_S) -> None:
        check_int("max_batch", max_batch, minimum=1)
        if not 0 <= batch_wait_s <= 10:
            raise ValueError(f"`batch_wait_s` has to be between 0 and 10 seconds, but is {batch_wait_s!r}")
        self.ensemble = ensemble
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._window = context_window(ensemble.primary.model)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[_Admitted] = deque()
        self.finished: deque[FinishedJob] = deque(maxlen=history)
        self._running: list[_Admitted] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unite-logits-generation", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize() + len(self._waiting)

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (it ends only when closed)."""
        return self._thread.is_alive()

    @property
    def closing(self) -> bool:
        """Whether `cancel_all` was called: every job is being cancelled (the server stops)."""
        return self._closing.is_set()

    def cancel_all(self) -> None:
        """Cancel the jobs in progress and every later one (the server is going down)."""
        self._closing.set()
        for admitted in list(self._running):
            admitted.job.cancel.set()

    def close(self, timeout: float = 30.0) -> None:
        """`cancel_all`, then stop the thread."""
        self.cancel_all()
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not (stopping and not self._waiting):
            try:
                stopping = self._turn(stopping)
            except Exception as error:  # a defect of ours: logged, its requests fail, the worker goes on
                logger.exception("the generation worker failed on a request; it goes on")
                for admitted in self._running:
                    admitted.job.notify(Failed(error))
                self._running = []

    def _turn(self, stopping: bool) -> bool:
        """Admit what is waiting and run one batch; True once the stop signal has come."""
        if not self._waiting:
            stopping = self._take(self._jobs.get())
            deadline = time.monotonic() + self.batch_wait_s
            while not stopping and (left := deadline - time.monotonic()) > 0:
                try:
                    stopping = self._take(self._jobs.get(timeout=left))
                except queue.Empty:
                    break
        while not stopping:  # whatever else is already waiting
            try:
                stopping = self._take(self._jobs.get_nowait())
            except queue.Empty:
                break
        if self._waiting:
            self._run(self._next_batch())
        return stopping

    def _take(self, job: Job | None) -> bool:
        """Admit ``job`` to the waiting line (or reject it); True when it is the stop signal."""
        if job is None:
            return True
        if self._left(job):
            return False
        try:
            prepared: dict[str, PreparedPrompt] = {}
            for prompt in job.prompts:  # the n copies of a prompt checked once
                key = repr(prompt)
                if key not in prepared:
                    prepared[key] = self.ensemble.prepare(prompt, chat=job.chat,
                                                          max_new_tokens=job.options.max_new_tokens)
        except PromptError as error:
            job.notify(Rejected(error))
            self.finished.append(FinishedJob(job.request_id, ("rejected",), 0))
            return False
        except Exception as error:  # reported to its request; the worker goes on
            logger.exception("request %s failed", job.request_id)
            job.notify(Failed(error))
            return False
        self._waiting.append(_Admitted(job, [prepared[repr(p)] for p in job.prompts]))
        return False

    def _left(self, job: Job) -> bool:
        """True, and the job is ended, when its client left while it waited (or the server stops)."""
        if self._closing.is_set():
            job.cancel.set()
        if not job.cancel.is_set():
            return False
        self.finished.append(FinishedJob(job.request_id, ("cancelled",), 0))
        job.notify(Ended())
        return True

    def _next_batch(self) -> list[_Admitted]:
        """The oldest waiting job and every later one that can share its batch."""
        head = self._waiting.popleft()
        batch = [head]
        if head.job.options.seed is not None or head.job.echo:
            return batch
        rows, longest_prompt, most_new = len(head.rows), head.longest_prompt, head.job.options.max_new_tokens
        for admitted in list(self._waiting):
            options = admitted.job.options
            new_rows = rows + len(admitted.rows)
            new_most = max(most_new, options.max_new_tokens)
            new_longest = max(longest_prompt, admitted.longest_prompt)
            if (options.seed is None and not admitted.job.echo and options.decoding == head.job.options.decoding
                    and new_rows <= self.max_batch
                    and (self._window is None or new_longest + new_most <= self._window)):
                batch.append(admitted)
                self._waiting.remove(admitted)
                rows, longest_prompt, most_new = new_rows, new_longest, new_most
        return batch

    def _run(self, batch: list[_Admitted]) -> None:
        batch = [admitted for admitted in batch if not self._left(admitted.job)]
        if not batch:
            return
        rows = [row for admitted in batch for row in admitted.rows]
        for admitted in batch:
            admitted.batch_rows, admitted.batch_requests = len(rows), len(batch)
            admitted.job.notify(Started())
        self._running = batch
        try:
            if batch[0].job.echo:
                self._echo(batch[0])
            else:
                self.ensemble.run([self._request(row) for row in rows])
        except Exception as error:  # reported to its requests; the worker goes on
            logger.exception("batch of %s failed", ", ".join(a.job.request_id for a in batch))
            for admitted in batch:
                admitted.job.notify(Failed(error))
        else:
            for admitted in batch:
                admitted.job.notify(Ended())
        finally:
            self._running = []
        logger.info("batch of %d requests, %d rows", len(batch), len(rows))

    def _echo(self, admitted: _Admitted) -> None:
        """Score each prompt's tokens (all but the first, which nothing precedes), then continue
        the prompts if the request asks for tokens too."""
        job = admitted.job
        scorer = self.ensemble.scorer()
        rows = [row for row in admitted.rows if len(row.prepared.primary_ids) > 1]
        requests = [ScoreRequest(row.prepared.primary_ids[:1], row.prepared.primary_ids[1:]) for row in rows]
        scored = dict(zip(map(id, rows), scorer.score(requests, top_n=job.options.top_logprobs or 0)))
        empty = TokenScores([], [], [], [])
        for row in admitted.rows:
            for index in row.indices:
                job.notify(Echoed(index, list(row.prepared.primary_ids), scored.get(id(row), empty)))
        if job.generate:
            self.ensemble.run([self._request(row) for row in admitted.rows])
            return
        for row in admitted.rows:
            result = GenerationResult("", "length", len(row.prepared.primary_ids), 0)
            for index in row.indices:
                job.notify(ChoiceDone(index, result))
            self._record(admitted, row.indices, result)

    def _request(self, row: _Row) -> GenerationRequest:
        job = row.admitted.job

        def on_piece(piece: Piece) -> None:
            for index in row.indices:
                job.notify(PieceReady(index, piece))

        def on_done(result: GenerationResult) -> None:
            for index in row.indices:
                job.notify(ChoiceDone(index, result))
            self._record(row.admitted, row.indices, result)

        return GenerationRequest(row.prepared, job.options, on_piece, job.cancel, on_done)

    def _record(self, admitted: _Admitted, indices: Sequence[int], result: GenerationResult) -> None:
        """Keep a row's result; once the job has all of its choices, log it as finished."""
        for index in indices:
            admitted.results[index] = result
        if len(admitted.results) < len(admitted.job.prompts):
            return
        results = [admitted.results[i] for i in range(len(admitted.job.prompts))]
        reasons = tuple(r.finish_reason for r in results)
        tokens = sum(r.completion_tokens for r in results)
        self.finished.append(FinishedJob(admitted.job.request_id, reasons, tokens, admitted.batch_rows,
                                         admitted.batch_requests))
        logger.info("request %s: %s, %d tokens", admitted.job.request_id, ",".join(reasons), tokens)
