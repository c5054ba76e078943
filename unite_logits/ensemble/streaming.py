"""The one generation path: rows of one ``model.generate`` call, each streamed and ended on its own.

`generate_rows` runs prepared prompts as the rows of one batched ``generate`` of one model,
with whatever logits processors the caller brings (the ensemble's `UniTEProcessor`, or none
for a model alone) and two small hooks placed in the generation loop:

* `EnsembledLogprobRecorder`, a logits processor right after the caller's, keeps the
  log-probabilities of the distribution at the current step (before temperature or top-p
  reshape it), so log-probs reported to a user are the ensemble's, not the primary's;
* `_BatchStop`, a stopping criterion, hands every row's new token to that row's
  `_StepWatcher`, which releases the text that is final (a UTF-8 character split across
  tokens, or the beginning of a stop string, is held back), and ends the row at a stop
  string, at its own ``max_new_tokens`` or when its cancel flag is set (Ctrl-C in the chat,
  a client that went away in the server). Rows end independently; the batch ends with the
  last one.

`Ensemble.generate`, ``--compare``'s members alone, the chat, the server and the evaluation
all come through here, so they stream, stop and report alike, and each answer is one
`GenerationResult`.

Costs per step: one ``log_softmax`` over the vocabulary when log-probs are asked for, and a
decode of a window of the newest few tokens (the incremental detokenizing of vLLM and
text-generation-inference), so the work does not grow with the answer's length.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from ..core.speculation import SpeculationStats
from ..core.token_bytes import token_bytes_view
from .options import GenerationOptions
from .prompts import PreparedPrompt

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "TokenLogprob",
    "Piece",
    "EnsembledLogprobRecorder",
    "generate_rows",
    "left_pad_id",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One row of a batch: a prepared prompt, how to decode, a cancel flag, and where its
    pieces go and its result goes as soon as the row ends (before the batch does)."""

    prepared: PreparedPrompt
    options: GenerationOptions = GenerationOptions()
    on_piece: Callable[["Piece"], None] | None = None
    cancel: threading.Event | None = None
    on_done: Callable[["GenerationResult"], None] | None = None


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
class GenerationResult:
    """One answer: its text (cut before a stop string), why it ended, token counts, the wall
    time of the batch it ran in, and the log-probabilities asked for.

    ``finish_reason``: ``"stop"`` (end of sequence or a stop string), ``"length"`` (it reached
    ``max_new_tokens``) or ``"cancelled"``.
    ``speculation``: what draft-and-verify did for this row (`SpeculationStats`), set by
    `unite_logits.Ensemble.run` once the batch has ended; None on the per-token path.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    speculation: SpeculationStats | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else float("inf")


class EnsembledLogprobRecorder(LogitsProcessor):
    """Keeps the log-probabilities of the scores it sees (every row); returns them unchanged.

    Placed right after `UniTEProcessor` (``logprobs=True``), it keeps the ensemble's
    log-probabilities as they are (``-inf`` outside the union; the same numbers ensembled
    scoring gives), before any sampling warper; after a model's raw logits it takes their
    ``log_softmax``. Cost: at most one batched ``log_softmax``.
    """

    def __init__(self, logprobs: bool = False) -> None:
        self.logprobs = logprobs
        self.last: torch.Tensor | None = None  # (batch, vocab)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = scores.float() if self.logprobs else torch.log_softmax(scores.float(), dim=-1)
        return scores


class _BatchStop(StoppingCriteria):
    """Feeds each row's new token to its watcher; a row stops when its watcher says so."""

    def __init__(self, watchers: Sequence["_StepWatcher"], recorder: EnsembledLogprobRecorder | None) -> None:
        self.watchers = list(watchers)
        self.recorder = recorder

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        """``batch_rows``: the batch rows of ``input_ids``' rows, where they are some of them
        (draft-and-verify calls the criteria for rows of equal length together)."""
        tokens = input_ids[:, -1].tolist()
        logprobs = self.recorder.last if self.recorder is not None else None
        rows = kwargs.get("batch_rows") or range(len(tokens))
        stop = []
        for position, (watcher, token) in enumerate(zip((self.watchers[row] for row in rows), tokens)):
            if watcher.done:
                stop.append(True)
            elif watcher.step(token, logprobs[position] if logprobs is not None else None):
                watcher.close()
                stop.append(True)
            else:
                stop.append(False)
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _StepWatcher:
    """Turns the primary's new tokens into final text pieces; watches stop strings and cancel."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int], request: GenerationRequest) -> None:
        self.tokenizer = tokenizer
        self.view = token_bytes_view(tokenizer, eos_token_ids)
        self.eos = set(eos_token_ids)
        self.options = request.options
        self.on_piece = request.on_piece
        self.on_done = request.on_done
        self.cancel = request.cancel
        self.prompt_tokens = len(request.prepared.primary_ids)
        self.started = time.perf_counter()
        self.result: GenerationResult | None = None
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

    def close(self, seconds: float | None = None) -> GenerationResult:
        """End the row (once): release what was held back (an unfinished character, a partial
        stop string), build its result and hand it to ``on_done``. ``seconds``: the batch's
        time so far (by default, since the watcher was made)."""
        if self.result is not None:
            return self.result
        if not self.stopped_at_string:
            self._release(final=True)
        elif self.pending:
            self._emit("")
        elapsed = time.perf_counter() - self.started if seconds is None else seconds
        self.result = GenerationResult(self.released, self.finish_reason, self.prompt_tokens, len(self.ids),
                                       elapsed, self.all_logprobs)
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


def left_pad_id(loaded: "LoadedModel") -> int:
    """What left-pads prompts in a batch: the pad token, else the first EOS id (as transformers)."""
    pad = loaded.tokenizer.pad_token_id
    return int(pad) if pad is not None else next(iter(loaded.eos_token_ids), 0)


def generate_rows(
    loaded: "LoadedModel", requests: Sequence[GenerationRequest], processors: Sequence[LogitsProcessor] = (),
    *, logprobs_from_processors: bool = False, custom_generate: Callable[..., Any] | None = None,
) -> list[GenerationResult]:
    """Run ``requests`` as the rows of one ``loaded.model.generate``; each row streams, stops and
    ends on its own. ``processors`` run first (the ensemble's), then the log-prob recorder;
    ``logprobs_from_processors``: their output already is log-probabilities (the ensemble's),
    reported as they are. ``custom_generate``: the decoding loop ``generate`` runs (the
    ensemble's draft-and-verify, `unite_logits.speculative.draft_and_verify`); None: transformers'.

    The requests have to decode alike (`GenerationOptions.decoding`: all greedy, or the same
    temperature and top-p; a seed, if any, is the first request's). Stop strings,
    ``max_new_tokens``, log-probs and cancel flags are per row. The batch runs until its last
    row ends, so every prompt has to fit the model's context window with the largest
    ``max_new_tokens`` (`Ensemble.prepare` checks each with its own). Rows are left-padded; a
    row that has finished is filled with an EOS id (so the ensemble sees it finish). Each
    row's answer is the one it gets alone (batched forward passes may differ in the last bits
    of floating point).
    """
    if not requests:
        raise ValueError("`requests` is empty")
    decodings = {request.options.decoding for request in requests}
    if len(decodings) > 1:
        raise ValueError(f"requests in one batch have to decode alike (temperature, top_p), got {sorted(map(str, decodings))}")
    model, tokenizer = loaded
    eos = list(loaded.eos_token_ids)
    longest = max(requests, key=lambda request: request.options.max_new_tokens).options
    wants_logprobs = any(request.options.top_logprobs is not None for request in requests)
    recorder = EnsembledLogprobRecorder(logprobs_from_processors) if wants_logprobs else None
    watchers = [_StepWatcher(tokenizer, eos, request) for request in requests]
    rows = [request.prepared.primary_ids for request in requests]
    pad = left_pad_id(loaded)
    width = max(len(ids) for ids in rows)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in rows], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=model.device)
    if requests[0].options.seed is not None:
        torch.manual_seed(requests[0].options.seed)
    started = time.perf_counter()
    model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_processor=[*processors, *([recorder] if recorder is not None else [])],
        stopping_criteria=StoppingCriteriaList([_BatchStop(watchers, recorder)]),
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else pad,
        **longest.generate_kwargs(),
        **({"custom_generate": custom_generate} if custom_generate is not None else {}),
    )
    seconds = time.perf_counter() - started
    results = [watcher.close(seconds) for watcher in watchers]  # rows still open ended with the batch
    logger.debug("generated %s tokens (%s)", [r.completion_tokens for r in results],
                 ",".join(r.finish_reason for r in results))
    return results
