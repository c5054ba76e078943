"""Determine: which primary, which members and which weights, chosen on a dev slice.

The options are every candidate alone, and for each of the ``primaries`` candidates best on
the dev slice as primary, every set of the other candidates with every weighting of the grid
(`WEIGHT_GRID` per member, the primary at 1; only ratios matter). ``top_k`` is not searched:
on ARC-Easy 5, 10 and 20 scored within 0.2 points (docs/results.md).

Cost: the scoring of one option differs from another only in the combine step when they share
their primary, so all options of one primary are scored in ONE pass of every model over the
dev slice (`unite_logits.ensemble.scoring.Scorer.score_sweep`, served to lm-eval by `SweepLM`,
one lm-eval system per option with its own records and request cache). A search over three
candidates with two primaries costs two ensemble passes over the dev slice.

The choice guards against fitting the dev slice's noise (`choose`): it starts from the best
candidate alone and takes a more complex option (more models, then unequal weights) only when
its dev gain over the current choice has a paired bootstrap interval above zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from lm_eval.api.instance import Instance

from unite_logits.core.scoring import ScoreRequest
from unite_logits.ensemble.ensemble import Ensemble
from unite_logits.ensemble.scoring import encode_pair
from unite_logits.ensemble.spec import EnsembleSpec
from unite_logits.evaluation.stats import PairedDiff, paired_bootstrap
from unite_logits.lm_eval import UniteLM

__all__ = ["WEIGHT_GRID", "Choice", "Option", "SweepLM", "Sweep", "choose", "options_for", "normalised"]

WEIGHT_GRID = (0.25, 0.5, 1.0, 2.0)
"""A member's weight relative to the primary's in the search (0, leaving it out, is searched too)."""


def normalised(primary: str, others: Sequence[str], weights: Sequence[float], top_k: int) -> EnsembleSpec:
    """The spec of ``primary`` with the ``others`` of positive weight (weights relative to the primary)."""
    kept = [(name, weight) for name, weight in zip(others, weights) if weight > 0]
    return EnsembleSpec((primary, *(name for name, _ in kept)), (1.0, *(weight for _, weight in kept)), top_k)


def options_for(primary: str, others: Sequence[str], top_k: int) -> list[tuple[EnsembleSpec, list[float]]]:
    """Every ensemble of ``primary`` with a non-empty set of ``others`` and grid weights, with its
    weight vector over ``(primary, *others)`` (0 where a member is left out)."""
    out = []
    for weights in itertools.product((0.0, *WEIGHT_GRID), repeat=len(others)):
        if any(weights):
            out.append((normalised(primary, others, weights, top_k), [1.0, *weights]))
    return out


@dataclass(frozen=True)
class Option:
    """One option of the search with its per-document correctness on the dev slice."""

    spec: EnsembleSpec
    flags: tuple[bool, ...]

    @property
    def name(self) -> str:
        return self.spec.label()

    @property
    def score(self) -> float:
        return sum(self.flags) / len(self.flags) if self.flags else 0.0

    @property
    def complexity(self) -> tuple[int, int]:
        """(models taking part, 0 for equal weights among them else 1): simpler sorts first."""
        taking = [w for w in self.spec.weight_list if w > 0]
        return len(taking), 0 if len(set(taking)) == 1 else 1


@dataclass(frozen=True)
class Choice:
    """The option chosen, why, and each step of the way (option, its gain over the choice
    before it, whether it was taken)."""

    option: Option
    steps: list[tuple[Option, PairedDiff, bool]]

    @property
    def reasons(self) -> list[str]:
        lines = []
        for option, gain, taken in self.steps:
            interval = f"{100 * gain.diff:+.1f} [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}]"
            verdict = ("taken" if taken else "not taken: worse than the choice before" if gain.high < 0
                       else "not taken: its interval reaches 0")
            lines.append(f"{option.name}: {interval} points on the dev slice over the choice before; {verdict}")
        return lines


def choose(alone: Sequence[Option], ensembles: Sequence[Option], seed: int = 0) -> Choice:
    """The best model alone, replaced by the best option of each next complexity level whose dev
    gain over the current choice is above zero with 95 % confidence (paired bootstrap)."""
    if not alone:
        raise ValueError("nothing to choose from: no candidate alone")
    current = max(alone, key=lambda option: option.score)  # ties: the first given
    steps: list[tuple[Option, PairedDiff, bool]] = []
    for level in sorted({option.complexity for option in ensembles}):
        best = max((o for o in ensembles if o.complexity == level), key=lambda option: option.score)
        gain = paired_bootstrap(best.flags, current.flags, seed=seed)
        taken = gain.low > 0
        steps.append((best, gain, taken))
        if taken:
            current = best
    return Choice(current, steps)


class Sweep:
    """The answers of every option of one primary, computed in one scoring pass and kept.

    ``ensemble``: the primary with every other candidate, all of weight 1 (every model runs);
    ``vectors``: one weight vector per option over its models.
    """

    def __init__(self, ensemble: Ensemble, vectors: Sequence[Sequence[float]], batch_size: int) -> None:
        self.scorer = ensemble.scorer(batch_size=batch_size)
        self.vectors = [list(v) for v in vectors]
        self.answers: dict[tuple[str, str], list[tuple[float, bool]]] = {}

    def answer(self, requests: Sequence[Instance], option: int, progress: bool) -> list[tuple[float, bool]]:
        missing = list(dict.fromkeys(tuple(r.args) for r in requests if tuple(r.args) not in self.answers))
        if missing:
            scoring = [ScoreRequest(*encode_pair(self.scorer.tokenizer, context, continuation, self.scorer.add_bos_token))
                       for context, continuation in missing]
            swept = self.scorer.score_sweep(scoring, self.vectors, progress=progress, desc="unite search")
            for index, args in enumerate(missing):
                self.answers[args] = [(values[index].logprob, values[index].is_greedy) for values in swept]
        return [self.answers[tuple(r.args)][option] for r in requests]


class SweepLM(UniteLM):
    """The lm-eval model of one option of a `Sweep`: its log-likelihoods come from the sweep
    (computed for every option on the first request), each kept in its own request cache."""

    @classmethod
    def of(cls, sweep: Sweep, option: int, ensemble: Ensemble, *, batch_size: int, progress: bool) -> "SweepLM":
        lm = cls.from_ensemble(ensemble, batch_size=batch_size, progress=progress)
        lm.sweep, lm.option = sweep, option
        return lm

    sweep: Sweep
    option: int

    @classmethod
    def maker(cls, sweep: Sweep, option: int, ensemble: Ensemble, *, batch_size: int,
              progress: bool) -> Callable[[], "SweepLM"]:
        """What `unite_logits.evaluation.runs.run_systems` calls to make this option's model."""
        return lambda: cls.of(sweep, option, ensemble, batch_size=batch_size, progress=progress)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        answers = self.sweep.answer(requests, self.option, progress=self.progress and not disable_tqdm)
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return answers

