"""One ensembling step over the live rows of a batch: the per-step maths, with explicit inputs.

Given every model's next-token log-probabilities for the same rows (the primary's first) and
the primary's scores after the logits processors before ours, `ensemble_step` returns, per
row, the ensembled distribution over the primary ids of the union of the models' top-k (and,
when scoring, of each row's target token):

1. per model, one ``topk`` and one device-to-host copy for all rows; a model abstains for a
   row where it does not vote (`StepModel.votes`) or gives every id ``-inf``;
2. per row, the union of the candidates (`unite_logits.core.alignment.build_union`), the
   primary id that writes each, and whether the primary's own processors allow it;
3. per model, one gather of the probabilities the union needs beyond its top-k;
4. per row, the combine rule (`unite_logits.core.combine`).

`ensembled_scores` writes those distributions into a scores tensor, as a logits processor
returns them: ``log(probs * mass)`` (`unite_logits.core.combine`, rule 5). Nothing here knows
about transformers' generation, the rows' history or the members' caches: the callers
(`unite_logits.processor`, `unite_logits.core.scoring`) bring the log-probabilities. A
`StepTrace` given as ``trace`` receives each row's union and outcome.

Cost per step: per model one top-k and one gather over all rows; per row O(k x models)
Python over the union.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .alignment import (
    EOS,
    Aligned,
    Lookups,
    Proposal,
    aligned_from,
    build_union,
    candidate_key,
    gather_probabilities,
    plan_lookups,
    primary_ids,
    token_for,
)
from .combine import Combined, combine
from .errors import NonFiniteScoresError
from .token_bytes import TokenBytes

__all__ = ["NonFiniteScoresError", "StepModel", "StepTrace", "RowOutcome", "TargetScore", "ensemble_step",
           "score_targets", "score_targets_sweep", "ensembled_scores", "check_step_inputs", "relative_weights"]


@dataclass(frozen=True)
class StepModel:
    """One model at one step: its log-probabilities for the step's rows, its weight and name.

    ``votes(i)`` says whether the model takes part for row ``i`` (an auxiliary waiting for an
    incomplete character, or past its context window, does not); None: always.
    """

    view: TokenBytes
    logprobs: torch.Tensor  # (rows, vocab)
    weight: float
    name: str
    votes: Callable[[int], bool] | None = None

    def votes_for(self, row: int) -> bool:
        return self.votes is None or self.votes(row)


@dataclass(frozen=True)
class RowOutcome:
    """What the step did for one row, for a `StepTrace`: the proposals of the models that took
    part (``models[i]`` indexes the step's models), the union, the primary id of each candidate
    (None: the primary cannot write it) and the combined distribution."""

    proposals: list[Proposal]
    models: list[int]
    union: list[Hashable]
    emit: list[int | None]
    combined: Combined


class StepTrace(Protocol):
    """Receives each row's outcome, for rows that got a distribution."""

    def __call__(self, row: int, outcome: RowOutcome) -> None: ...


def ensemble_step(
    models: Sequence[StepModel],
    scores: torch.Tensor,
    top_k: int,
    *,
    describe_row: Callable[[int], str] = lambda row: f"row {row}",
    trace: StepTrace | None = None,
) -> list[Combined]:
    """Per row, the ensembled probability of each primary id in the union (empty: no model gave
    an allowed candidate any mass) and the mass the union holds.

    Args:
        models: the primary first, then the auxiliaries; each with one row per row of ``scores``.
        scores: ``(rows, vocab)`` the primary's scores after the processors before ours; a
            candidate they set to ``-inf`` stays impossible.
        top_k: candidates each model proposes.
        describe_row: how a row is named in errors (e.g. "batch row 3 at step 7").
        trace: receives each row's outcome.

    Raises:
        NonFiniteScoresError: a voting model's distribution is NaN or infinite for a row.
    """
    return _ensemble(models, scores, top_k, None, describe_row, trace)[0][0]


@dataclass(frozen=True)
class TargetScore:
    """The ensemble's log-probability of a row's target, whether it is the greedy choice,
    whether its candidate was among the models' top-k (the union generation itself builds),
    and the likeliest primary ids there with their log-probabilities (best first)."""

    logprob: float
    greedy: bool
    proposed: bool
    top: tuple[tuple[int, float], ...] = ()


def score_targets(
    models: Sequence[StepModel],
    scores: torch.Tensor,
    top_k: int,
    targets: Sequence[int],
    *,
    top_n: int = 0,
    describe_row: Callable[[int], str] = lambda row: f"row {row}",
) -> list[TargetScore]:
    """`ensemble_step` with each row's target (a primary id) added to its union, read off.

    The target's log-probability is ``log(probs[t] * mass)``, as are the ``top_n`` likeliest
    ids'. Where two of the primary's ids write the same bytes, the primary's probability of
    the target is that of the target id itself (see `_with_target`), so one model alone scores
    exactly its own log-probabilities.
    """
    return score_targets_sweep(models, scores, top_k, targets, None, top_n=top_n, describe_row=describe_row)[0]


def score_targets_sweep(
    models: Sequence[StepModel],
    scores: torch.Tensor,
    top_k: int,
    targets: Sequence[int],
    weight_vectors: Sequence[Sequence[float]] | None,
    *,
    top_n: int = 0,
    describe_row: Callable[[int], str] = lambda row: f"row {row}",
) -> list[list[TargetScore]]:
    """`score_targets` once per weight vector (one weight per model; None: the models' own).

    Every vector must give positive weight to exactly the models that have positive weight in
    ``models`` (the union is built from those); the ratios may differ. Cost: one step, then one
    combine per row and vector.
    """
    positive = [model.weight > 0 for model in models]
    for vector in weight_vectors or ():
        if len(vector) != len(models) or [w > 0 for w in vector] != positive:
            raise ValueError("each weight vector needs one weight per model, positive exactly where the models' are")
    combined, proposed = _ensemble(models, scores, top_k, targets, describe_row, None, weight_vectors)
    return [[_target_score(models[0].view, target, row, was, top_n)
             for target, row, was in zip(targets, per_vector, proposed)] for per_vector in combined]


def _ensemble(
    models: Sequence[StepModel],
    scores: torch.Tensor,
    top_k: int,
    targets: Sequence[int] | None,
    describe_row: Callable[[int], str],
    trace: StepTrace | None,
    weight_vectors: Sequence[Sequence[float]] | None = None,
) -> tuple[list[list[Combined]], list[bool]]:
    """The step, per weight vector (default: the models' own weights); with ``targets``, also
    whether each target's candidate was in the union already.

    The union and every model's aligned probabilities do not depend on the weights (as long as
    the same models have positive weight), so each further weight vector costs one combine per
    row, not another forward pass or alignment.
    """
    rows = scores.shape[0]
    primary_view = models[0].view
    tops = [_top_k(model, top_k, describe_row) for model in models]
    proposals: list[list[Proposal]] = []
    taking_part: list[list[int]] = []
    for row in range(rows):
        row_proposals, row_models = [], []
        for index, (model, (top_ids, top_probs)) in enumerate(zip(models, tops)):
            if model.weight > 0 and model.votes_for(row) and top_probs[row][0] > 0:  # all -inf: abstains
                row_proposals.append(Proposal(model.view, None, top_ids[row], top_probs[row], model.weight, index == 0))
                row_models.append(index)
        proposals.append(row_proposals)
        taking_part.append(row_models)
    unions = [build_union(row) for row in proposals]
    keys = [candidate_key(primary_view, target) for target in targets] if targets is not None else []
    proposed = [key in union for key, union in zip(keys, unions)]
    for union, key, was in zip(unions, keys, proposed):
        if key is not None and not was:
            union.append(key)
    emits = [primary_ids(primary_view, union) for union in unions]
    for union, emit, eos_id in zip(unions, emits, _likeliest_eos(primary_view, scores)):
        if EOS in union:
            emit[union.index(EOS)] = eos_id
    allowed = _allowed(scores, emits)
    lookups = [[plan_lookups(p, union) for p in row] for row, union in zip(proposals, unions)]
    values = _gather(models, rows, taking_part, lookups)
    own = _target_probabilities(models[0], targets) if targets is not None else []
    sweep = weight_vectors if weight_vectors is not None else [[model.weight for model in models]]
    results: list[list[Combined]] = [[] for _ in sweep]
    for row in range(rows):
        aligned = [aligned_from(plan, unions[row], values[model][row]) for plan, model in zip(lookups[row], taking_part[row])]
        if targets is not None and taking_part[row][:1] == [0]:
            aligned[0] = _with_target(aligned[0], unions[row], keys[row], targets[row], own[row])
        for vector, out in zip(sweep, results):
            combined = combine(aligned, [vector[model] for model in taking_part[row]], emits[row], allowed[row])
            if trace is not None and combined.probs:
                trace(row, RowOutcome(proposals[row], taking_part[row], unions[row], emits[row], combined))
            out.append(combined)
    return results, proposed


def _target_score(view: TokenBytes, target: int, combined: Combined, proposed: bool, top_n: int) -> TargetScore:
    """The ensemble's log-probability of ``target``, whether it is the greedy choice, the top ``top_n``."""
    key = candidate_key(view, target)
    pid = token_for(view, key, emitting=True) if key is not None else None
    probs, mass = combined.probs, combined.mass
    value = probs.get(pid, 0.0) * mass if pid is not None else 0.0
    greedy = bool(probs) and pid is not None and max(probs, key=probs.__getitem__) == pid
    best = sorted(probs, key=probs.__getitem__, reverse=True)[:top_n]
    top = tuple((token, math.log(probs[token] * mass)) for token in best if probs[token] > 0)
    return TargetScore(math.log(value) if value > 0 else -math.inf, greedy, proposed, top)


def ensembled_scores(
    combined: Sequence[Combined], primary_logprobs: torch.Tensor, out: torch.Tensor, rows: Sequence[int]
) -> None:
    """Write row ``i``'s distribution into ``out[rows[i]]`` as log-probabilities,
    ``log(probs * mass)`` at the union and ``-inf`` elsewhere; a row with no distribution gets
    the primary's own ``primary_logprobs[i]``.

    One scatter for all rows; ``out`` keeps its dtype and device.
    """
    vocab = primary_logprobs.shape[-1]
    index = torch.as_tensor(list(rows), dtype=torch.long, device=out.device)
    out[index] = float("-inf")
    flat_rows, ids, values = [], [], []
    for position, row in enumerate(combined):
        if not row.probs:  # no model gives any allowed candidate mass: the primary alone decides
            out[rows[position], :vocab] = primary_logprobs[position].to(out.dtype)
            continue
        flat_rows += [rows[position]] * len(row.probs)
        ids += list(row.probs)
        values += [probability * row.mass for probability in row.probs.values()]
    if flat_rows:
        where = (torch.as_tensor(flat_rows, device=out.device), torch.as_tensor(ids, device=out.device))
        out.index_put_(where, torch.tensor(values, dtype=torch.float32, device=out.device).log().to(out.dtype))


def relative_weights(weights: Sequence[float]) -> list[float]:
    """The weights divided by the largest: only their ratios matter, and their sum cannot
    overflow (``1e308, 1e308`` is ``1, 1``). Refuses weights that are all zero."""
    largest = max(weights, default=0.0)
    if largest <= 0:
        raise ValueError("the weights of the primary and the members sum to 0; at least one must be positive")
    return [weight / largest for weight in weights]


def check_step_inputs(input_ids: torch.Tensor, scores: torch.Tensor) -> None:
    """Refuse what a logits processor cannot work on, with the shapes and dtypes it got."""
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


def _target_probabilities(primary: StepModel, targets: Sequence[int]) -> list[float]:
    """The primary's probability of each row's target id: one gather."""
    return [row[0] for row in gather_probabilities(primary.logprobs, [[target] for target in targets])]


def _with_target(aligned: Aligned, union: Sequence[Hashable], key: Hashable | None, target: int,
                 probability: float) -> Aligned:
    """The primary's probabilities with the target candidate read off the target id itself.

    Where two of the primary's ids write the same bytes (a byte-fallback ``<0x2E>`` beside
    "."), a candidate stands for the likelier; the token being scored is one id, and the
    primary's own probability of it is what a model alone would give.
    """
    if key is None or key not in union:
        return aligned
    position = union.index(key)
    probs, sources = list(aligned.probs), list(aligned.sources)
    probs[position], sources[position] = probability, target
    return Aligned(probs, sources)


def _top_k(model: StepModel, top_k: int, describe_row: Callable[[int], str]) -> tuple[list[list[int]], list[list[float]]]:
    """Every row's top-k ids and probabilities: one top-k, one copy; non-finite rows refused."""
    k = min(top_k, model.logprobs.shape[-1])
    values, indices = torch.topk(model.logprobs, k, dim=-1)
    probs = values.exp().tolist()
    for row, row_probs in enumerate(probs):
        if not math.isfinite(row_probs[0]) and model.votes_for(row):
            raise NonFiniteScoresError(
                f"model {model.name!r} gave non-finite log-probabilities (NaN or inf) for {describe_row(row)}: "
                "float16 on a CPU overflows (use float32 or bfloat16), or its weights are damaged"
            )
    return indices.tolist(), probs


def _likeliest_eos(view: TokenBytes, scores: torch.Tensor) -> list[int]:
    """Per row, the primary's end-of-sequence id that its own scores prefer at this step."""
    ids = sorted(i for i in view.eos_ids if i < scores.shape[-1])
    if not ids:
        return [view.eos_id] * scores.shape[0]
    best = scores[:, torch.as_tensor(ids, device=scores.device)].argmax(dim=-1).tolist()
    return [ids[b] for b in best]


def _allowed(scores: torch.Tensor, emits: list[list[int | None]]) -> list[list[bool]]:
    """False where the primary cannot emit a candidate or its processors set it to -inf."""
    size = scores.shape[-1]
    wanted = [[pid if pid is not None and pid < size else 0 for pid in emit] for emit in emits]
    finite = gather_probabilities(scores.float(), wanted)  # exp(-inf) = 0
    return [
        [pid is not None and pid < size and value > 0 for pid, value in zip(emit, row)]
        for emit, row in zip(emits, finite)
    ]


def _gather(
    models: Sequence[StepModel], rows: int, taking_part: list[list[int]], lookups: list[list[Lookups]]
) -> list[list[list[float]]]:
    """Per model, per row, the probabilities of the ids its lookups need: one gather per model."""
    ids: list[list[list[int]]] = [[[] for _ in range(rows)] for _ in models]
    for row, (row_models, plans) in enumerate(zip(taking_part, lookups)):
        for model, plan in zip(row_models, plans):
            ids[model][row] = plan.ids
    return [gather_probabilities(model.logprobs, model_ids) for model, model_ids in zip(models, ids)]
