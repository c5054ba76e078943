"""``select``: the "determine" step of Determine-Then-Ensemble, end to end.

Generates freely with each candidate on a dev slice (resumable, through `evaluate`),
measures every candidate and pair, judges them and writes the report. Cost: one free
generation per candidate and item, plus one forward pass per candidate and probe context.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unite_logits.evaluation.runner import as_members, evaluate, load_items
from unite_logits.evaluation.selection.judge import Thresholds, choose_set, judge_pair
from unite_logits.evaluation.selection.measure import (
    probe_contexts,
    profile_candidates,
    top_k_agreement,
    vocabulary_overlap,
)
from unite_logits.evaluation.selection.plot import save_heatmap
from unite_logits.evaluation.selection.render import SelectReport
from unite_logits.evaluation.tasks import get_task

__all__ = ["select"]


def select(
    task: str,
    candidates: Sequence[Any],
    *,
    limit: int | None = 50,
    out_dir: str | Path = "select-results",
    data_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    top_k: int = 10,
    max_new_tokens: int | None = None,
    heatmap: bool = True,
    progress: bool = True,
) -> SelectReport:
    """Profile candidates on a dev slice (free generation, resumable) and judge every pair."""
    members = as_members(candidates)
    task_obj = get_task(task)
    data = load_items(task_obj, data_dir, data_path, limit)
    out = Path(out_dir)
    summary = evaluate(task_obj, members, out_dir=out, mode="free", ensemble=False, items=data,
                       max_new_tokens=max_new_tokens, progress=progress)
    records = [json.loads(line) for line in (out / f"{task_obj.name}.free.jsonl").read_text().splitlines()]
    wanted = {item.id for item in data.items}
    records = [r for r in records if r["id"] in wanted]
    profiles = profile_candidates(records, summary.modes["free"])
    by_name = {p.name: p for p in profiles}
    prompts = {item.id: item.prompt for item in data.items}
    contexts = probe_contexts([prompts[r["id"]] for r in records],
                              [[str(r["outputs"][m.name]) for m in members] for r in records])
    pairs = []
    for a, b in itertools.combinations(members, 2):
        agree_ab, agree_ba = top_k_agreement(a, b, contexts, top_k)
        pairs.append(judge_pair(
            by_name[a.name], by_name[b.name], thresholds,
            vocab_overlap_a_in_b=vocabulary_overlap(a.tokenizer, b.tokenizer),
            vocab_overlap_b_in_a=vocabulary_overlap(b.tokenizer, a.tokenizer),
            top_k_agreement_a_in_b=agree_ab, top_k_agreement_b_in_a=agree_ba,
        ))
    best, reasons = choose_set(profiles, pairs)
    report = SelectReport(task_obj.name, thresholds, profiles, pairs, best, reasons)
    report.save(out)
    if heatmap and len(members) >= 2:
        save_heatmap(report, out)
    return report
