"""`UniTEProcessor`: union top-k ensembling inside ``model.generate``.

The primary model runs the ordinary generation loop. At every step this processor

1. validates the step's tensors,
2. maps the step's rows onto the members' rows (`unite_logits.core.rows.RowStore.follow`:
   each auxiliary's own ids and one KV cache over all rows, brought up to date in one
   forward pass per auxiliary whatever the batch size),
3. ensembles (`unite_logits.core.step`: every model's top-k, their union across
   vocabularies, the renormalised probabilities averaged),
4. returns the ensembled log-probabilities at the primary's ids, ``-inf`` elsewhere, and
   starts the auxiliaries on the token greedy search is about to pick.

Greedy search then emits the ensemble's best candidate; sampling draws from the ensembled
distribution (temperature, top-p and other warpers act on it, since they run after
processors). Beam search works: rows are followed by their token prefix, not by position.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .core.chat import chat_prompt_ids, validate_messages
from .core.checks import check_int, check_top_k, check_weight
from .core.member import EnsembleMember
from .core.prompts import MemberPrompt, PromptSource
from .core.rows import RowStore
from .core.scoring import _votes_at
from .core.speculation import DEFAULT_DRAFT_TOKENS, DraftSchedule, Schedule, SpeculationStats
from .core.step import (
    NonFiniteScoresError,
    StepModel,
    StepTrace,
    check_step_inputs,
    ensemble_step,
    ensembled_scores,
    relative_weights,
)
from .core.token_bytes import token_bytes_view
from .core.trace import StepRecord, StepRecorder
from .core.workers import MemberError, Workers

__all__ = ["MemberError", "NonFiniteScoresError", "ProcessorInUseError", "UniTEProcessor"]


def check_gate(gate: float | None) -> float | None:
    """The confidence gate: None, or a probability in (0, 1]."""
    if gate is None:
        return None
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not 0 < gate <= 1:
        raise ValueError(f"`confidence_gate` has to be None or a probability in (0, 1], but is {gate!r}")
    return float(gate)


class ProcessorInUseError(RuntimeError):
    """One processor was called from two threads at once; each generation needs its own."""


class UniTEProcessor(LogitsProcessor):
    r"""Ensemble auxiliary models with the primary, whatever their tokenizers.

    Args:
        primary_tokenizer: tokenizer of the model whose ``generate`` runs.
        members: the auxiliary models: `Member` (a model in this process), `RemoteMember`
            (a model behind llama.cpp's server or an OpenAI-compatible one), or anything else
            that is an `unite_logits.core.member.EnsembleMember`; may be empty.
        top_k: candidates each model proposes per step.
        primary_weight: weight of the primary in the average (only ratios matter).
        member_prompts: optional, one entry per member, overriding the default auxiliary prompt
            (the primary's prompt text re-encoded by the member's tokenizer with its own BOS).
            An entry is a string (encoded verbatim, no special tokens added: use it for a chat
            template's output), a list of token ids, a list of those (one per batch row, None
            for a row that takes the default), or None for the default.
        primary_eos_token_ids: ids that end the primary's sequence besides its tokenizer's EOS.
        trace: record a `StepRecord` per step and row in `trace`.
        primary_name: label of the primary in traces.
        concurrent: run the auxiliaries at the same time, each on its own worker thread, and
            start them on the token greedy search is about to pick while the primary runs its
            next forward pass (undone when the guess was wrong, so outputs are the same as
            with ``concurrent=False``, which runs them one after another). Call `close` (or
            use the processor as a context manager) to stop the workers.
        member_threads: torch threads of each auxiliary's worker; default: as many as the
            thread that builds the processor uses (`unite_logits.core.workers.default_member_threads`).
        primary_pad_token_id: the id that left-pads the primary's prompts in a batch (default:
            its tokenizer's pad token); leading ones are not part of a row's prompt.
        num_draft_tokens: with ``model.generate(..., custom_generate=draft_and_verify)``
            (`unite_logits.speculative`), the tokens the primary drafts per round to start with.
        draft_schedule: how the draft length adapts (`unite_logits.core.speculation.DraftSchedule`):
            ``"cost"`` (the length of least measured time per token), ``"heuristic"``
            (transformers' assistant schedule) or ``"constant"``.
        confidence_gate: None (default: exact UniTE), or a probability ``tau``: where the
            primary's own top token has at least this probability, the members are not asked and
            the primary's distribution stands (faster, no longer exactly UniTE; docs/speculative.md).

    Raises:
        TypeError, ValueError: on invalid arguments, before any generation starts.

    Example:
        >>> proc = UniTEProcessor(tok_a, [Member(model_b, tok_b)], top_k=10)  # doctest: +SKIP
        >>> model_a.generate(**tok_a(prompt, return_tensors="pt"), logits_processor=[proc])  # doctest: +SKIP

    Cost per step: one batched forward pass of each auxiliary over the token(s) that
    changed in every row, one top-k and one gather per model; per row, one small re-encode
    per auxiliary and O(top_k x models) bookkeeping. A member of weight 0 is absent: it
    runs no forward pass and proposes nothing. One processor serves one generation at a
    time: a call from a second thread while one runs raises `ProcessorInUseError`.
    """

    supports_continuous_batching = False

    def __init__(
        self,
        primary_tokenizer: PreTrainedTokenizerBase,
        members: Sequence[EnsembleMember] = (),
        top_k: int = 10,
        primary_weight: float = 1.0,
        member_prompts: Sequence[MemberPrompt | None] | None = None,
        primary_eos_token_ids: Sequence[int] | None = None,
        trace: bool = False,
        primary_name: str = "primary",
        concurrent: bool = True,
        member_threads: int | None = None,
        primary_pad_token_id: int | None = None,
        num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        draft_schedule: Schedule = "cost",
        confidence_gate: float | None = None,
    ) -> None:
        self.top_k = check_top_k(top_k)
        self.draft_schedule = DraftSchedule(num_draft_tokens, draft_schedule)
        self.confidence_gate = check_gate(confidence_gate)
        self.last_speculation: SpeculationStats | None = None
        if primary_pad_token_id is not None:
            check_int("primary_pad_token_id", primary_pad_token_id)
        if not isinstance(members, (list, tuple)):
            raise TypeError(f"`members` has to be a list of Member, but is {type(members).__name__}")
        for index, member in enumerate(members):
            if not isinstance(member, EnsembleMember):
                raise TypeError(f"`members[{index}]` has to be a unite_logits.Member or RemoteMember, but is "
                                f"{type(member).__name__}")
        self.primary_weight = check_weight("primary_weight", primary_weight)
        self.weights = [self.primary_weight] + [m.weight for m in members]
        self._relative_weights = relative_weights(self.weights)
        if member_prompts is not None and len(member_prompts) != len(members):
            raise ValueError(
                f"`member_prompts` needs one entry per member ({len(members)}), but has {len(member_prompts)}"
            )
        self.members = list(members)
        self.primary_view = token_bytes_view(primary_tokenizer, primary_eos_token_ids or ())
        self.member_views = [token_bytes_view(m.tokenizer, m.eos_token_ids or ()) for m in members]
        self.names = [primary_name] + [str(m.name) for m in members]
        self._active = [j for j, member in enumerate(members) if member.weight > 0]
        self.runners = [members[j].runner(vocab_size=self.member_views[j].size, top_k=self.top_k)
                        for j in self._active]
        self.member_prompts = list(member_prompts) if member_prompts is not None else [None] * len(members)
        sources = [PromptSource(j, self.member_views[j], self.primary_view, self.member_prompts[j])
                   for j in self._active]
        pad = primary_pad_token_id if primary_pad_token_id is not None else primary_tokenizer.pad_token_id
        workers = Workers([runner.name for runner in self.runners], concurrent, member_threads)
        self.rows = RowStore(self.runners, sources, self.primary_view, pad, workers)
        self.record_trace = trace
        self.trace: list[StepRecord] = []
        self._busy = threading.Lock()

    @classmethod
    def from_messages(
        cls,
        messages: Sequence[Mapping[str, str]],
        primary_tokenizer: PreTrainedTokenizerBase,
        members: Sequence[EnsembleMember] = (),
        **kwargs: Any,
    ) -> "UniTEProcessor":
        """A processor for one conversation: each member formats it with its own chat template.

        Format the primary's side the usual way (``tokenizer.apply_chat_template`` or a
        ``text-generation`` pipeline given the messages). Members without a template fall
        back to the plain text of the messages, with a warning.
        """
        validate_messages(messages)
        prompts = [chat_prompt_ids(member.tokenizer, messages, name=member.name) for member in members]
        return cls(primary_tokenizer, members, member_prompts=prompts, **kwargs)

    # -- LogitsProcessor contract -------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return the ensembled log-probabilities (``-inf`` outside the union).

        At a candidate, ``log(probs * mass)``: UniTE's distribution over the union times the
        mass the models put on the union (`unite_logits.core.combine`, rule 5), so with no
        auxiliary the primary's own log-probabilities come back on its top-k. Greedy search and
        sampling see UniTE's ratios; beam search adds these log-probabilities up.

        Args:
            input_ids: ``(batch, length)`` prompt plus the tokens generated so far.
            scores: ``(batch, vocab)`` the primary's scores after the processors before this one.

        Raises:
            NonFiniteScoresError: a model's distribution is NaN or infinite for a row.
            ProcessorInUseError: another thread is inside this processor.
        """
        check_step_inputs(input_ids, scores)
        if not self._busy.acquire(blocking=False):
            raise ProcessorInUseError(
                "this UniTEProcessor is already working on a generation in another thread; give each "
                "concurrent generation a processor of its own"
            )
        try:
            return self._ensemble(input_ids, scores)
        except BaseException:
            self.rows.close()  # waits for work in flight: no worker outlives the error
            raise
        finally:
            self._busy.release()

    def _ensemble(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.FloatTensor:
        previous = self.rows.generation
        gated = self._gated(scores) if self.confidence_gate is not None else None
        generation = self.rows.follow(input_ids, gated)
        if generation is not previous:
            self.trace.clear()
        out = scores.clone()  # finished rows keep the primary's scores
        live = generation.live
        if not live:
            return cast(torch.FloatTensor, out)
        steps = [generation.steps[row] for row in live]
        asked = [index for index, row in enumerate(live) if gated is None or not gated[row]]
        members = [(rows.logprobs, rows.votes) for rows in generation.members]
        index = torch.as_tensor(live, dtype=torch.long, device=scores.device)
        ensembled = self.ensemble_rows(
            scores.index_select(0, index), members, asked,
            describe_row=lambda i: f"batch row {live[i]} at step {steps[i]}",
            trace=(lambda models, rows: self._recorder(models, [steps[i] for i in rows], [live[i] for i in rows]))
            if self.record_trace else None)
        out[index] = ensembled.to(out.dtype)
        self.rows.guess(out)
        return cast(torch.FloatTensor, out)

    def ensemble_rows(
        self,
        scores: torch.Tensor,
        members: Sequence[tuple[torch.Tensor, Callable[[int], bool]]],
        asked: Sequence[int] | None = None,
        *,
        describe_row: Callable[[int], str] = lambda row: f"row {row}",
        trace: Callable[[list[StepModel], list[int]], StepTrace] | None = None,
    ) -> torch.Tensor:
        """UniTE's step over rows whose inputs are given: the primary's processed ``scores``
        ``(rows, vocab)`` and, per active member, its ``(rows, vocab)`` log-probabilities for the
        same rows with whether it votes for each. Returns the rows' ensembled log-probabilities
        (``-inf`` outside the union). Rows not in ``asked`` (all, if None) get the primary's own
        log-probabilities: the confidence gate kept them without asking the members.

        Both generation paths come here: the per-token path once per step, draft-and-verify once
        per round for every drafted position of every row.
        """
        vocab = min(scores.shape[-1], self.primary_view.size)
        primary_logprobs = torch.log_softmax(scores[:, :vocab].float(), dim=-1)
        out = torch.full(scores.shape, float("-inf"), dtype=torch.float32, device=scores.device)
        out[:, :vocab] = primary_logprobs
        rows = list(range(scores.shape[0])) if asked is None else list(asked)
        if not rows:
            return out
        index = torch.as_tensor(rows, dtype=torch.long, device=scores.device)
        weights = self._relative_weights
        models = [StepModel(self.primary_view, primary_logprobs.index_select(0, index), weights[0], self.names[0])]
        for j, (logprobs, votes) in zip(self._active, members):
            member_rows = logprobs.index_select(0, index.to(logprobs.device))
            models.append(StepModel(self.member_views[j], member_rows, weights[j + 1], self.names[j + 1],
                                    _votes_at(votes, rows)))
        combined = ensemble_step(models, scores.index_select(0, index)[:, :vocab], self.top_k,
                                 describe_row=lambda i: describe_row(rows[i]),
                                 trace=trace(models, rows) if trace is not None else None)
        ensembled_scores(combined, models[0].logprobs, out, rows)
        return out

    def _gated(self, scores: torch.Tensor) -> list[bool]:
        """Per row, whether the primary is sure enough to go without the members (the gate)."""
        assert self.confidence_gate is not None
        top = torch.softmax(scores.float(), dim=-1).amax(dim=-1)
        return (top >= self.confidence_gate).tolist()

    def _recorder(self, models: list[StepModel], steps: list[int], live: list[int]) -> StepRecorder:
        timing = self.rows.timing
        member_ms = {runner.name: 1000 * seconds for runner, seconds in zip(self.runners, timing.members)}
        return StepRecorder(self.trace, self.primary_view, [m.name for m in models], self.names, steps, live,
                            member_ms, 1000 * timing.wait)

    def reset(self) -> None:
        """Forget the current generation (a new ``generate`` call is also detected by itself)."""
        self.rows.generation = None
        self.trace.clear()

    def close(self) -> None:
        """Forget the generation in progress and stop the auxiliaries' worker threads, waiting
        for work in flight. A later call starts them again. Also done on any error."""
        self.rows.close()
        for runner in self.runners:
            runner.close()

    def __enter__(self) -> "UniTEProcessor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
