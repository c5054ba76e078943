"""Ensembled log-likelihood of a continuation: UniTE's own rule, applied to a given text.

At each position of the continuation (in the primary's tokens) the ensemble's probability of
the token that comes next is what the processor would assign if generation were forced along
the text (`unite_logits.core.step` with the target added to the union):

1. every model's next-token distribution after the text so far, each model reading the text
   with its own tokenizer exactly as a generation does (its prompt re-encoded, then the
   primary's tokens pushed through its `TokenSync`);
2. the union of the models' top-k candidates, plus the target token's candidate;
3. each model's probabilities over the union, renormalised, averaged with the weights (the
   same alignment, special-token and abstention rules as generation);
4. the target's ensembled probability times the mass the models put on the union
   (`unite_logits.core.combine`, rule 5), so that one model alone scores exactly its own
   log-probability; and whether the target is the ensemble's greedy choice there.

Every model runs ONE forward pass per batch of requests (`unite_logits.core.forced`): a member
whose reading of a prefix is not a prefix of its reading of the whole text reads that prefix on
a short branch of the same pass, so the result equals forced generation everywhere, not only
where the tokenizations happen to line up. Cost per request: each model's forward pass over its
own tokens (logits at the continuation's positions only), one `TokenSync` push per continuation
token and member, and one ensembling step per continuation token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from .checks import check_top_k, context_window
from .forced import ForcedText, forced_logprobs
from .prompts import PromptSource
from .step import StepModel, TargetScore, relative_weights, score_targets_sweep
from .token_bytes import TokenBytes

__all__ = ["ScoreRequest", "TokenScores", "ScoringModel", "score_requests", "score_requests_sweep"]


@dataclass(frozen=True)
class ScoreRequest:
    """One continuation to score, in the primary's token ids.

    ``member_prompts[j]``: member ``j``'s own ids for the context (a chat template of its own,
    say); None (or no list): the member re-encodes the primary's context text, as in generation.
    """

    context: list[int]
    continuation: list[int]
    member_prompts: Sequence[list[int] | None] | None = None


@dataclass(frozen=True)
class TokenScores:
    """Per continuation token: the ensemble's log-probability, whether it is its greedy choice,
    and whether it was among the models' top-k (``proposed``; where it was not, generation
    would never have written it, and scoring added it to the union)."""

    logprobs: list[float]
    greedy: list[bool]
    proposed: list[bool]
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)

    @property
    def logprob(self) -> float:
        """The continuation's log-likelihood: the sum over its tokens."""
        return math.fsum(self.logprobs)

    @property
    def is_greedy(self) -> bool:
        """Whether greedy decoding would have written the whole continuation."""
        return all(self.greedy)


@dataclass(frozen=True)
class ScoringModel:
    """A model in this process as scoring needs it: weights, tokenizer view, weight and name."""

    model: PreTrainedModel
    view: TokenBytes
    weight: float
    name: str


def score_requests(
    primary: ScoringModel, members: Sequence[ScoringModel], requests: Sequence[ScoreRequest], top_k: int,
    top_n: int = 0, confidence_gate: float | None = None,
) -> list[TokenScores]:
    """Score ``requests`` (one batch: every model runs one forward pass over all of them);
    ``top_n``: also each position's likeliest primary ids (`TokenScores.top`).
    ``confidence_gate``: positions where the primary's top token has at least this probability
    are scored by the primary alone, as generation with the same gate writes them (the members
    run only if some position is not gated).

    Raises:
        ValueError: an empty context or continuation, or a text longer than a model's window.
        NonFiniteScoresError: a model's distribution is NaN or infinite somewhere.
    """
    return score_requests_sweep(primary, members, requests, top_k, None, top_n, confidence_gate)[0]


def score_requests_sweep(
    primary: ScoringModel, members: Sequence[ScoringModel], requests: Sequence[ScoreRequest], top_k: int,
    weight_vectors: Sequence[Sequence[float]] | None, top_n: int = 0, confidence_gate: float | None = None,
) -> list[list[TokenScores]]:
    """`score_requests` under several weightings at once: per vector (one weight per model,
    primary first; None: the models' own weights), the scores. A vector may give a member 0
    (it then takes no part, as in an ensemble without it), but not a member whose own weight is
    0 a positive weight (that member is not run).

    Every model runs one forward pass, whatever the vectors: the union and each model's aligned
    probabilities depend only on which models take part, so each further vector costs one
    combine per position, and each further set of models taking part one alignment
    (`unite_logits.core.step.score_targets_sweep`). A search over members and weights thus pays
    one scoring pass per primary.
    """
    check_top_k(top_k)
    if not requests:
        return [[] for _ in (weight_vectors or [()])]
    for index, request in enumerate(requests):
        if not request.context or not request.continuation:
            raise ValueError(f"request {index} has an empty context or continuation (give at least one token each)")
    own = [primary.weight] + [member.weight for member in members]
    active = [j for j, member in enumerate(members) if member.weight > 0]
    weights = relative_weights(own)
    vectors = [weights] if weight_vectors is None else [relative_weights(v) for v in weight_vectors]
    for vector in vectors:
        if len(vector) != len(own) or any(w > 0 and o <= 0 for w, o in zip(vector, own)):
            raise ValueError("each weight vector needs one weight per model, and none for a model of weight 0")
    primary_texts = [_primary_reading(request) for request in requests]
    _check_window(primary, primary_texts, "the primary")
    primary_rows = torch.cat(forced_logprobs(primary.model, primary_texts, primary.view.size))
    targets = [token for request in requests for token in request.continuation]
    where = [(index, t) for index, request in enumerate(requests) for t in range(len(request.continuation))]
    gated = (primary_rows.amax(dim=-1).exp() >= confidence_gate).tolist() if confidence_gate is not None else []
    asked = [row for row in range(len(targets)) if not gated or not gated[row]]
    scored: list[list[TargetScore | None]] = [[None] * len(targets) for _ in vectors]
    for row in range(len(targets)):
        if gated and gated[row]:
            alone = _primary_alone(primary_rows[row], targets[row], top_k, top_n)
            for per_vector in scored:
                per_vector[row] = alone
    if asked:
        models = _step_models(primary, members, weights, active, requests, primary_rows)  # the forward passes
        models = models if len(asked) == len(targets) else _rows_of(models, asked)
        groups: dict[tuple[bool, ...], list[int]] = {}
        for index, vector in enumerate(vectors):
            groups.setdefault(tuple(w > 0 for w in [vector[0]] + [vector[j + 1] for j in active]), []).append(index)
        for support, indices in groups.items():
            taking = [m for m, on in enumerate(support) if on or m == 0]  # the primary's tokens are scored, always
            first = vectors[indices[0]]
            subset = [dataclasses.replace(models[m], weight=([first[0]] + [first[j + 1] for j in active])[m])
                      for m in taking]
            step_vectors = [[([vectors[i][0]] + [vectors[i][j + 1] for j in active])[m] for m in taking] for i in indices]
            swept = score_targets_sweep(
                subset, subset[0].logprobs, top_k, [targets[row] for row in asked], step_vectors, top_n=top_n,
                describe_row=lambda i: f"request {where[asked[i]][0]} at continuation token {where[asked[i]][1]}")
            for index, values in zip(indices, swept):
                for row, value in zip(asked, values):
                    scored[index][row] = value
    return [_per_request(requests, per_vector) for per_vector in scored]


