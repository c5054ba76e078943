"""``evaluate``: each member alone and the ensemble on one lm-eval task, compared (resumable).

The Python face of ``unite-logits eval``: load each member once, run every system through
`unite_logits.evaluation.runs` (lm-eval, the `unite` model, a request cache per system),
compare them (`unite_logits.evaluation.summary`) and write the report into ``out``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.runs import ENSEMBLE, TaskRun, identity_of, read_run, resolve_task, run_systems
from unite_logits.evaluation.summary import Comparison, compare
from unite_logits.models.loading import LoadedModel

__all__ = ["evaluate", "load_members", "report", "Systems"]

Systems = list[tuple[str, list[LoadedModel]]]


def load_members(members: Sequence[str | LoadedModel], loader: Callable[[str], LoadedModel] | None = None,
                 ) -> list[LoadedModel]:
    """Each member loaded once (specs through ``loader``, default `load_model`); names unique."""
    if not members:
        raise EvalUsageError("at least one member is needed")
    from unite_logits.models.loading import load_model

    load = loader or load_model
    loaded = [m if isinstance(m, LoadedModel) else load(m) for m in members]
    names = [m.name for m in loaded]
    if len(set(names)) != len(names) or ENSEMBLE in names:
        raise EvalUsageError(f"each member may be given once, and none may be called {ENSEMBLE!r}: {names}")
    return loaded


def systems_of(members: Sequence[LoadedModel], ensemble: bool) -> Systems:
    """Each member alone, then (with two or more, if ``ensemble``) all of them together."""
    systems: Systems = [(m.name, [m]) for m in members]
    if ensemble and len(members) >= 2:
        systems.append((ENSEMBLE, list(members)))
    return systems


def evaluate(
    task: str,
    members: Sequence[str | LoadedModel],
    *,
    out: str | os.PathLike[str] = "eval-results",
    limit: int | None = None,
    weights: Sequence[float] | None = None,
    top_k: int = 10,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    ensemble: bool = True,
    progress: bool = True,
    loader: Callable[[str], LoadedModel] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> Comparison:
    """Evaluate each member alone and their ensemble (first member the primary) on ``task``.

    ``task`` is a shipped task (``unite_piqa`` or just ``piqa``, ...: its local files in the data
    folder ``data_dir``, default ``$UNITE_LOGITS_DATA``; with no folder, lm-eval's own task over
    its standard dataset) or any lm-eval task name. The Hugging Face hub is not contacted unless
    ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` are set to 0. Resumes from ``out`` (refusing a folder made by another run); writes
    ``summary.json``, ``summary.md``, ``differences.jsonl`` and per-system records there.
    ``reuse``: earlier results folders whose answers are taken over wherever a system's task,
    documents, models and settings match (a member alone matches whatever the ensemble's
    ``top_k`` and weights were), so that a ``top_k`` sweep or an added member recomputes only
    what changed.

    Raises:
        EvalUsageError: an unknown task, data that cannot be had, a folder of another run,
            repeated members.
    """
    from unite_logits.ensemble.ensemble import Ensemble, check_weights

    if limit is not None and limit < 1:
        raise EvalUsageError(f"--limit has to be a positive integer, got {limit}")
    run: TaskRun = resolve_task(task, data_dir)  # data problems before any model is loaded (and the hub off first)
    from unite_logits.lm_eval import UniteLM
    loaded = load_members(members, loader)
    try:
        check_weights(weights, len(loaded))
    except (TypeError, ValueError) as error:
        raise EvalUsageError(f"--weights: {error}") from None
    systems = systems_of(loaded, ensemble)
    identity = identity_of(run, systems, weights=weights, top_k=top_k, num_fewshot=num_fewshot,
                           apply_chat_template=apply_chat_template)

    def maker(name: str, models: list[LoadedModel]) -> Callable[[], Any]:
        chosen = weights if name == ENSEMBLE else None
        return lambda: UniteLM.from_ensemble(Ensemble(models, weights=chosen, top_k=top_k), batch_size=batch_size,
                                         progress=progress)

    run_systems(run, [(name, maker(name, models)) for name, models in systems], out=Path(out), identity=identity,
                limit=limit, num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, progress=progress,
                reuse=reuse)
    comparison = compare(run)
    comparison.save(Path(out))
    return comparison


def report(out: str | os.PathLike[str]) -> Comparison:
    """Summarise a results folder again from its records (no model is loaded) and rewrite its
    ``summary.*`` and ``differences.jsonl``: for a folder summarised by an older version."""
    comparison = compare(read_run(out))
    comparison.save(Path(out))
    return comparison
