"""Ensembled generations delivered piece by piece: the engine under ``chat`` and ``serve``.

`generate_streamed_batch` runs several requests as the rows of one batched
`Ensemble.generate_prepared` call (`generate_streamed` is a batch of one), with two small
hooks placed in the primary's ``generate`` loop:

* `EnsembledLogprobRecorder`, a logits processor right after `UniTEProcessor`, keeps the
  log-probabilities of the ensembled distribution at the current step (before temperature
  or top-p reshape it), so log-probs reported to a user are the ensemble's, not the primary's;
* `_BatchStop`, a stopping criterion, hands every row's new token to that row's
  `_StepWatcher`, which releases the text that is final (a UTF-8 character split across
  tokens, or the beginning of a stop string, is held back), and ends the row at a stop
  string, at its own ``max_new_tokens`` or when its cancel flag is set (Ctrl-C in the chat,
  a client that went away in the server). Rows end independently; the batch ends with the
  last one.

Costs per step: one ``log_softmax`` over the vocabulary when log-probs are asked for, and a
decode of a window of the newest few tokens (the incremental detokenizing of vLLM and
text-generation-inference), so the work does not grow with the answer's length.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from .token_bytes import token_bytes_view

if TYPE_CHECKING:
    from .api import Ensemble, PreparedPrompt, Prompt

__all__ = [
    "GenerationOptions",
    "StreamRequest",
    "TokenLogprob",
    "Piece",
    "StreamedResult",
    "EnsembledLogprobRecorder",
    "generate_streamed",
    "generate_streamed_batch",
    "MAX_TOP_LOGPROBS",
]

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # as the OpenAI API


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode: greedy unless ``temperature`` > 0; ``top_logprobs`` None means no log-probs."""

    max_new_tokens: int = 64
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens has to be at least 1, got {self.max_new_tokens}")
        if self.temperature is not None and not self.temperature >= 0:
            raise ValueError(f"temperature has to be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p has to be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings have to be non-empty strings")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs has to be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    @property
    def decoding(self) -> tuple[Any, ...]:
        """What has to be equal for requests to share a batch: how the next token is chosen."""
        return (self.temperature, self.top_p) if self.sampling else ("greedy",)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: temperature 0 or None is greedy."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sampling}
        if self.sampling:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs


@dataclass(frozen=True)
class StreamRequest:
    """One row of a streamed batch: a prepared prompt, how to decode, a cancel flag, and where
    its pieces go and its result goes as soon as the row ends (before the batch does)."""

    prepared: "PreparedPrompt"
    options: GenerationOptions = GenerationOptions()
    on_piece: Callable[["Piece"], None] | None = None
    cancel: threading.Event | None = None
    on_done: Callable[["StreamedResult"], None] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its ensembled log-probability (``bytes`` is None for a special token)."""

    token: str
    bytes: list[int] | None
    logprob: float
    top: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class Piece:
    """Text that became final at one step, and the tokens that completed it."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class StreamedResult:
    """The whole answer: text (cut at a stop string), why it ended, token counts."""

    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)


