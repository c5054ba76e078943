"""``evaluate``: each member alone and the ensemble on one lm-eval task, compared (resumable).

The Python face of ``unite-logits eval``: load each member once, run every system through
`unite_logits.evaluation.runs` (lm-eval, the `unite` model, a request cache per system),
compare them (`unite_logits.evaluation.summary`) and write the report into ``out``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unite_logits.ensemble.spec import EnsembleFile, EnsembleFileError, EnsembleSpec, read_ensemble_file
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.identity import System
from unite_logits.evaluation.runs import ENSEMBLE, TaskRun, identity_of, read_run, resolve_task, run_systems
from unite_logits.evaluation.split import DEFAULT_DEV_FRACTION, DEFAULT_SEED, split_documents
from unite_logits.evaluation.summary import Comparison, compare
from unite_logits.models.loading import LoadedModel

__all__ = ["evaluate", "load_members", "report", "systems_of"]

logger = logging.getLogger(__name__)


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


def systems_of(members: Sequence[LoadedModel], spec: "EnsembleSpec | None") -> list[System]:
    """Each model taking part alone, then (with two or more taking part) the ensemble of ``spec``."""
    taking_part = set(spec.taking_part) if spec is not None else {m.name for m in members}
    systems: list[System] = [(m.name, [m], None) for m in members if m.name in taking_part]
    if spec is not None and len(spec.taking_part) >= 2:
        systems.append((ENSEMBLE, list(members), spec))
    return systems


def evaluate(
    task: str,
    members: Sequence[str | LoadedModel] = (),
    *,
    out: str | os.PathLike[str] = "eval-results",
    limit: int | None = None,
    weights: Sequence[float] | None = None,
    top_k: int = 10,
    confidence_gate: float | None = None,
    ensemble_file: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    include_path: str | os.PathLike[str] | None = None,
    ensemble: bool = True,
    progress: bool = True,
    loader: Callable[[str], LoadedModel] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> Comparison:
    """Evaluate each member alone and their ensemble (first member the primary) on ``task``.

    ``task`` is a shipped offline task (``unite_piqa`` or just ``piqa``, ...), any lm-eval task
    name, or a task of the ``include_path`` folder of YAMLs. The ensemble is ``members`` with
    ``weights``, ``top_k`` and ``confidence_gate``, or exactly the one ``ensemble_file`` defines
    (``unite-logits select`` writes it): then only the documents held out from its tuning are
    evaluated when ``task`` is the task it was tuned on. Resumes from ``out`` (refusing a folder
    made by another run); writes ``summary.json``, ``summary.md``, ``differences.jsonl`` and
    per-system records there. ``reuse``: earlier results folders whose answers are taken over
    wherever a system's task, documents, models and settings match (a member alone matches
    whatever an ensemble's settings were), so that a ``top_k`` sweep or an added member
    recomputes only what changed.

    Raises:
        EvalUsageError: an unknown task, data that cannot be had, a folder of another run,
            repeated members, bad ensemble settings, an unusable ensemble file.
    """
    from unite_logits.ensemble.ensemble import Ensemble
    from unite_logits.lm_eval import UniteLM

    if limit is not None and limit < 1:
        raise EvalUsageError(f"--limit has to be a positive integer, got {limit}")
    content = _read_file(ensemble_file, members, weights) if ensemble_file is not None else None
    try:
        spec = content.spec if content is not None else EnsembleSpec(
            tuple(str(m) if not isinstance(m, LoadedModel) else m.name for m in members), weights, top_k,
            confidence_gate=confidence_gate)
    except (TypeError, ValueError) as error:
        raise EvalUsageError(f"--weights: {error}" if "weight" in str(error) else str(error)) from None
    run: TaskRun = resolve_task(task, data_dir, include_path)  # data problems before any model is loaded
    samples = _held_out(content, run, limit) if content is not None else None
    given = list(members) if content is None else list(spec.models)
    loaded = load_members(given, loader)
    systems = systems_of(loaded, spec if ensemble else None)
    identity = identity_of(run, systems, num_fewshot=num_fewshot, apply_chat_template=apply_chat_template)

    def maker(models: Sequence[LoadedModel], system_spec: EnsembleSpec | None) -> Callable[[], Any]:
        return lambda: UniteLM.from_ensemble(Ensemble(list(models), system_spec), batch_size=batch_size, progress=progress)

    run_systems(run, [(name, maker(models, system_spec)) for name, models, system_spec in systems], out=Path(out),
                identity=identity, limit=limit, samples=samples, num_fewshot=num_fewshot,
                apply_chat_template=apply_chat_template, progress=progress, reuse=reuse)
    comparison = compare(run)
    comparison.save(Path(out))
    return comparison


def _read_file(path: str | os.PathLike[str], members: Sequence[Any], weights: Sequence[float] | None) -> EnsembleFile:
    if members or weights is not None:
        raise EvalUsageError("--ensemble FILE defines the models and weights; give it without --members/--weights")
    try:
        return read_ensemble_file(path)
    except EnsembleFileError as error:
        raise EvalUsageError(str(error)) from None


def _held_out(content: EnsembleFile, run: TaskRun, limit: int | None) -> dict[str, list[int]] | None:
    """The documents held out from the file's tuning, where it was tuned on this task."""
    tuned = content.tuned or {}
    if tuned.get("task") != run.name:
        logger.info("the ensemble file was tuned on %s, not %s: evaluating every document", tuned.get("task"), run.name)
        return None
    if tuned.get("docs_sha256") != run.digest:
        logger.warning("%s's documents are not the ones the ensemble was tuned on (another data file or prompt); "
                       "the split is redone on these", run.name)
    split = split_documents(run.subtasks, seed=int(tuned.get("seed", DEFAULT_SEED)),
                            dev_fraction=float(tuned.get("dev_fraction", DEFAULT_DEV_FRACTION)),
                            limit=limit if limit is not None else tuned.get("limit"))
    logger.info("evaluating the %d documents held out from tuning", split.sizes[1])
    return split.held_out


def report(out: str | os.PathLike[str]) -> Comparison:
    """Summarise a results folder again from its records (no model is loaded) and rewrite its
    ``summary.*`` and ``differences.jsonl``: for a folder summarised by an older version."""
    comparison = compare(read_run(out))
    comparison.save(Path(out))
    return comparison
