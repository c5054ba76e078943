"""One thread that runs every generation of the server, one request after another.

Each request gets its own `UniTEProcessor` (built inside `Ensemble.generate`), so no request
sees another's auxiliary state; the models themselves are shared, and running them from one
thread means no two generations interleave on them and a request's ``seed`` governs exactly
its own sampling. Requests wait in a FIFO queue. Batching several requests into one
``generate`` call is the next step once batched auxiliaries land in the core.

Events reach the caller through ``job.notify(kind, index, payload)`` from the worker thread:
first ``("started", -1, None)``, or ``("rejected", -1, PromptError)`` when a prompt cannot be
used (too long for the primary's context window, invalid text) and nothing was generated;
then ``("piece", i, Piece)`` as text becomes final, ``("done", i, StreamedResult)`` per
choice, and finally ``("end", -1, None)`` or ``("error", -1, exception)``. The prompts are
checked on the worker thread because encoding them uses the tokenizers that generation uses.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError

from ..api import check_prompt, encode_prompt
from ..prompt_checks import PromptError, check_fits
from ..token_stream import GenerationOptions, Piece, StreamedResult, generate_streamed

__all__ = ["Job", "GenerationWorker", "FinishedJob"]

logger = logging.getLogger(__name__)

Notify = Callable[[str, int, Any], None]


@dataclass
class Job:
    """One request: a prompt per choice, how to decode, where events go, a cancel flag."""

    request_id: str
    prompts: Sequence[Any]
    chat: bool
    options: GenerationOptions
    notify: Notify
    seed: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class FinishedJob:
    """What became of a job: its finish reasons and tokens (for logs and tests)."""

    request_id: str
    finish_reasons: tuple[str, ...]
    completion_tokens: int


class GenerationWorker:
    """Runs `Job`s on one daemon thread, in arrival order."""

    def __init__(self, ensemble: Any, history: int = 64) -> None:
        self.ensemble = ensemble
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self.finished: deque[FinishedJob] = deque(maxlen=history)
        self._current: Job | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unite-logits-generation", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def cancel_all(self) -> None:
        """Cancel the job in progress and every later one (the server is going down)."""
        self._closing.set()
        current = self._current
        if current is not None:
            current.cancel.set()

    def close(self, timeout: float = 30.0) -> None:
        """`cancel_all`, then stop the thread."""
        self.cancel_all()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._closing.is_set():
                job.cancel.set()
            self._current = job
            try:
                self._run(job)
            except Exception as error:  # reported to its request; the worker goes on
                logger.exception("request %s failed", job.request_id)
                job.notify("error", -1, error)
            else:
                job.notify("end", -1, None)
            finally:
                self._current = None

    def _check(self, prompt: Any, chat: bool, max_new_tokens: int) -> None:
        """What `Ensemble.generate` would refuse, refused before a response has started.

        Every member's chat template is applied once here: a template may refuse a
        conversation (roles out of order, a system message it does not take).
        """
        try:
            check_prompt(prompt)
        except PromptError:
            raise
        except ValueError as error:
            raise PromptError(str(error)) from None
        primary = self.ensemble.primary
        for loaded in self.ensemble.models if chat else [primary]:
            try:
                ids = encode_prompt(loaded, prompt, chat=chat)
            except TemplateError as error:
                raise PromptError(f"the chat template of {loaded.name} refuses these messages: {error}") from None
            if loaded is primary:
                check_fits(primary.model, primary.name, len(ids), max_new_tokens)

    def _run(self, job: Job) -> None:
        results: list[StreamedResult] = []
        if job.cancel.is_set():  # the client left while the job waited
            self.finished.append(FinishedJob(job.request_id, ("cancelled",), 0))
            return
        try:
            for prompt in {repr(p): p for p in job.prompts}.values():  # the n copies of a prompt once
                self._check(prompt, job.chat, job.options.max_new_tokens)
        except PromptError as error:
            job.notify("rejected", -1, error)
            self.finished.append(FinishedJob(job.request_id, ("rejected",), 0))
            return
        job.notify("started", -1, None)
        if job.seed is not None:
            torch.manual_seed(job.seed)
        greedy_answers: dict[str, tuple[StreamedResult, list[Piece]]] = {}
        for index, prompt in enumerate(job.prompts):
            key = repr(prompt)
            if key in greedy_answers:  # greedy decoding answers a prompt the same way every time
                result, pieces = greedy_answers[key]
                for piece in pieces:
                    job.notify("piece", index, piece)
            else:
                pieces = []

                def on_piece(piece: Piece, index: int = index, pieces: list[Piece] = pieces) -> None:
                    pieces.append(piece)
                    job.notify("piece", index, piece)

                result = generate_streamed(self.ensemble, prompt, chat=job.chat, options=job.options,
                                           on_piece=on_piece, cancel=job.cancel)
                if not job.options.sampling and result.finish_reason != "cancelled":
                    greedy_answers[key] = (result, pieces)
            results.append(result)
            job.notify("done", index, result)
            if result.finish_reason == "cancelled":
                break
        reasons = tuple(r.finish_reason for r in results)
        self.finished.append(FinishedJob(job.request_id, reasons, sum(r.completion_tokens for r in results)))
        logger.info("request %s: %s, %d tokens", job.request_id, ",".join(reasons), self.finished[-1].completion_tokens)