class EnsembledLogprobRecorder(LogitsProcessor):
    """Keeps the normalised log-probs of the scores it sees (every row); returns them unchanged.

    Placed right after `UniTEProcessor`, it sees the ensembled distribution (``-inf`` outside
    the union of candidates), before any sampling warper. Cost: one batched ``log_softmax``.
    """

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None  # (batch, vocab)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class _BatchStop(StoppingCriteria):
    """Feeds each row's new token to its watcher; a row stops when its watcher says so."""

    def __init__(self, watchers: Sequence["_StepWatcher"], recorder: EnsembledLogprobRecorder | None) -> None:
        self.watchers = list(watchers)
        self.recorder = recorder

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        logprobs = self.recorder.last if self.recorder is not None else None
        stop = []
        for row, (watcher, token) in enumerate(zip(self.watchers, tokens)):
            if watcher.done:
                stop.append(True)
            elif watcher.step(token, logprobs[row] if logprobs is not None else None):
                watcher.close()
                stop.append(True)
            else:
                stop.append(False)
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _StepWatcher:
    """Turns the primary's new tokens into final text pieces; watches stop strings and cancel."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int], request: StreamRequest) -> None:
        self.tokenizer = tokenizer
        self.view = token_bytes_view(tokenizer, eos_token_ids)
        self.eos = set(eos_token_ids)
        self.options = request.options
        self.on_piece = request.on_piece
        self.on_done = request.on_done
        self.cancel = request.cancel
        self.prompt_tokens = len(request.prepared.primary_ids)
        self.result: StreamedResult | None = None
        self.ids: list[int] = []
        self.text = ""  # the answer's text decoded so far (only complete characters until the end)
        self._prefix_offset = 0  # self.text is known up to ids[:_read_offset]; the decode window
        self._read_offset = 0  # starts at _prefix_offset so a decoder sees the context of a word
        self.released = ""  # text handed out so far
        self.pending: list[TokenLogprob] = []  # log-probs of tokens whose text is held back
        self.all_logprobs: list[TokenLogprob] = []
        self.stopped_at_string = False
        self.ended_by_eos = False
        self.cancelled = False

    # -- per step -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """The row has ended: later tokens of the batch are fillers."""
        return (self.stopped_at_string or self.ended_by_eos or self.cancelled
                or len(self.ids) >= self.options.max_new_tokens)

    def step(self, token: int, logprobs: torch.Tensor | None) -> bool:
        """Take the row's new token (and the ensembled log-probs it was chosen from); True: stop the row."""
        self.ids.append(token)
        if token in self.eos:
            self.ended_by_eos = True
            return True
        if logprobs is not None and self.options.top_logprobs is not None:
            entry = self._logprob_entry(token, logprobs)
            self.pending.append(entry)
            self.all_logprobs.append(entry)
        self._release(final=False)
        if self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
        return self.done

    def close(self) -> StreamedResult:
        """End the row (once): release what was held back (an unfinished character, a partial
        stop string), build its result and hand it to ``on_done``."""
        if self.result is not None:
            return self.result
        if not self.stopped_at_string:
            self._release(final=True)
        elif self.pending:
            self._emit("")
        self.result = StreamedResult(self.released, self.finish_reason, self.prompt_tokens, len(self.ids),
                                     self.all_logprobs)
        if self.on_done is not None:
            self.on_done(self.result)
        return self.result

    # -- text -----------------------------------------------------------------------------
    def _decode_new(self, final: bool) -> None:
        """Append to `text` what the newest tokens add: two decodes of a window of a few tokens.

        A window that ends inside a character (``\ufffd``) waits for the next token, unless
        ``final``.
        """
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        after = decode(self.ids[self._prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)

    def _release(self, final: bool) -> None:
        self._decode_new(final)
        text = self.text
        end = len(text)
        cut = min((i for i in (text.find(s, max(0, len(self.released) - len(s) + 1)) for s in self.options.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped_at_string = True
            end = cut
        elif not final:
            end -= self._partial_stop_length(text, end)
        if end > len(self.released) or (final and self.pending):
            self._emit(text[len(self.released) : max(end, len(self.released))])

    def _partial_stop_length(self, text: str, end: int) -> int:
        """Length of the longest end of ``text[:end]`` that could begin a stop string."""
        longest = 0
        for stop in self.options.stop:
            for size in range(min(len(stop) - 1, end - len(self.released)), longest, -1):
                if text.endswith(stop[:size], 0, end):
                    longest = size
                    break
        return longest

    def _emit(self, text: str) -> None:
        piece = Piece(text, tuple(self.pending))
        self.released += text
        self.pending = []
        if self.on_piece is not None:
            self.on_piece(piece)

    # -- log-probs ------------------------------------------------------------------------
    def _describe(self, token: int, logprob: float) -> TokenLogprob:
        data = self.view.bytes_of(token)
        if data is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            return TokenLogprob(text, list(text.encode("utf-8")), logprob)
        return TokenLogprob(data.decode("utf-8", errors="replace"), list(data), logprob)

    def _logprob_entry(self, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        entry = self._describe(token, float(logprobs[token]))
        wanted = self.options.top_logprobs or 0
        if not wanted:
            return entry
        values, ids = torch.topk(logprobs, min(wanted, logprobs.numel()))
        top = tuple(self._describe(int(i), float(v)) for v, i in zip(values, ids) if torch.isfinite(v))
        return TokenLogprob(entry.token, entry.bytes, entry.logprob, top)

    @property
    def finish_reason(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.stopped_at_string or self.ended_by_eos:
            return "stop"
        return "length" if len(self.ids) >= self.options.max_new_tokens else "stop"


def generate_streamed(
    ensemble: "Ensemble",
    prompt: "Prompt",
    *,
    chat: bool,
    options: GenerationOptions = GenerationOptions(),
    on_piece: Callable[[Piece], None] | None = None,
    cancel: threading.Event | None = None,
) -> StreamedResult:
    """Generate with ``ensemble`` and hand each final piece of text to ``on_piece`` as it comes.

    ``chat`` formats ``prompt`` (text or messages) with each member's own chat template.
    Setting ``cancel`` ends generation after the current step (finish reason ``"cancelled"``).
    """
    prepared = ensemble.prepare(prompt, chat=chat, max_new_tokens=options.max_new_tokens)
    return generate_streamed_batch(ensemble, [StreamRequest(prepared, options, on_piece, cancel)])[0]


def generate_streamed_batch(ensemble: "Ensemble", requests: Sequence[StreamRequest]) -> list[StreamedResult]:
    """Run ``requests`` as the rows of one batch; each row streams, stops and ends on its own.

    The requests have to decode alike (`GenerationOptions.decoding`: all greedy, or the same
    temperature and top-p); stop strings, ``max_new_tokens``, log-probs and cancel flags are
    per row. The batch runs until its last row ends, so every prompt has to fit the
    primary's context window with the largest ``max_new_tokens`` (`Ensemble.prepare` checks
    each with its own). Each row's answer is the one it gets alone (batched forward passes
    may differ in the last bits of floating point).
    """
    if not requests:
        raise ValueError("`requests` is empty")
    decodings = {request.options.decoding for request in requests}
    if len(decodings) > 1:
        raise ValueError(f"requests in one batch have to decode alike (temperature, top_p), got {sorted(map(str, decodings))}")
    longest = max(requests, key=lambda request: request.options.max_new_tokens).options
    primary = ensemble.primary
    wants_logprobs = any(request.options.top_logprobs is not None for request in requests)
    recorder = EnsembledLogprobRecorder() if wants_logprobs else None
    watchers = [_StepWatcher(primary.tokenizer, primary.eos_token_ids, request) for request in requests]
    ensemble.generate_prepared(
        [request.prepared for request in requests],
        logits_processor=[recorder] if recorder is not None else [],
        stopping_criteria=StoppingCriteriaList([_BatchStop(watchers, recorder)]),
        **longest.generate_kwargs(),
    )
    streamed = [watcher.close() for watcher in watchers]  # rows still open ended with the batch
    logger.debug("generated %s tokens (%s)", [r.completion_tokens for r in streamed],
                 ",".join(r.finish_reason for r in streamed))
    return streamed