def _per_request(requests: Sequence[ScoreRequest], scored: Sequence[TargetScore | None]) -> list[TokenScores]:
    out, start = [], 0
    for request in requests:
        end = start + len(request.continuation)
        part = [value for value in scored[start:end] if value is not None]
        out.append(TokenScores([s.logprob for s in part], [s.greedy for s in part], [s.proposed for s in part],
                               [s.top for s in part]))
        start = end
    return out


def _step_models(primary: ScoringModel, members: Sequence[ScoringModel], weights: Sequence[float],
                 active: Sequence[int], requests: Sequence[ScoreRequest], primary_rows: torch.Tensor) -> list[StepModel]:
    """The primary's rows and every active member's, each member reading the texts its own way."""
    models = [StepModel(primary.view, primary_rows, weights[0], primary.name)]
    for j in active:
        member = members[j]
        texts, votes = _member_readings(member, j, primary.view, requests)
        _check_window(member, texts, f"member {member.name!r}")
        rows = torch.cat(forced_logprobs(member.model, texts, member.view.size))
        models.append(StepModel(member.view, rows, weights[j + 1], member.name, votes.__getitem__))
    return models


def _rows_of(models: Sequence[StepModel], rows: Sequence[int]) -> list[StepModel]:
    """The models restricted to ``rows`` (their votes too)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return [StepModel(m.view, m.logprobs.index_select(0, index), m.weight, m.name,
                      None if m.votes is None else _votes_at(m.votes, rows)) for m in models]


def _votes_at(votes: Callable[[int], bool], rows: Sequence[int]) -> Callable[[int], bool]:
    """``votes`` read through ``rows``: row ``i`` of a subset is row ``rows[i]`` of the whole."""
    return lambda i: votes(rows[i])


def _primary_alone(logprobs: torch.Tensor, target: int, top_k: int, top_n: int) -> TargetScore:
    """A gated position: the primary's own log-probability, choice and top ids."""
    values, ids = torch.topk(logprobs, min(max(top_k, top_n, 1), logprobs.numel()))
    top = tuple((int(i), float(v)) for v, i in zip(values[:top_n], ids[:top_n]) if math.isfinite(float(v)))
    return TargetScore(float(logprobs[target]), int(ids[0]) == target, target in ids[:top_k].tolist(), top)


def _primary_reading(request: ScoreRequest) -> ForcedText:
    """The primary reads context + continuation (all but the last token), asked after each prefix."""
    text = ForcedText(request.context + request.continuation[:-1])
    for t in range(len(request.continuation)):
        text.queries.append((-1, len(request.context) + t - 1))
    return text


def _member_readings(member: ScoringModel, index: int, primary_view: TokenBytes,
                     requests: Sequence[ScoreRequest]) -> tuple[list[ForcedText], list[bool]]:
    """Each request as the member reads it before each continuation token, as in generation, and
    whether the member votes there (not while a character is incomplete)."""
    texts, votes = [], []
    for request in requests:
        override = request.member_prompts[index] if request.member_prompts is not None else None
        sync = PromptSource(index, member.view, primary_view, override).sync(0, tuple(request.context))
        readings = []
        for token in request.continuation:
            readings.append(list(sync.ids))
            votes.append(sync.ready and bool(sync.ids))  # nothing read yet (an empty context): abstains
            sync.push_token(token, primary_view.bytes_of(token))
        trunk = readings[-1] or [member.view.eos_id]  # a stand-in where the member reads nothing at all
        text = ForcedText(trunk)
        for reading in readings:
            text.add_reading(reading or trunk[:1])
        texts.append(text)
    return texts, votes


def _check_window(model: ScoringModel, texts: Sequence[ForcedText], who: str) -> None:
    window = context_window(model.model)
    longest = max(max(len(text.trunk), max((s + len(b) for s, b in text.branches), default=0)) for text in texts)
    if window is not None and longest > window:
        raise ValueError(
            f"{who} ({model.name}) reads a request as {longest} tokens, past its context window of {window}; "
            "shorten the context"
        )
