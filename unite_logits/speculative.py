"""Draft and verify inside ``model.generate``: UniTE's output for fewer member passes.

Most of an ensemble's tokens are the primary's own top choice. Here the primary drafts a few
tokens alone (its own cached forward passes), then every member reads the drafted text in ONE
forward pass over its own tokens of it (`unite_logits.core.member_rows.AuxiliaryRows.read`),
which gives its distribution at every drafted position. At each position UniTE's rule decides
as it does token by token; the drafted tokens up to the first position where the ensemble
chooses otherwise are kept, the ensemble's own token is emitted there (or, after a draft kept
whole, at the position after it), and everything past it is rolled back. Greedy decoding gives
the per-token output token for token; sampling keeps a drafted token with probability
``min(1, q/p)`` (``p`` the primary's proposal, ``q`` the ensemble's distribution) and otherwise
draws from the residual, so the samples follow the ensemble's distribution exactly
(`unite_logits.core.speculation.accept_or_resample`).

Use it through stock ``generate``, with the processor in ``logits_processor``::

    from unite_logits import UniTEProcessor, draft_and_verify
    proc = UniTEProcessor(tok_a, [Member(model_b, tok_b)], top_k=10, num_draft_tokens=4)
    out = model_a.generate(**inputs, logits_processor=[proc], custom_generate=draft_and_verify,
                           do_sample=False, max_new_tokens=64)

transformers prepares the inputs, the processors and the stopping criteria as usual, then runs
this loop (``custom_generate``, transformers >= 5). Every processor and stopping criterion
``generate`` built is honoured: those before the `UniTEProcessor` (``min_new_tokens``, a
repetition penalty, ...) act on the primary's scores at every drafted position, those after it
(temperature, top-p, a log-prob recorder) on the ensembled scores, and the stopping criteria
(EOS, ``max_new_tokens``, stop strings) after every emitted token. Rows of a batch advance by
different numbers of tokens per round, so processors and criteria are called for the rows that
have the same length at that point, together; a criterion that keeps per-row state is told
which batch rows it sees by the keyword argument ``batch_rows`` (a list of ints).

Where the loop does not apply, it hands over to transformers' own decoding (token by token,
with the processor, so the output is still UniTE's): beam search, ``return_dict_in_generate``
with scores, logits, attentions or hidden states, ``trace=True`` on the processor, a batch
with no EOS stopping criterion, and a primary the loop cannot drive (neither a model the ragged
cache supports nor a served primary). The reason is logged at INFO. transformers does not hand a
``streamer`` to a callable ``custom_generate``: stream with `unite_logits.Ensemble` instead.

Cost per round of ``n`` drafted tokens: ``n + 1`` forward passes of the primary (one token per
row each), ONE read per member over ``n + 1`` tokens per row (its tokens of the new text), and
one ensembling step per drafted position; each round emits between 1 and ``n + 1`` tokens.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.utils import GENERATION_MODES_MAPPING, GenerateDecoderOnlyOutput

from .core.member_rows import AuxiliaryRows
from .core.ragged_cache import RaggedKVCache, UnsupportedModelError, check_supported
from .core.sampling import accept_or_resample
from .core.speculation import RoundCost, SpeculationStats
from .core.workers import Round
from .processor import ProcessorInUseError, UniTEProcessor

__all__ = ["draft_and_verify", "why_not_speculative"]

logger = logging.getLogger(__name__)


class PrimaryRows(Protocol):
    """The primary's state over the live rows: feed one token per row, get its next logits."""

    def feed(self, chunks: Sequence[Sequence[int]], raw: bool = True) -> torch.Tensor: ...

    def drop(self, row: int, tokens: int) -> None: ...

    def select_rows(self, index: torch.Tensor) -> None: ...


