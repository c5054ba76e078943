"""`UniTEProcessor`: union top-k ensembling inside ``model.generate``.

The primary model runs the ordinary generation loop. At every step this processor

1. brings each auxiliary up to date with the text generated so far (its own ids, its own
   KV cache; `unite_logits.member_state`),
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .alignment import EOS, Proposal, aligned_probabilities, build_union, candidate_key, primary_ids
from .chat import chat_prompt_ids, validate_messages
from .combine import combine
from .member import Member, check_top_k, check_weight
from .member_state import MemberRow, MemberRunner
from .sync import IdSync, TokenSync
from .token_bytes import TokenBytes, token_bytes_view
from .trace import StepRecord

__all__ = ["UniTEProcessor"]

MemberPrompt = str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]]


@dataclass
class _Row:
    """One batch row (or beam) of one generate call."""

    members: list[MemberRow]
    finished: bool = False
    step: int = 0

    def fork(self) -> "_Row":
        return _Row([member.fork() for member in self.members], self.finished, self.step)


@dataclass
class _Session:
    """State of the generate call in progress."""

    last_ids: torch.Tensor
    rows: list[_Row] = field(default_factory=list)


class UniTEProcessor(LogitsProcessor):
    r"""Ensemble auxiliary models with the primary, whatever their tokenizers.

    Args:
        primary_tokenizer: tokenizer of the model whose ``generate`` runs.
        members: the auxiliary models (see `Member`); may be empty.
        top_k: candidates each model proposes per step.
        primary_weight: weight of the primary in the average (only ratios matter).
        member_prompts: optional, one entry per member, overriding the default auxiliary prompt
            (the primary's prompt text re-encoded by the member's tokenizer with its own BOS).
            An entry is a string (encoded verbatim, no special tokens added: use it for a chat
            template's output), a list of token ids, a list of those (one per batch row), or
            None for the default.
        primary_eos_token_ids: ids that end the primary's sequence besides its tokenizer's EOS.
        trace: record a `StepRecord` per step and row in `trace`.
        primary_name: label of the primary in traces.

    Raises:
        TypeError, ValueError: on invalid arguments, before any generation starts.

    Example:
        >>> proc = UniTEProcessor(tok_a, [Member(model_b, tok_b)], top_k=10)  # doctest: +SKIP
        >>> model_a.generate(**tok_a(prompt, return_tensors="pt"), logits_processor=[proc])  # doctest: +SKIP

    Cost per step and row: one forward pass of each auxiliary over the token(s) that
    changed, one small re-encode per auxiliary, and O(top_k x models) bookkeeping.
    """

    supports_continuous_batching = False

    def __init__(
        self,
        primary_tokenizer: PreTrainedTokenizerBase,
        members: Sequence[Member] = (),
        top_k: int = 10,
        primary_weight: float = 1.0,
        member_prompts: Sequence[MemberPrompt | None] | None = None,
        primary_eos_token_ids: Sequence[int] | None = None,
        trace: bool = False,
        primary_name: str = "primary",
    ) -> None:
        check_top_k(top_k)
        if not isinstance(members, (list, tuple)):
            raise TypeError(f"`members` has to be a list of Member, but is {type(members).__name__}")
        for index, member in enumerate(members):
            if not isinstance(member, Member):
                raise TypeError(
                    f"`members[{index}]` has to be a unite_logits.Member, but is {type(member).__name__}"
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
        self.member_views = [token_bytes_view(m.tokenizer, m.eos_token_ids or ()) for m in members]
        self.runners = [MemberRunner(m.model, view.size) for m, view in zip(members, self.member_views)]
        self._shares_vocab = [view.id_bytes == self.primary_view.id_bytes for view in self.member_views]
        self.names = [primary_name] + [str(m.name) for m in members]
        self.weights = [self.primary_weight] + [m.weight for m in members]
        self.record_trace = trace
        self.trace: list[StepRecord] = []
        self._session: _Session | None = None

    # -- LogitsProcessor contract -------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return the ensembled log-probabilities (``-inf`` outside the union).

        Args:
            input_ids: ``(batch, length)`` prompt plus the tokens generated so far.
            scores: ``(batch, vocab)`` the primary's scores after the processors before this one.
        """
        self._check_inputs(input_ids, scores)
        rows = self._rows_for(input_ids)
        vocab = min(scores.shape[-1], self.primary_view.size)
        primary_logprobs = torch.log_softmax(scores[:, :vocab].float(), dim=-1)
        out = torch.full_like(scores, float("-inf"))
        for index, row in enumerate(rows):
            if row.finished:
                out[index] = scores[index]
                continue
            probs = self._ensemble_row(index, row, primary_logprobs[index], scores[index, :vocab])
            if not probs:  # no model gives any allowed candidate mass: the primary alone decides
                out[index, :vocab] = primary_logprobs[index].to(scores.dtype)
                continue
            ids = torch.tensor(list(probs), dtype=torch.long, device=scores.device)
            values = torch.tensor(list(probs.values()), dtype=torch.float32, device=scores.device)
            out[index, ids] = values.log().to(scores.dtype)
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
        self._session = None
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
        if input_ids.shape[1] == 0:
            raise ValueError("`input_ids` is empty: generation needs a non-empty prompt")

    # -- rows across steps --------------------------------------------------------------
    def _rows_for(self, input_ids: torch.Tensor) -> list[_Row]:
        """The state of each row, advanced by the token the primary emitted last step."""
        session = self._session
        if session is not None and input_ids.shape[1] == session.last_ids.shape[1] + 1:
            parents = _match_parents(input_ids[:, :-1], session.last_ids)
            if parents is not None:
                taken: set[int] = set()
                rows = []
                for parent in parents:
                    rows.append(session.rows[parent].fork() if parent in taken else session.rows[parent])
                    taken.add(parent)
                for row, token in zip(rows, input_ids[:, -1].tolist()):
                    self._advance(row, token)
                session.rows, session.last_ids = rows, input_ids
                return rows
        self.trace.clear()
        self._session = _Session(input_ids, self._start_rows(input_ids))
        return self._session.rows

    def _advance(self, row: _Row, token: int) -> None:
        if row.finished:
            return
        row.step += 1
        if token in self.primary_view.eos_ids:
            row.finished = True
            return
        data = self.primary_view.bytes_of(token)
        for member in row.members:
            member.push_token(token, data)

    def _start_rows(self, input_ids: torch.Tensor) -> list[_Row]:
        """Prefill every auxiliary once per distinct prompt; identical rows share it."""
        pad = self.primary_view.tokenizer.pad_token_id
        built: dict[tuple[int, ...], _Row] = {}
        rows = []
        for index, ids in enumerate(input_ids.tolist()):
            start = 0
            while pad is not None and start < len(ids) and ids[start] == pad:
                start += 1
            prompt = tuple(ids[start:])
            key = prompt if all(self._row_prompt(j, index) is None for j in range(len(self.members))) else None
            if key is not None and key in built:
                rows.append(built[key].fork())
                continue
            row = _Row([self._prefill(j, index, prompt) for j in range(len(self.members))])
            if key is not None:
                built[key] = row
            rows.append(row)
        return rows

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

    def _prefill(self, member: int, row: int, primary_prompt: tuple[int, ...]) -> MemberRow:
        view = self.member_views[member]
        override = self._row_prompt(member, row)
        sync: IdSync | TokenSync
        if self._shares_vocab[member]:
            sync = IdSync(primary_prompt if override is None else _ids_of(view, override))
        elif override is None:
            text = str(self.primary_view.tokenizer.decode(list(primary_prompt), skip_special_tokens=True))
            sync = TokenSync.from_text(view, text)
        else:
            sync = TokenSync.from_ids(view, _ids_of(view, override))
        return MemberRow.prefill(self.runners[member], sync)

    # -- one step of one row ------------------------------------------------------------
    def _ensemble_row(
        self, index: int, row: _Row, primary_logprobs: torch.Tensor, primary_scores: torch.Tensor
    ) -> dict[int, float]:
        proposals = [
            Proposal.from_logprobs(self.primary_view, primary_logprobs, self.top_k, self.primary_weight, True)
        ]
        taking_part = [0]
        for j, member in enumerate(row.members):
            if not member.ready:
                continue
            member.refresh(self.runners[j])
            proposals.append(
                Proposal.from_logprobs(self.member_views[j], member.logprobs, self.top_k, self.members[j].weight)
            )
            taking_part.append(j + 1)
        union = build_union(proposals)
        emit = primary_ids(self.primary_view, union)
        if EOS in union:
            emit[union.index(EOS)] = self._likeliest_eos(primary_scores)
        allowed = _allowed(emit, primary_scores)
        aligned = [aligned_probabilities(proposal, union) for proposal in proposals]
        combined = combine(aligned, [p.weight for p in proposals], emit, allowed)
        if self.record_trace and combined.probs:
            self._record(index, row, proposals, taking_part, union, emit, combined.probs, combined.participants)
        return combined.probs

    def _likeliest_eos(self, primary_scores: torch.Tensor) -> int:
        """The primary's end-of-sequence id that its own scores prefer at this step."""
        ids = sorted(i for i in self.primary_view.eos_ids if i < primary_scores.shape[-1])
        if not ids:
            return self.primary_view.eos_id
        best = int(primary_scores[torch.tensor(ids, device=primary_scores.device)].argmax())
        return ids[best]

    def _record(
        self,
        index: int,
        row: _Row,
        proposals: list[Proposal],
        taking_part: list[int],
        union: list,
        emit: list[int | None],
        probs: dict[int, float],
        participants: tuple[int, ...],
    ) -> None:
        winner = max(probs, key=probs.__getitem__)
        winning = {candidate for candidate, pid in zip(union, emit) if pid == winner}
        proposers = tuple(
            self.names[model]
            for model, proposal in zip(taking_part, proposals)
            if any(candidate_key(proposal.view, t, proposal.is_primary) in winning for t in proposal.top_ids)
        )
        top1 = {
            self.names[model]: _show(candidate_key(proposal.view, proposal.top_ids[0], proposal.is_primary))
            for model, proposal in zip(taking_part, proposals)
        }
        voting = {taking_part[p] for p in participants}
        self.trace.append(
            StepRecord(
                step=row.step,
                row=index,
                union_size=len(union),
                top1=top1,
                winner=_show(candidate_key(self.primary_view, winner, True)),
                proposers=proposers,
                prob=probs[winner],
                abstained=tuple(name for model, name in enumerate(self.names) if model not in voting),
            )
        )


def _match_parents(previous_now: torch.Tensor, previous: torch.Tensor) -> list[int] | None:
    """For each current row, the row of the last step it continues (None if any has none)."""
    if previous_now.shape == previous.shape and torch.equal(previous_now, previous.to(previous_now.device)):
        return list(range(previous.shape[0]))
    equal = (previous_now[:, None, :] == previous.to(previous_now.device)[None, :, :]).all(-1)
    if not bool(equal.any(-1).all()):
        return None
    return equal.int().argmax(-1).tolist()


def _allowed(emit: list[int | None], primary_scores: torch.Tensor) -> list[bool]:
    """False where the primary cannot emit a candidate or its processors set it to -inf."""
    positions = [i for i, pid in enumerate(emit) if pid is not None and pid < primary_scores.shape[-1]]
    allowed = [False] * len(emit)
    if positions:
        index = torch.tensor([emit[i] for i in positions], dtype=torch.long, device=primary_scores.device)
        finite = torch.isfinite(primary_scores[index]).tolist()
        for position, ok in zip(positions, finite):
            allowed[position] = ok
    return allowed


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
