"""``select``: the "determine" step of Determine-Then-Ensemble, end to end.

Runs each candidate alone on a dev slice of an lm-eval task (resumable, through the same
`unite` model and request caches as ``eval``), measures every candidate and pair, judges them
and writes the report. Cost: one evaluation per candidate, plus one forward pass per
candidate and probe context for the top-k agreement.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unite_logits.evaluation.run_task import load_members, systems_of
from unite_logits.evaluation.runs import identity_of, resolve_task, run_systems
from unite_logits.evaluation.selection.judge import Thresholds, choose_set, judge_pair
from unite_logits.evaluation.selection.measure import (
    probe_contexts,
    profile_candidates,
    top_k_agreement,
    vocabulary_overlap,
)
from unite_logits.evaluation.selection.plot import save_heatmap
from unite_logits.evaluation.selection.render import SelectReport
from unite_logits.evaluation.summary import compare
from unite_logits.models.loading import LoadedModel

__all__ = ["select"]


def select(
    task: str,
    candidates: Sequence[str | LoadedModel],
    *,
    limit: int | None = 50,
    out: str | os.PathLike[str] = "select-results",
    data_dir: str | os.PathLike[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    top_k: int = 10,
    batch_size: int = 8,
    heatmap: bool = True,
    progress: bool = True,
    loader: Callable[[str], LoadedModel] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> SelectReport:
    """Profile candidates on the first ``limit`` documents of ``task`` and judge every pair;
    each candidate's answers are taken from a ``reuse`` folder (an earlier ``eval`` or
    ``select``) where they were computed on the same task and documents."""
    run = resolve_task(task, data_dir)  # before lm-eval's imports: it turns the hub off first
    from unite_logits.ensemble.ensemble import Ensemble
    from unite_logits.lm_eval import UniteLM

    members = load_members(candidates, loader)
    systems = systems_of(members, ensemble=False)
    identity = identity_of(run, systems, weights=None, top_k=top_k, num_fewshot=None, apply_chat_template=False)

    def maker(models: list[LoadedModel]) -> Callable[[], Any]:
        return lambda: UniteLM.from_ensemble(Ensemble(models, top_k=top_k), batch_size=batch_size, progress=progress)

    run_systems(run, [(name, maker(models)) for name, models in systems], out=Path(out), identity=identity,
                limit=limit, progress=progress, reuse=reuse)
    comparison = compare(run)
    profiles = profile_candidates(run.systems, comparison)
    by_name = {p.name: p for p in profiles}
    first = run.systems[0].records
    contexts = probe_contexts([r["context"] for r in first],
                              [[str(s.records[i]["output"]) if isinstance(s.records[i]["output"], str) else ""
                                for s in run.systems] for i in range(len(first))])
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
    report = SelectReport(run.name, thresholds, profiles, pairs, best, reasons)
    report.save(Path(out))
    if heatmap and len(members) >= 2:
        save_heatmap(report, Path(out))
    return report