def why_not_speculative(model: PreTrainedModel, processor: UniTEProcessor, config: GenerationConfig,
                        stopping_criteria: StoppingCriteriaList, batch_size: int) -> str | None:
    """Why draft-and-verify does not apply to this ``generate`` call (None: it does)."""
    mode = config.get_generation_mode()
    if GENERATION_MODES_MAPPING.get(mode) != "_sample":
        return f"{mode.value} is decoded token by token"
    if config.return_dict_in_generate and (config.output_scores or config.output_logits
                                           or config.output_attentions or config.output_hidden_states):
        return "scores, logits, attentions or hidden states were asked for"
    if processor.record_trace:
        return "the processor records a trace"
    if batch_size > 1 and not any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria):
        return "a batch without an end-of-sequence token (finished rows would go on)"
    if _primary_rows(model, 0) is None:
        return f"the primary {type(model).__name__} cannot be driven with a ragged cache"
    return None


def draft_and_verify(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    **model_kwargs: Any,
) -> torch.LongTensor | GenerateDecoderOnlyOutput:
    """A ``custom_generate`` for ``model.generate``: draft-and-verify with the `UniTEProcessor`
    found in ``logits_processor`` (see the module docstring). Returns what ``generate`` returns.

    Raises:
        ValueError: ``logits_processor`` holds no `UniTEProcessor`, or more than one.
        NonFiniteScoresError, MemberError, ProcessorInUseError: as the processor does.
    """
    found = [index for index, processor in enumerate(logits_processor) if isinstance(processor, UniTEProcessor)]
    if len(found) != 1:
        raise ValueError("custom_generate=draft_and_verify needs exactly one UniTEProcessor in `logits_processor`, "
                         f"found {len(found)}")
    unite = logits_processor[found[0]]
    reason = why_not_speculative(model, unite, generation_config, stopping_criteria, input_ids.shape[0])
    if reason is not None:
        logger.info("draft-and-verify does not apply (%s): decoding token by token", reason)
        method = getattr(type(model), GENERATION_MODES_MAPPING[generation_config.get_generation_mode()])
        return method(model, input_ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                      generation_config=generation_config, **model_kwargs)
    if not unite._busy.acquire(blocking=False):
        raise ProcessorInUseError("this UniTEProcessor is already working on a generation in another thread; give "
                                  "each concurrent generation a processor of its own")
    try:
        run = _DraftAndVerify(model, unite, LogitsProcessorList(logits_processor[: found[0]]),
                              LogitsProcessorList(logits_processor[found[0] + 1 :]), stopping_criteria,
                              generation_config, input_ids, model_kwargs.get("attention_mask"))
        sequences = run.generate()
    except BaseException:
        unite.rows.close()
        raise
    finally:
        unite.rows.generation = None
        unite._busy.release()
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


def _primary_rows(model: PreTrainedModel, rows: int) -> PrimaryRows | None:
    """The primary's row state: a served primary's, or a ragged cache; None if neither fits."""
    from .remote.primary import ServedCausalLM, ServedPrimaryRows, is_served

    if is_served(model):
        return ServedPrimaryRows(cast(ServedCausalLM, model), rows)
    try:
        check_supported(model)
    except UnsupportedModelError:
        return None
    return RaggedKVCache(model, rows, vocab_size=_output_size(model))


def _output_size(model: PreTrainedModel) -> int:
    embeddings = model.get_output_embeddings()
    rows = getattr(getattr(embeddings, "weight", None), "shape", (None,))[0]
    return int(rows) if rows is not None else int(model.config.get_text_config().vocab_size)


class _Round:
    """One round's work for one live row: the tokens fed to the primary (and pushed to the
    members), the drafts, the primary's processed scores at each position, the proposals."""

    def __init__(self, pending: list[int], positions: int) -> None:
        self.queue = list(pending)
        self.fed: list[int] = []
        self.pending = len(pending)
        self.positions = positions
        self.drafts: list[int] = []
        self.scores: list[torch.Tensor] = []
        self.proposals: list[torch.Tensor | None] = []

    def draft_at(self, position: int) -> int | None:
        return self.drafts[position] if position < len(self.drafts) else None


@dataclass
class _DraftTiming:
    """A round's primary passes; of them, those that ran alone (before the members started
    reading) and their seconds: what a pass costs, for the draft schedule."""

    passes: int = 0
    solo_passes: int = 0
    solo_seconds: float = 0.0


