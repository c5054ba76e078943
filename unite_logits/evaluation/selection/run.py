"""``select``: the "determine" step of Determine-Then-Ensemble, end to end.

1. Split the task's documents into a dev slice and a held-out slice (`unite_logits.evaluation.split`).
2. Run each candidate alone on the dev slice (resumable, through the same `unite` model and
   request caches as ``eval``; ``--reuse`` takes answers from earlier folders) and judge every
   pair by the paper's rules (the compatibility report).
3. Search members and weights on the dev slice (`unite_logits.evaluation.selection.search`):
   one scoring pass per primary tried, every option an lm-eval system of its own.
4. Choose, preferring the simpler option unless the dev gain clears its paired interval.
5. Evaluate on the held-out slice, never looked at before: every candidate alone, the
   equal-weight ensemble of all candidates and the chosen ensemble; write ``ensemble.json``
   (the choice, where it was tuned, its dev and held-out scores) and the report.

Layout of ``out``: ``dev/`` (candidates alone), ``search/`` (the options), ``held-out/``,
``ensemble.json``, ``<task>.select.json`` / ``.md`` and the heatmap.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unite_logits.ensemble.spec import EnsembleFile, EnsembleSpec, write_ensemble_file
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.identity import System, model_digest
from unite_logits.evaluation.run_task import load_members
from unite_logits.evaluation.runs import SystemRun, TaskRun, identity_of, resolve_task, run_systems
from unite_logits.evaluation.selection.judge import Thresholds, choose_set, judge_pair
from unite_logits.evaluation.selection.measure import (
    probe_contexts,
    profile_candidates,
    top_k_agreement,
    vocabulary_overlap,
)
from unite_logits.evaluation.selection.plot import save_heatmap
from unite_logits.evaluation.selection.render import Determined, SelectReport, held_out_rows
from unite_logits.evaluation.split import DEFAULT_DEV_FRACTION, DEFAULT_SEED, Split, split_documents
from unite_logits.evaluation.summary import compare
from unite_logits.models.loading import LoadedModel

__all__ = ["select", "DEFAULT_PRIMARIES"]

logger = logging.getLogger(__name__)

DEFAULT_PRIMARIES = 2
"""Candidates tried as the primary: the best ones on the dev slice."""
EQUAL = "equal weights"


def select(
    task: str,
    candidates: Sequence[str | LoadedModel],
    *,
    limit: int | None = None,
    out: str | os.PathLike[str] = "select-results",
    data_dir: str | os.PathLike[str] | None = None,
    include_path: str | os.PathLike[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    top_k: int = 10,
    batch_size: int = 8,
    dev_fraction: float = DEFAULT_DEV_FRACTION,
    seed: int = DEFAULT_SEED,
    primaries: int = DEFAULT_PRIMARIES,
    search: bool = True,
    held_out: bool = True,
    heatmap: bool = True,
    progress: bool = True,
    loader: Callable[[str], LoadedModel] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> SelectReport:
    """Determine an ensemble of ``candidates`` on ``task`` (see the module docstring); with
    ``search``, write ``out/ensemble.json``. ``limit``: split only the first N documents.

    Raises:
        EvalUsageError: an unknown task, data that cannot be had, fewer than two candidates,
            repeated candidates, a bad split, a folder of another run.
    """
    if len(candidates) < 2:
        raise EvalUsageError("select needs at least two candidates")
    if primaries < 1:
        raise EvalUsageError(f"--primaries has to be at least 1, got {primaries}")
    run = resolve_task(task, data_dir, include_path)
    try:
        split = split_documents(run.subtasks, seed=seed, dev_fraction=dev_fraction, limit=limit)
    except ValueError as error:
        raise EvalUsageError(str(error)) from None
    members = load_members(candidates, loader)
    out = Path(out)
    dev, held = split.sizes
    logger.info("%s: %d documents for choosing (dev), %d held out (seed %d)", run.name, dev, held, seed)

    alone: list[System] = [(m.name, [m], None) for m in members]
    dev_run = _run(run, alone, members, out / "dev", split.dev, batch_size, progress, reuse, top_k=top_k)
    report = _compatibility(dev_run, members, thresholds, top_k)
    if search:
        report.determined = _determine(run, dev_run, members, split, out, top_k, batch_size, primaries, held_out,
                                       progress, reuse)
    report.save(out)
    if heatmap and len(members) >= 2:
        save_heatmap(report, out)
    return report


def _run(run: TaskRun, systems: Sequence[System], members: Sequence[LoadedModel], out: Path,
         samples: dict[str, list[int]], batch_size: int, progress: bool, reuse: Sequence[str | os.PathLike[str]],
         makers: dict[str, Callable[[], Any]] | None = None, contexts: bool = True, **extra: Any) -> TaskRun:
    """Run ``systems`` on the documents ``samples`` names, in ``out`` (resumable)."""
    from unite_logits.ensemble.ensemble import Ensemble
    from unite_logits.lm_eval import UniteLM

    identity = identity_of(run, systems, num_fewshot=None, apply_chat_template=False, **extra)

    def maker(models: Sequence[LoadedModel], spec: EnsembleSpec | None) -> Callable[[], Any]:
        return lambda: UniteLM.from_ensemble(Ensemble(list(models), spec), batch_size=batch_size, progress=progress)

    jobs = [(name, (makers or {}).get(name) or maker(models, spec)) for name, models, spec in systems]
    return run_systems(run, jobs, out=out, identity=identity, samples=samples, progress=progress, reuse=reuse,
                       contexts=contexts)


def _compatibility(dev_run: TaskRun, members: Sequence[LoadedModel], thresholds: Thresholds, top_k: int) -> SelectReport:
    """The paper's pairwise rules on the dev slice (accuracy gap, response length, overlaps)."""
    comparison = compare(dev_run)
    profiles = profile_candidates(dev_run.systems, comparison)
    by_name = {p.name: p for p in profiles}
    first = dev_run.systems[0].records
    contexts = probe_contexts([r["context"] for r in first],
                              [[str(s.records[i]["output"]) if isinstance(s.records[i]["output"], str) else ""
                                for s in dev_run.systems] for i in range(len(first))])
    pairs = []
    for a, b in itertools.combinations(members, 2):
        agree_ab, agree_ba = top_k_agreement(a, b, contexts[:50], top_k)
        pairs.append(judge_pair(
            by_name[a.name], by_name[b.name], thresholds,
            vocab_overlap_a_in_b=vocabulary_overlap(a.tokenizer, b.tokenizer),
            vocab_overlap_b_in_a=vocabulary_overlap(b.tokenizer, a.tokenizer),
            top_k_agreement_a_in_b=agree_ab, top_k_agreement_b_in_a=agree_ba,
        ))
    best, reasons = choose_set(profiles, pairs)
    return SelectReport(dev_run.name, thresholds, profiles, pairs, best, reasons)


