"""`UniTEProcessor`: union top-k ensembling inside ``model.generate``.

The primary model runs the ordinary generation loop. At every step this processor

1. brings each auxiliary up to date with the text generated so far: its own ids, and one
   KV cache over all rows, so each auxiliary runs one forward pass per step whatever the
   batch size (`unite_logits.rows`, `unite_logits.ragged_cache`),
2. takes every model's top-k and forms their union across vocabularies
   (`unite_logits.alignment`),
3. averages the models' renormalised probabilities over the union
   (`unite_logits.combine`),
4. returns the log of the ensembled distribution at the primary's ids, ``-inf`` elsewhere.

Greedy search then emits the ensemble's best candidate; sampling draws from the ensembled
distribution (temperature, top-p and other warpers act on it, since they run after
processors). Beam search works: states are keyed by each beam's token prefix, not by row.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import math

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .alignment import (
    EOS,
    Lookups,
    Proposal,
    aligned_from,
    build_union,
    candidate_key,
    gather_probabilities,
    plan_lookups,
    primary_ids,
)
from .chat import chat_prompt_ids, validate_messages
from .combine import Combined, combine
from .member import Member, check_top_k, check_weight
from .remote import RemoteMember, RemoteRunner
from .rows import AuxiliaryRows, LocalRunner, RowStore, Runner, match_parents
from .sync import IdSync, TokenSync
from .token_bytes import TokenBytes, token_bytes_view
from .trace import StepRecord
from .workers import MemberError, Round, Workers

__all__ = ["MemberError", "NonFiniteScoresError", "UniTEProcessor"]

_GUESS_WINDOW = 8
"""Recent guesses looked at: guessing pauses while fewer than half of them were right."""

MemberPrompt = str | Sequence[int] | Sequence[str | Sequence[int] | None]


class UniTEProcessor(LogitsProcessor):
    r"""Ensemble auxiliary models with the primary, whatever their tokenizers.

    Args:
        primary_tokenizer: tokenizer of the model whose ``generate`` runs.
        members: the auxiliary models: `Member` (a model in this process) or `RemoteMember`
            (a model behind llama.cpp's server or an OpenAI-compatible one); may be empty.
        top_k: candidates each model proposes per step.
        primary_weight: weight of the primary in the average (only ratios matter).
        member_prompts: optional, one entry per member, overriding the default auxiliary prompt
            (the primary's prompt text re-encoded by the member's tokenizer with its own BOS).
            An entry is a string (encoded verbatim, no special tokens added: use it for a chat
            template's output), a list of token ids, a list of those (one per batch row, None
            for a row that takes the default), or None for the default.
        primary_eos_token_ids: ids that end the primary's sequence besides its tokenizer's EOS.
        primary_pad_token_id: the id that left-pads the primary's prompts in a batch (default:
            its tokenizer's pad token); leading ones are not part of a row's prompt.
        trace: record a `StepRecord` per step and row in `trace`.
        primary_name: label of the primary in traces.
        concurrent: run the auxiliaries at the same time, each on its own worker thread, and
            start them on the token greedy search is about to pick while the primary runs its
            next forward pass (undone when the guess was wrong, so outputs are the same as
            with ``concurrent=False``, which runs them one after another). Call `close` (or
            use the processor as a context manager) to stop the workers.
        member_threads: torch threads of each auxiliary's worker; default: as many as the
            thread that builds the processor uses (`unite_logits.workers.default_member_threads`).

    Raises:
        TypeError, ValueError: on invalid arguments, before any generation starts.

    Example:
        >>> proc = UniTEProcessor(tok_a, [Member(model_b, tok_b)], top_k=10)  # doctest: +SKIP
        >>> model_a.generate(**tok_a(prompt, return_tensors="pt"), logits_processor=[proc])  # doctest: +SKIP

    Cost per step: one batched forward pass of each auxiliary over the token(s) that
    changed in every row, one top-k and one gather per model; per row, one small re-encode
    per auxiliary and O(top_k x models) bookkeeping. A member of weight 0 is absent: it
    runs no forward pass and proposes nothing.
    """

    supports_continuous_batching = False

    def __init__(
        self,
        primary_tokenizer: PreTrainedTokenizerBase,
        members: Sequence[Member | RemoteMember] = (),
        top_k: int = 10,
        primary_weight: float = 1.0,
        member_prompts: Sequence[MemberPrompt | None] | None = None,
        primary_eos_token_ids: Sequence[int] | None = None,
        trace: bool = False,
        primary_name: str = "primary",
        concurrent: bool = True,
        member_threads: int | None = None,
        primary_pad_token_id: int | None = None,
    ) -> None:
        check_top_k(top_k)
        if primary_pad_token_id is not None and (isinstance(primary_pad_token_id, bool)
                                                 or not isinstance(primary_pad_token_id, int)
                                                 or primary_pad_token_id < 0):
            raise ValueError(f"`primary_pad_token_id` has to be a non-negative integer, but is {primary_pad_token_id!r}")
        if not isinstance(members, (list, tuple)):
            raise TypeError(f"`members` has to be a list of Member, but is {type(members).__name__}")
        for index, member in enumerate(members):
            if not isinstance(member, (Member, RemoteMember)):
                raise TypeError(
                    f"`members[{index}]` has to be a unite_logits.Member or RemoteMember, but is "
                    f"{type(member).__name__}"
                )
        self.primary_weight = check_weight("primary_weight", primary_weight)
        if self.primary_weight + sum(m.weight for m in members) <= 0:
            raise ValueError("the weights of the primary and the members sum to 0; at least one must be positive")
        if member_prompts is not None and len(member_prompts) != len(members):
            raise ValueError(
                f"`member_prompts` needs one entry per member ({len(members)}), but has {len(member_prompts)}"
            )
        self.top_k = top_k
        self.members = list(members)
        self.member_prompts = list(member_prompts) if member_prompts is not None else [None] * len(members)
        self.primary_view = token_bytes_view(primary_tokenizer, primary_eos_token_ids or ())
        self.primary_pad_token_id = (primary_pad_token_id if primary_pad_token_id is not None
                                     else primary_tokenizer.pad_token_id)
        self.member_views = [token_bytes_view(m.tokenizer, m.eos_token_ids or ()) for m in members]
        self._active = [j for j, member in enumerate(members) if member.weight > 0]
        self.runners = [self._runner(members[j], self.member_views[j]) for j in self._active]
        self._shares_vocab = [view.id_bytes == self.primary_view.id_bytes for view in self.member_views]
        self.names = [primary_name] + [str(m.name) for m in members]
        self.weights = [self.primary_weight] + [m.weight for m in members]
        self.record_trace = trace
        self.trace: list[StepRecord] = []
        self._store: RowStore | None = None
        self._workers = Workers([runner.name for runner in self.runners], concurrent, member_threads)
        self._guess: tuple[Round, list[int | None]] | None = None
        self._hits: collections.deque[bool] = collections.deque(maxlen=_GUESS_WINDOW)
        self._timing = _Timing(len(self.runners))

    def _runner(self, member: Member | RemoteMember, view: TokenBytes) -> Runner:
        if isinstance(member, RemoteMember):
            return member.runner(self.top_k)
        return LocalRunner(member.model, view.size, str(member.name))

    # -- LogitsProcessor contract -------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return the ensembled log-probabilities (``-inf`` outside the union).

        Args:
            input_ids: ``(batch, length)`` prompt plus the tokens generated so far.
            scores: ``(batch, vocab)`` the primary's scores after the processors before this one.

        Raises:
            NonFiniteScoresError: a model's distribution is NaN or infinite for a row.
        """
        self._check_inputs(input_ids, scores)
        self._timing = _Timing(len(self.runners))
        try:
            return self._ensemble(input_ids, scores)
        except BaseException:
            self.close()  # waits for work in flight: no worker outlives the error
            raise

    def _ensemble(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.FloatTensor:
        store = self._store_for(input_ids)
        out = scores.clone()  # finished rows keep the primary's scores
        live = store.live
        if not live:
            return cast(torch.FloatTensor, out)
        vocab = min(scores.shape[-1], self.primary_view.size)
        live_index = torch.as_tensor(live, dtype=torch.long, device=scores.device)
        live_scores = scores.index_select(0, live_index)[:, :vocab]
        primary_logprobs = torch.log_softmax(live_scores.float(), dim=-1)
        self._run([member.refresh for member in store.members])
        models = [_Model(self.primary_view, primary_logprobs, self.primary_weight, self.names[0], None)]
        models += [
            _Model(self.member_views[j], rows.logprobs, self.members[j].weight, self.names[j + 1], rows)
            for j, rows in zip(self._active, store.members)
        ]
        probs = _StepBatch(self, models, live_scores, live, [store.steps[row] for row in live]).run()
        out[live_index] = float("-inf")
        rows, ids, values = [], [], []
        for index, row_probs in enumerate(probs):
            if not row_probs:  # no model gives any allowed candidate mass: the primary alone decides
                out[live[index], :vocab] = primary_logprobs[index].to(scores.dtype)
                continue
            rows += [live[index]] * len(row_probs)
            ids += list(row_probs)
            values += list(row_probs.values())
        if rows:
            where = (torch.as_tensor(rows, device=scores.device), torch.as_tensor(ids, device=scores.device))
            out.index_put_(where, torch.tensor(values, dtype=torch.float32, device=scores.device).log().to(scores.dtype))
        self._guess_next(store, out)
        return cast(torch.FloatTensor, out)

    @classmethod
    def from_messages(
        cls,
        messages: Sequence[Mapping[str, str]],
        primary_tokenizer: PreTrainedTokenizerBase,
        members: Sequence[Member] = (),
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

    def reset(self) -> None:
        """Forget the current generation (a new ``generate`` call is also detected by itself)."""
        self._store = None
        self.trace.clear()

    # -- validation ---------------------------------------------------------------------
    def _check_inputs(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor) or not isinstance(scores, torch.Tensor):
            raise TypeError(
                "`input_ids` and `scores` have to be torch tensors, but are "
                f"{type(input_ids).__name__} and {type(scores).__name__}"
            )
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(
                "expected `input_ids` of shape (batch, length) and `scores` of shape (batch, vocab), "
                f"but got {tuple(input_ids.shape)} and {tuple(scores.shape)}"
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"`input_ids` has to hold integer token ids, but has dtype {input_ids.dtype}")
        if not scores.dtype.is_floating_point:
            raise TypeError(f"`scores` has to be a floating-point tensor, but has dtype {scores.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("`input_ids` is empty: generation needs a non-empty prompt")
        if bool((input_ids < 0).any()):
            raise ValueError("`input_ids` holds negative ids")

    # -- rows across steps --------------------------------------------------------------
    def _store_for(self, input_ids: torch.Tensor) -> RowStore:
        """The rows of this generation, advanced by the token the primary emitted last step."""
        store = self._store
        parents = match_parents(input_ids, store.last_ids) if store is not None else None
        applied = self._settle_guess(input_ids, parents)
        if store is not None and parents is not None:
            store.advance(input_ids, parents, self.primary_view.eos_ids, self.primary_view.bytes_of, applied)
            return store
        self.trace.clear()
        self._hits.clear()
        self._store = RowStore(input_ids, self._start_members(input_ids))
        return self._store

    # -- concurrency ----------------------------------------------------------------------
    def _run(self, jobs: Sequence[Callable[[], None] | None]) -> None:
        """Run one job per active member on the workers and wait for all (timed in the trace)."""
        self._collect(self._workers.start(jobs))

    def _collect(self, round_: Round) -> None:
        started = time.perf_counter()
        seconds = self._workers.wait(round_)
        self._timing.wait += time.perf_counter() - started
        for index, value in enumerate(seconds):
            self._timing.members[index] += value

    def _guess_next(self, store: RowStore, out: torch.Tensor) -> None:
        """Start the auxiliaries on the token greedy search will pick, while the primary runs.

        The guess is each row's best ensembled candidate; rows whose best is EOS (they would
        end) are not advanced. The next call keeps the rows whose guess was right and undoes
        the others (`AuxiliaryRows.settle`), so outputs never depend on it. It is skipped
        when members run one after another, and while most recent guesses were wrong
        (sampling, or a later processor that changes the choice), and at the first step.
        """
        if not self._workers.concurrent or not store.members or not any(store.steps):
            return  # not at a generation's first step: a single call (scoring) must not leave work behind
        if len(self._hits) >= _GUESS_WINDOW and sum(self._hits) < _GUESS_WINDOW // 2:
            return
        best = out.index_select(0, torch.as_tensor(store.live, device=out.device)).argmax(dim=-1).tolist()
        view = self.primary_view
        tokens = [None if token in view.eos_ids else (token, view.bytes_of(token)) for token in best]
        if all(token is None for token in tokens):
            return
        jobs = [functools.partial(member.speculate, tokens) for member in store.members]
        self._guess = (self._workers.start(jobs), [None if t is None else t[0] for t in tokens])

    def _settle_guess(self, input_ids: torch.Tensor, parents: list[int] | None) -> list[bool]:
        """Wait for the guess in flight; per live row of the last step, whether it was right."""
        if self._guess is None:
            return []
        round_, guessed = self._guess
        self._guess = None
        self._collect(round_)
        store = self._store
        if store is None or parents is None:
            return []
        if parents == list(range(len(parents))):
            actual = input_ids[store.live, -1].tolist()
            right = [token is not None and token == real for token, real in zip(guessed, actual)]
        else:  # beams reordered: undo every guess
            right = [False] * len(guessed)
        for member in store.members:
            member.settle(right)
        self._hits.extend(ok for ok, token in zip(right, guessed) if token is not None)
        return right

    def close(self) -> None:
        """Forget the generation in progress and stop the auxiliaries' worker threads, waiting
        for work in flight. A later call starts them again. Also done on any error."""
        guess, self._guess, self._store = self._guess, None, None
        if guess is not None:
            try:
                self._workers.wait(guess[0])
            except BaseException:  # noqa: BLE001 - only stopping; the caller's error says what failed
                pass
        self._workers.close()
        for runner in self.runners:
            if isinstance(runner, RemoteRunner):
                runner.close()

    def __enter__(self) -> "UniTEProcessor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_members(self, input_ids: torch.Tensor) -> list[AuxiliaryRows]:
        """Each active member's rows, prefilled in one forward pass per member."""
        pad = self.primary_pad_token_id
        prompts = []
        for ids in input_ids.tolist():
            start = 0
            while pad is not None and start < len(ids) and ids[start] == pad:
                start += 1
            prompts.append(tuple(ids[start:]))
        syncs = [[self._sync(j, row, prompt) for row, prompt in enumerate(prompts)] for j in self._active]
        for runner, member_syncs in zip(self.runners, syncs):
            AuxiliaryRows.check_prompts(runner, member_syncs)  # user errors as themselves, before work
        members: list[AuxiliaryRows | None] = [None] * len(syncs)

        def prefill(index: int) -> None:
            members[index] = AuxiliaryRows(self.runners[index], syncs[index])

        self._run([functools.partial(prefill, index) for index in range(len(syncs))])
        return [member for member in members if member is not None]

    def _row_prompt(self, member: int, row: int) -> str | list[int] | None:
        prompt = self.member_prompts[member]
        if prompt is None or isinstance(prompt, str):
            return prompt
        items: list[Any] = list(prompt)
        if items and isinstance(items[0], int):
            return [int(i) for i in items]
        if row >= len(items):
            raise ValueError(f"`member_prompts[{member}]` has {len(items)} rows, but the batch has more")
        entry = items[row]
        return entry if isinstance(entry, str) or entry is None else [int(i) for i in entry]

    def _sync(self, member: int, row: int, primary_prompt: tuple[int, ...]) -> IdSync | TokenSync:
        """Member ``member``'s ids for ``row``, from its prompt override or the primary's prompt."""
        view = self.member_views[member]
        override = self._row_prompt(member, row)
        if self._shares_vocab[member]:
            return IdSync(primary_prompt if override is None else _ids_of(view, override))
        if override is None:
            text = str(self.primary_view.tokenizer.decode(list(primary_prompt), skip_special_tokens=True))
            return TokenSync.from_text(view, text)
        return TokenSync.from_ids(view, _ids_of(view, override))

    def _record(
        self,
        row: int,
        step: int,
        proposals: list[Proposal],
        taking_part: list[int],
        union: list[Any],
        emit: list[int | None],
        combined: Combined,
    ) -> None:
        """Append the `StepRecord` of one row; ``taking_part`` indexes primary + active members."""
        names = [self.names[0]] + [self.names[j + 1] for j in self._active]
        probs = combined.probs
        winner = max(probs, key=probs.__getitem__)
        winning = {candidate for candidate, pid in zip(union, emit) if pid == winner}
        proposers = tuple(
            names[model]
            for model, proposal in zip(taking_part, proposals)
            if any(candidate_key(proposal.view, t) in winning for t in proposal.top_ids)
        )
        top1 = {
            names[model]: _show(candidate_key(proposal.view, proposal.top_ids[0]))
            for model, proposal in zip(taking_part, proposals)
        }
        voting = {names[taking_part[p]] for p in combined.participants}
        self.trace.append(
            StepRecord(
                step=step,
                row=row,
                union_size=len(union),
                top1=top1,
                winner=_show(candidate_key(self.primary_view, winner)),
                proposers=proposers,
                prob=probs[winner],
                abstained=tuple(name for name in self.names if name not in voting),
                member_ms={
                    runner.name: 1000 * seconds for runner, seconds in zip(self.runners, self._timing.members)
                },
                wait_ms=1000 * self._timing.wait,
            )
        )


class _Timing:
    """Seconds each active member worked for this step, and the processor waited on them."""

    def __init__(self, members: int) -> None:
        self.members = [0.0] * members
        self.wait = 0.0


@dataclass
class _Model:
    """One model at one step: its log-probabilities for the live rows, weight and name."""

    view: TokenBytes
    logprobs: torch.Tensor  # (live rows, vocab)
    weight: float
    name: str
    rows: AuxiliaryRows | None  # None for the primary

    def votes(self, row: int) -> bool:
        return self.rows is None or self.rows.votes(row)


class NonFiniteScoresError(ValueError):
    """A model's next-token distribution holds NaN or infinite numbers (e.g. float16 on a CPU)."""


class _StepBatch:
    """One decoding step over all live rows: batched top-k and lookups, per-row union and combine.

    Per model: one top-k and one gather over all rows, each one device-to-host copy; per
    row only O(k x models) Python over the union.
    """

    def __init__(
        self, processor: "UniTEProcessor", models: list[_Model], scores: torch.Tensor, batch_rows: list[int],
        steps: list[int],
    ) -> None:
        self.processor = processor
        self.models = models
        self.scores = scores
        self.batch_rows = batch_rows
        self.steps = steps
        self.rows = scores.shape[0]

    def run(self) -> list[dict[int, float]]:
        processor = self.processor
        tops = [self._top_k(model) for model in self.models]
        proposals: list[list[Proposal]] = []
        taking_part: list[list[int]] = []
        unions: list[list[Any]] = []
        for row in range(self.rows):
            row_proposals, row_models = [], []
            for index, (model, (top_ids, top_probs)) in enumerate(zip(self.models, tops)):
                if model.weight > 0 and model.votes(row) and top_probs[row][0] > 0:  # all -inf: abstains
                    proposal = Proposal(model.view, None, top_ids[row], top_probs[row], model.weight, index == 0)
                    row_proposals.append(proposal)
                    row_models.append(index)
            proposals.append(row_proposals)
            taking_part.append(row_models)
            unions.append(build_union(row_proposals))
        emits = [primary_ids(processor.primary_view, union) for union in unions]
        eos = self._likeliest_eos()
        for union, emit, eos_id in zip(unions, emits, eos):
            if EOS in union:
                emit[union.index(EOS)] = eos_id
        allowed = self._allowed(emits)
        lookups = [[plan_lookups(p, union) for p in row] for row, union in zip(proposals, unions)]
        values = self._gather(taking_part, lookups)
        results = []
        for row in range(self.rows):
            aligned = [
                aligned_from(plan, unions[row], values[model][row])
                for plan, model in zip(lookups[row], taking_part[row])
            ]
            combined = combine(aligned, [p.weight for p in proposals[row]], emits[row], allowed[row])
            if processor.record_trace and combined.probs:
                processor._record(self.batch_rows[row], self.steps[row], proposals[row], taking_part[row],
                                  unions[row], emits[row], combined)
            results.append(combined.probs)
        return results

    def _top_k(self, model: _Model) -> tuple[list[list[int]], list[list[float]]]:
        """Every row's top-k ids and probabilities: one top-k, one copy; non-finite rows refused."""
        k = min(self.processor.top_k, model.logprobs.shape[-1])
        values, indices = torch.topk(model.logprobs, k, dim=-1)
        probs = values.exp().tolist()
        for row, row_probs in enumerate(probs):
            if not math.isfinite(row_probs[0]) and model.votes(row):
                raise NonFiniteScoresError(
                    f"model {model.name!r} gave non-finite log-probabilities (NaN or inf) for batch row "
                    f"{self.batch_rows[row]} at step {self.steps[row]}: float16 on a CPU overflows (use "
                    "float32 or bfloat16), or its weights are damaged"
                )
        return indices.tolist(), probs

    def _likeliest_eos(self) -> list[int]:
        """Per row, the primary's end-of-sequence id that its own scores prefer at this step."""
        view = self.processor.primary_view
        ids = sorted(i for i in view.eos_ids if i < self.scores.shape[-1])
        if not ids:
            return [view.eos_id] * self.rows
        best = self.scores[:, torch.as_tensor(ids, device=self.scores.device)].argmax(dim=-1).tolist()
        return [ids[b] for b in best]

    def _allowed(self, emits: list[list[int | None]]) -> list[list[bool]]:
        """False where the primary cannot emit a candidate or its processors set it to -inf."""
        size = self.scores.shape[-1]
        wanted = [[pid if pid is not None and pid < size else 0 for pid in emit] for emit in emits]
        finite = gather_probabilities(self.scores.float(), wanted)  # exp(-inf) = 0
        return [
            [pid is not None and pid < size and value > 0 for pid, value in zip(emit, row)]
            for emit, row in zip(emits, finite)
        ]

    def _gather(self, taking_part: list[list[int]], lookups: list[list[Lookups]]) -> list[list[list[float]]]:
        """Per model, per row, the probabilities of the ids its lookups need: one gather per model."""
        ids: list[list[list[int]]] = [[[] for _ in range(self.rows)] for _ in self.models]
        for row, (models, plans) in enumerate(zip(taking_part, lookups)):
            for model, plan in zip(models, plans):
                ids[model][row] = plan.ids
        return [gather_probabilities(model.logprobs, model_ids) for model, model_ids in zip(self.models, ids)]


def _ids_of(view: TokenBytes, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("a member prompt is empty")
        return view.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt


def _show(candidate: object) -> str:
    if candidate is EOS:
        return "<eos>"
    if isinstance(candidate, bytes):
        return candidate.decode("utf-8", errors="backslashreplace")
    return f"<special {candidate[1]}>" if isinstance(candidate, tuple) else "?"