@dataclass
class _Reading:
    """The members' read of a round, started (``running``: on their workers) and not yet
    collected: what they held before it, each row's shift, and each member's results."""

    before: list[tuple[Any, list[bool]]]
    shift: list[int]
    results: list[Any]
    running: Round | None = None


class _DraftAndVerify:
    """One ``generate`` call's state: every row's text, the primary's and the members' rows."""

    def __init__(self, model: PreTrainedModel, unite: UniTEProcessor, pre: LogitsProcessorList,
                 post: LogitsProcessorList, stopping: StoppingCriteriaList, config: GenerationConfig,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.unite, self.pre, self.post, self.stopping, self.config = unite, pre, post, stopping, config
        self.device = input_ids.device
        self.prompts = input_ids
        self.sampling = bool(config.do_sample)
        self.temperature = float(config.temperature or 1.0) if self.sampling else 1.0
        self.eos = frozenset(unite.primary_view.eos_ids)
        self.budget = stopping.max_length - input_ids.shape[1] if stopping.max_length is not None else sys.maxsize
        batch = input_ids.shape[0]
        self.texts: list[list[int]] = [[] for _ in range(batch)]
        self.width = input_ids.shape[1]
        room = self.budget if self.budget < sys.maxsize else 64  # grows by doubling when not bounded
        self.sequences = torch.cat([input_ids, torch.zeros(batch, room, dtype=input_ids.dtype, device=self.device)], 1)
        self.live = list(range(batch))
        self.pending: list[list[int]] = [[] for _ in range(batch)]
        self.stats = SpeculationStats(rows=[SpeculationStats() for _ in range(batch)])
        unite.draft_schedule.reset()
        unite.last_speculation = self.stats
        if attention_mask is None:
            prompts = input_ids.tolist()
        else:
            prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        primary = _primary_rows(model, batch)
        assert primary is not None
        self.primary = primary
        self.members: list[AuxiliaryRows] = unite.rows.start_members(input_ids) if unite.runners else []
        self._reading: _Reading | None = None
        self.live_before: list[int] = []
        logits = self.primary.feed(prompts)
        self.frontier: list[torch.Tensor | None] = [logits[row] for row in range(batch)]

    # -- the loop -------------------------------------------------------------------------
    def generate(self) -> torch.LongTensor:
        try:
            while self.live:
                self._round()
        finally:
            if self._reading is not None and self._reading.running is not None:  # a failure mid-round
                self.unite.rows.workers.wait_quietly(self._reading.running)  # no worker outlives the call
        logger.debug("draft-and-verify: %s", self.stats.as_dict())
        longest = max(len(text) for text in self.texts)
        pad = self.config._pad_token_tensor
        pad_id = int(pad) if pad is not None else 0
        new = torch.tensor([text + [pad_id] * (longest - len(text)) for text in self.texts], dtype=torch.long,
                           device=self.device).reshape(len(self.texts), longest)
        return torch.cat([self.prompts, new], dim=1)  # type: ignore[return-value]

    def _count(self, i: int, what: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``what`` of the generation and of live row ``i``'s batch row."""
        for stats in (self.stats, self.stats.rows[self.live[i]]):
            setattr(stats, what, getattr(stats, what) + n)

    def _round(self) -> None:
        tokens = self.unite.draft_schedule.tokens
        for row in self.live:
            self.stats.rows[row].rounds += 1
        rounds = [_Round(self.pending[row], 1 + max(0, min(tokens, self.budget - len(self.texts[row]) - 1)))
                  for row in self.live]
        started = time.perf_counter()
        self.live_before = list(self.live)  # _settle lets stopped rows go
        timing = self._draft(rounds)
        ensembled = self._verify(rounds)
        emitted, kept, stopped = self._emit(rounds, ensembled)
        self._settle(rounds, emitted, stopped)
        drafted = [i for i, work in enumerate(rounds) if work.drafts]
        cost = RoundCost([self._judged(work, emitted[i], kept[i], self.texts[row])
                          for i, (work, row) in enumerate(zip(rounds, self.live_before))], timing.passes,
                         timing.solo_passes, timing.solo_seconds, time.perf_counter() - started)
        # sampling: no times, so that a seed draws the same text whatever the machine's speed
        self.unite.draft_schedule.update(bool(drafted) and all(kept[i] == len(rounds[i].drafts) for i in drafted),
                                         None if self.sampling else cost)
        self.stats.rounds += 1

    def _draft(self, rounds: list[_Round]) -> _DraftTiming:
        """The primary alone: one token per row per pass until every row has its positions'
        scores. Once every row's draft is known, before the pass that reads its last token, the
        members start reading it on their workers (exact UniTE: every position is read), so
        their pass and the primary's last one overlap, as the per-token path overlaps a step's."""
        timing = _DraftTiming()
        started = time.perf_counter()
        while True:
            ready = [i for i, work in enumerate(rounds)
                     if self.frontier[i] is not None and len(work.scores) < work.positions]
            for i, scores in zip(ready, self._processed(ready, rounds)):
                work = rounds[i]
                work.scores.append(scores)
                self.frontier[i] = None
                if len(work.scores) < work.positions:
                    token, proposal = self._propose(scores)
                    self._write(i, len(self.texts[self.live[i]]) + len(work.drafts), token)
                    work.drafts.append(token)
                    work.proposals.append(proposal)
                    self._count(i, "drafted")
                    if token in self.eos:
                        work.positions = len(work.scores)  # nothing is drafted past an end
                    else:
                        work.queue.append(token)
            feeding = [i for i, work in enumerate(rounds) if work.queue]
            if not feeding:
                return timing
            if self._reading is None and self._may_read_early(rounds):
                timing.solo_passes, timing.solo_seconds = timing.passes, time.perf_counter() - started
                self._reading = self._start_read(rounds, [[False] * work.positions for work in rounds])
            chunks = [[work.queue.pop(0)] if work.queue else [] for work in rounds]
            for i in feeding:
                rounds[i].fed.append(chunks[i][0])
            logits = self.primary.feed(chunks, raw=True)
            timing.passes += 1
            if self._reading is None:
                timing.solo_passes, timing.solo_seconds = timing.passes, time.perf_counter() - started
            for i in feeding:
                self.frontier[i] = logits[i]

    def _processed(self, rows: list[int], rounds: list[_Round]) -> list[torch.Tensor]:
        """The primary's frontier logits of ``rows`` after the processors before the ensemble,
        called once per group of rows of equal length."""
        out: dict[int, torch.Tensor] = {}
        for group in self._by_length(rows, lambda i: len(self.texts[self.live[i]]) + len(rounds[i].drafts)):
            ids = self._ids(group, len(self.texts[self.live[group[0]]]) + len(rounds[group[0]].drafts))
            logits = torch.stack([self.frontier[i] for i in group]).float()  # type: ignore[misc]
            scores = self.pre(cast(torch.LongTensor, ids), logits) if self.pre else logits
            out.update(zip(group, scores))
        return [out[i] for i in rows]

    def _propose(self, scores: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The primary's draft at a position: its top token, or (sampling) a draw from its
        distribution at the sampling temperature, which is then the proposal ``p``."""
        if not self.sampling:
            return int(scores.argmax()), None
        proposal = torch.softmax(scores.float() / self.temperature, dim=-1)
        return int(torch.multinomial(proposal, 1)), proposal

    def _verify(self, rounds: list[_Round]) -> list[list[torch.Tensor]]:
        """Every member reads every row's new text in one pass; the ensembled log-probabilities
        at each position of each row (the gate's positions: the primary's own)."""
        gate = self.unite.confidence_gate
        gated = [[gate is not None and float(torch.softmax(s.float(), -1).max()) >= gate for s in work.scores]
                 for work in rounds]
        for i, row_gated in enumerate(gated):
            self._count(i, "gated", sum(row_gated))
        reading, self._reading = self._reading, None
        readings = self._finish_read(reading or self._start_read(rounds, gated), rounds, gated)
        flat = [(i, k) for i, work in enumerate(rounds) for k in range(len(work.scores))]
        if not flat:
            return [[] for _ in rounds]
        scores = torch.stack([rounds[i].scores[k] for i, k in flat])
        members = []
        for values in readings:
            logprobs = [values[i][k] for i, k in flat]
            size = next((v.shape[-1] for v in logprobs if v is not None), 1)
            stacked = torch.stack([v if v is not None else torch.zeros(size) for v in logprobs])
            members.append((stacked, lambda row, logprobs=logprobs: logprobs[row] is not None))
        asked = [index for index, (i, k) in enumerate(flat) if not gated[i][k]]
        steps = [len(self.texts[self.live[i]]) + k for i, k in flat]
        ensembled = self.unite.ensemble_rows(
            scores, members, asked,
            describe_row=lambda index: f"batch row {self.live[flat[index][0]]} at step {steps[index]}")
        out: list[list[torch.Tensor]] = [[] for _ in rounds]
        for index, (i, _) in enumerate(flat):
            out[i].append(ensembled[index])
        return out

    @staticmethod
    def _judged(work: _Round, emitted: int, kept: int, text: list[int]) -> tuple[int, int]:
        """A row's positions judged this round and, of them, those where the ensemble's token
        was the primary's own: the drafts kept, a draft turned down, and the position after
        the draft when reached (the primary's top token there would have been its next draft).
        The draft schedule's acceptance estimate; it learns even from rounds without drafts."""
        judged = kept + (kept < len(work.drafts) and emitted > kept)
        if emitted > kept == len(work.drafts) and kept < len(work.scores):  # the position after the draft
            judged += 1
            kept += int(text[-1] == int(work.scores[kept].argmax()))
        return judged, kept

    def _may_read_early(self, rounds: list[_Round]) -> bool:
        """Whether the members may start reading now: every row's draft is complete (its
        remaining tokens are queued) and no position can be gated (the gate needs the
        primary's scores at every position first)."""
        return (bool(self.members) and self.unite.confidence_gate is None
                and all(len(work.scores) + len(work.queue) >= work.positions for work in rounds))

    def _start_read(self, rounds: list[_Round], gated: list[list[bool]]) -> _Reading:
        """Start every member's read of every row's new text (the tokens fed and still queued)
        on the members' workers; `_finish_read` waits for it."""
        view = self.unite.primary_view
        pushes = [[(token, view.bytes_of(token)) for token in [*work.fed, *work.queue]] for work in rounds]
        # position k reads after push k, or (no pending token: the first round) after push k - 1
        shift = [0 if work.pending else 1 for work in rounds]
        wanted = [[not gated[i][j + shift[i]] if j + shift[i] < len(gated[i]) else False for j in range(len(pushes[i]))]
                  for i in range(len(rounds))]
        before = [(member.logprobs, [member.votes(i) for i in range(len(rounds))]) for member in self.members]
        reading = _Reading(before, shift, [[] for _ in self.members])

        def read(index: int) -> None:
            reading.results[index] = self.members[index].read(pushes, wanted)

        if any(any(row) for row in wanted):
            reading.running = self.unite.rows.workers.start([functools.partial(read, index)
                                                             for index in range(len(self.members))])
            self.stats.member_passes += len(self.members)
            for i, row_wanted in enumerate(wanted):
                if any(row_wanted):
                    self.stats.rows[self.live[i]].member_passes += len(self.members)
        else:  # every position gated: push the text, read it with the next round
            for index in range(len(self.members)):
                read(index)
        return reading

    def _finish_read(self, reading: _Reading, rounds: list[_Round],
                     gated: list[list[bool]]) -> list[list[list[torch.Tensor | None]]]:
        """Per member, per row and position, its log-probabilities (None: it abstains or was not asked)."""
        if reading.running is not None:
            self.unite.rows._collect(reading.running)
        out = []
        for (current, votes), values in zip(reading.before, reading.results):
            per_row = []
            for i, work in enumerate(rounds):
                row_values: list[torch.Tensor | None] = list(values[i])
                if reading.shift[i]:
                    first = current[i] if votes[i] and not gated[i][0] else None
                    row_values = [first, *row_values]
                per_row.append(row_values[: len(work.scores)])
            out.append(per_row)
        return out

    def _emit(self, rounds: list[_Round],
              ensembled: list[list[torch.Tensor]]) -> tuple[list[int], list[int], list[bool]]:
        """Decide position by position as generation would, emitting each row's tokens until
        the ensemble departs from its draft (that token included) or a criterion stops it.
        Per row: tokens emitted, drafts kept, whether it stopped."""
        emitted = [0] * len(rounds)
        kept_drafts = [0] * len(rounds)
        stopped = [False] * len(rounds)
        ended = [False] * len(rounds)
        position = 0
        while True:
            rows = [i for i, work in enumerate(rounds) if not ended[i] and position < len(work.scores)]
            if not rows:
                return emitted, kept_drafts, stopped
            for group in self._by_length(rows, lambda i: len(self.texts[self.live[i]])):
                ids = self._ids(group, len(self.texts[self.live[group[0]]]))
                scores = torch.stack([ensembled[i][position] for i in group])
                scores = self.post(cast(torch.LongTensor, ids), scores) if self.post else scores
                chosen = [self._choose(rounds[i], position, row_scores) for i, row_scores in zip(group, scores)]
                for i, (token, kept) in zip(group, chosen):
                    self._write(i, len(self.texts[self.live[i]]), token)
                    self.texts[self.live[i]].append(token)
                    emitted[i] += 1
                    self._count(i, "accepted" if kept else "ensembled")
                    if kept:
                        kept_drafts[i] += 1
                    else:
                        ended[i] = True
                new_ids = self._ids(group, ids.shape[1] - self.width + 1)
                done = self.stopping(new_ids, None, batch_rows=[self.live[i] for i in group]).tolist()
                for i, stop in zip(group, done):
                    if stop:
                        stopped[i] = ended[i] = True
            position += 1

    def _choose(self, work: _Round, position: int, scores: torch.Tensor) -> tuple[int, bool]:
        """The token at ``position`` and whether it is the draft: the ensemble's best (greedy), or
        speculative sampling against the primary's proposal."""
        draft = work.draft_at(position)
        if not self.sampling:
            token = int(scores.argmax())
            return token, token == draft
        q = torch.softmax(scores.float(), dim=-1)
        return accept_or_resample(draft, work.proposals[position] if draft is not None else None, q)

    def _settle(self, rounds: list[_Round], emitted: list[int], stopped: list[bool]) -> None:
        """Roll every row back to its last emitted token (the next round feeds it), and let
        the stopped rows go."""
        for i, work in enumerate(rounds):
            if stopped[i]:
                continue
            row = self.live[i]
            kept = work.pending + emitted[i] - 1  # the pending token and the drafts kept
            dropped = len(work.fed) - kept
            if dropped:
                self.primary.drop(i, dropped)
            for member in self.members:
                member.keep(i, kept)
            self.pending[row] = [self.texts[row][-1]]
            self.frontier[i] = None
        if any(stopped):
            going = [i for i in range(len(rounds)) if not stopped[i]]
            self.live = [self.live[i] for i in going]
            self.frontier = [self.frontier[i] for i in going]
            if going:
                index = torch.as_tensor(going, dtype=torch.long)
                self.primary.select_rows(index)
                for member in self.members:
                    member.select(going)

    # -- batches of rows of equal length ----------------------------------------------------
    def _by_length(self, rows: list[int], length: Callable[[int], int]) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i in rows:
            groups.setdefault(length(i), []).append(i)
        return list(groups.values())

    def _write(self, i: int, position: int, token: int) -> None:
        """Token ``position`` (after the prompt) of live row ``i``: a draft, or an emitted token."""
        column = self.width + position
        if column >= self.sequences.shape[1]:
            self.sequences = torch.cat([self.sequences, torch.zeros_like(self.sequences)], dim=1)
        self.sequences[self.live[i], column] = token

    def _ids(self, group: list[int], length: int) -> torch.Tensor:
        """``input_ids`` of the group's rows as generation would pass them: the prompt and their
        first ``length`` tokens (emitted, then drafted). One gather, whatever the rows."""
        rows = torch.as_tensor([self.live[i] for i in group], dtype=torch.long, device=self.device)
        return self.sequences[:, : self.width + length].index_select(0, rows)