def _flags(system: SystemRun, metric: str) -> dict[tuple[str, int], bool]:
    return {(r["task"], r["doc_id"]): r["metrics"][metric] == 1.0 for r in system.records if metric in r["metrics"]}


def _determine(run: TaskRun, dev_run: TaskRun, members: Sequence[LoadedModel], split: Split, out: Path, top_k: int,
               batch_size: int, primaries: int, held_out: bool, progress: bool,
               reuse: Sequence[str | os.PathLike[str]]) -> Determined:
    """Search on the dev slice, choose, evaluate on the held-out slice, write ``ensemble.json``."""
    from unite_logits.ensemble.ensemble import Ensemble
    from unite_logits.evaluation.selection.search import WEIGHT_GRID, Option, Sweep, SweepLM, choose, options_for

    metric = run.metrics[0] if run.metrics else "acc"
    loaded = {m.name: m for m in members}
    docs = sorted(_flags(dev_run.systems[0], metric))
    alone = [Option(EnsembleSpec((s.name,), top_k=top_k), tuple(_flags(s, metric)[d] for d in docs))
             for s in dev_run.systems]
    ranked = [option.spec.primary for option in sorted(alone, key=lambda o: -o.score)]
    systems: list[System] = []
    makers: dict[str, Callable[[], Any]] = {}
    for primary in ranked[:primaries]:
        others = [m.name for m in members if m.name != primary]
        base = Ensemble([loaded[primary], *(loaded[o] for o in others)], top_k=top_k)
        specs = options_for(primary, others, top_k)
        sweep = Sweep(base, [vector for _, vector in specs], batch_size)
        for index, (spec, _) in enumerate(specs):
            systems.append((spec.label(), [loaded[name] for name in spec.models], spec))
            makers[spec.label()] = SweepLM.maker(sweep, index, base, batch_size=batch_size, progress=progress)
    logger.info("searching %d ensembles on the dev slice (%d scoring passes)", len(systems), min(primaries, len(ranked)))
    search_run = _run(run, systems, members, out / "search", split.dev, batch_size, progress, reuse, makers=makers,
                      contexts=False)  # the prompts are in dev/'s records, once
    ensembles = [Option(spec, tuple(_flags(s, metric)[d] for d in docs))
                 for s, (_, _, spec) in zip(search_run.systems, systems) if spec is not None]
    choice = choose(alone, ensembles)
    determined = Determined(metric, split.describe(), [*alone, *ensembles], choice)
    if held_out:
        determined.held_out = _held_out(run, members, split, out, choice.option.spec, top_k, batch_size, progress,
                                        reuse, metric)
    write_ensemble_file(out / "ensemble.json", EnsembleFile(
        choice.option.spec, {name: model_digest(loaded[name]) for name in choice.option.spec.models},
        tuned={"task": run.name, "docs_sha256": run.digest, **split.describe(),
               "metric": metric, "candidates": [m.name for m in members], "primaries_tried": ranked[:primaries],
               "weight_grid": list(WEIGHT_GRID), "options": len(ensembles) + len(alone),
               "dev": {option.name: round(option.score, 4) for option in (choice.option,)},
               "reasons": choice.reasons, "held_out": determined.held_out}))
    logger.info("chose %s; wrote %s", choice.option.name, out / "ensemble.json")
    return determined


def _held_out(run: TaskRun, members: Sequence[LoadedModel], split: Split, out: Path, chosen: EnsembleSpec, top_k: int,
              batch_size: int, progress: bool, reuse: Sequence[str | os.PathLike[str]], metric: str) -> dict[str, Any]:
    """Every candidate alone, the equal-weight ensemble of all and the chosen one on the held-out slice."""
    loaded = {m.name: m for m in members}
    systems: list[System] = [(m.name, [m], None) for m in members]
    equal = EnsembleSpec(tuple(m.name for m in members), top_k=top_k)
    systems.append((EQUAL, list(members), equal))
    if len(chosen.taking_part) > 1 and chosen != equal:
        systems.append((chosen.label(), [loaded[name] for name in chosen.models], chosen))
    held = _run(run, systems, members, out / "held-out", split.held_out, batch_size, progress, reuse)
    flags = {system.name: _flags(system, metric) for system in held.systems}
    name_of_chosen = chosen.label() if len(chosen.taking_part) > 1 and chosen != equal else (
        EQUAL if chosen == equal else chosen.primary)
    return held_out_rows(flags, [m.name for m in members], EQUAL, name_of_chosen)
