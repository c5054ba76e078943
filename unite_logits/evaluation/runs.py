"""Each member alone and the ensemble on one lm-eval task, through the one `unite` model, resumably.

Every system runs the same lm-eval task (a shipped offline task, or any lm-eval task whose
data can be had) on the same documents through `unite_logits.lm_eval.UniteLM`, so members and
ensemble are measured by one path. Resuming rests on lm-eval's request cache
(``use_cache``): the model hands each finished batch to the cache as it goes, so a run that
is killed loses only the batch in flight, and a rerun answers every cached request from the
cache and computes only the rest. The results folder records the run's identity (task,
documents, models and their weights digests, settings; `unite_logits.evaluation.identity`) and
refuses to resume another run. ``reuse`` folders lend their request caches to the systems whose
answers they computed under the same identity (`answers_identity`): a new ``top_k``, new weights
or a third member recomputes only the systems that changed.

Layout of ``out``: ``meta.json`` (the identity), ``cache/<system>_rank0.db`` (lm-eval's request
caches), ``records/<system>.jsonl.gz`` (per-sample records from lm-eval's sample logs,
compressed; `unite_logits.evaluation.records`),
``summary.json`` / ``summary.md`` and ``differences.jsonl`` (`unite_logits.evaluation.summary`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unite_logits.evaluation.data import find_data_dir, offline_by_default, unavailable
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.identity import System, answers_identity, run_identity
from unite_logits.evaluation.records import RECORDS_SUFFIX, check_meta, read_records, records_path, write_records

__all__ = ["ENSEMBLE", "SystemRun", "TaskRun", "read_run", "resolve_task", "reuse_answers", "run_systems", "slug"]

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


@dataclass
class SystemRun:
    """One system's results: lm-eval's task-level metrics and one record per sample."""

    name: str
    metrics: dict[str, float]
    records: list[dict[str, Any]]


@dataclass
class TaskRun:
    """A task's documents, resolved once for every system."""

    name: str
    manager: Any  # lm_eval.tasks.TaskManager
    subtasks: dict[str, int]  # name -> number of documents
    digest: str
    metrics: list[str]
    generative: bool
    systems: list[SystemRun] = field(default_factory=list)


def slug(name: str) -> str:
    """A file name for a system name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "system"


def resolve_task(task: str, data_dir: str | os.PathLike[str] | None = None,
                 include_path: str | os.PathLike[str] | None = None) -> TaskRun:
    """The lm-eval task ``task`` (a task of the ``include_path`` folder of task YAMLs, a shipped
    ``unite_*`` name, its short form such as ``piqa``, or any lm-eval task), its documents'
    digest, subtasks and metrics.

    Raises:
        EvalUsageError: an unknown task, a missing ``include_path``, or data that cannot be had.
    """
    offline_by_default()
    from lm_eval.tasks import TaskManager

    import unite_logits.lm_eval as integration

    data = find_data_dir(data_dir)
    shipped = integration.task_folder(data)
    local = TaskManager(include_path=str(shipped), include_defaults=False)
    name = task if task in local.all_tasks else f"unite_{task}" if f"unite_{task}" in local.all_tasks else None
    manager = local
    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise EvalUsageError(f"--include-path {include_path}: not a folder (give a folder of lm-eval task YAMLs)")
        if task in TaskManager(include_path=str(folder), include_defaults=False).all_tasks:
            name, manager = task, TaskManager(include_path=[str(folder), str(shipped)])  # its YAMLs may include lm-eval's
    if name is None:  # any other lm-eval task (its data must be reachable or cached)
        manager = TaskManager(include_path=str(shipped))
        if task not in manager.all_tasks:
            raise EvalUsageError(f"unknown task {task!r}: neither a shipped task ({', '.join(integration.TASKS)}) "
                                 "nor an lm-eval task name")
        name = task
    elif data is None:
        logger.info("%s: no data folder given, so lm-eval's own task over its standard dataset", name)
    try:
        loaded = manager.load([name])["tasks"]
    except EvalUsageError:  # already one line (a paper task without its data folder)
        raise
    except Exception as error:  # noqa: BLE001 - lm-eval and datasets raise many kinds; one line names the task
        local_file = integration.local_data_file(name) if manager is local else None
        raise EvalUsageError(unavailable(f"task {name!r}", error, data_folder=data if manager is local else None,
                                         local_file=local_file)) from None
    digest = hashlib.sha256()
    subtasks, metrics, generative = {}, [], False
    for subtask, built in sorted(loaded.items()):
        docs = list(built.eval_docs)
        subtasks[subtask] = len(docs)
        digest.update(subtask.encode() + b"\0")
        for doc in docs:
            digest.update(json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
        for metric in built.config.metric_list or []:
            if metric["metric"] not in metrics and isinstance(metric["metric"], str):
                metrics.append(metric["metric"])
        generative = generative or built.config.output_type == "generate_until"
    return TaskRun(name, manager, subtasks, digest.hexdigest(), metrics, generative)


def _cache_prefix(out: Path, name: str) -> Path:
    """The ``use_cache`` prefix of a system's request cache (lm-eval adds ``_rank0.db``)."""
    return out / "cache" / slug(name)


def _cache_file(out: Path, name: str) -> Path:
    """The file lm-eval writes for that prefix."""
    prefix = _cache_prefix(out, name)
    return prefix.with_name(prefix.name + "_rank0.db")


def _stored_identity(folder: Path, role: str) -> dict[str, Any]:
    """An earlier results folder's ``meta.json``, checked to be a run's identity.

    ``role`` names the folder in the error (``--reuse DIR``, ``report DIR``).
    """
    meta = folder / "meta.json"
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalUsageError(f"{role} {folder}: it has no meta.json, so it is not an eval results folder "
                             "(nothing says which run its answers belong to)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        stored = None
    if not isinstance(stored, dict) or not isinstance(stored.get("systems"), list):
        raise EvalUsageError(f"{role} {folder}: its meta.json is damaged (not a run's identity)")
    return stored


def reuse_answers(out: Path, identity: dict[str, Any], sources: Sequence[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Copy into ``out`` each earlier folder's request cache of a system with the same answers.

    ``sources``: (folder, its stored identity) pairs, as `_stored_identity` reads them. A system
    is taken from the first folder that lists a system with the same `answers_identity` (its
    name may differ) and has a cache; a system that already has a cache in ``out`` keeps it.
    Returns the names of the systems seeded. Cost: one file copy each.
    """
    def key(ident: dict[str, Any], system: dict[str, Any]) -> str:
        return json.dumps(answers_identity(ident, system), sort_keys=True)

    seeded: list[str] = []
    for folder, stored in sources:
        theirs = {key(stored, system): system["name"] for system in stored["systems"]}
        taken = 0
        for system in identity["systems"]:
            source_name = theirs.get(key(identity, system))
            target = _cache_file(out, system["name"])
            if source_name is None or target.exists() or not _cache_file(folder, source_name).exists():
                continue
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(_cache_file(folder, source_name), partial)
            os.replace(partial, target)
            seeded.append(system["name"])
            taken += 1
            logger.info("%s: answers taken from %s (%s)", system["name"], folder, source_name)
        if not taken:
            logger.warning("--reuse %s: none of its systems has this run's task, documents, models and settings "
                           "(or they are already here); nothing taken from it", folder)
    return seeded


def _record(subtask: str, sample: dict[str, Any], metrics: Sequence[str], context: bool = True) -> dict[str, Any]:
    """One sample of lm-eval's log as a record: its document, metric values and output."""
    responses = sample.get("filtered_resps", sample.get("resps"))
    output: Any
    if responses and isinstance(responses[0], str):
        output = responses[0]
    else:
        output = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in responses or []]
    return {"task": subtask, "doc_id": int(sample["doc_id"]), "doc_hash": sample.get("doc_hash"),
            "target": str(sample.get("target")), "context": _context(sample) if context else "",
            "metrics": {m: float(sample[m]) for m in metrics if isinstance(sample.get(m), (int, float))},
            "output": output}


def _context(sample: dict[str, Any]) -> str:
    arguments = sample.get("arguments")
    first = arguments[0] if isinstance(arguments, (list, tuple)) and arguments else None
    return str(first[0]) if isinstance(first, (list, tuple)) and first else ""


def run_systems(
    run: TaskRun,
    systems: Sequence[tuple[str, Callable[[], Any]]],
    *,
    out: Path,
    identity: dict[str, Any],
    limit: int | None = None,
    samples: dict[str, list[int]] | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    progress: bool = True,
    reuse: Sequence[str | os.PathLike[str]] = (),
    contexts: bool = True,
) -> TaskRun:
    """Run every system (name, maker of its `UniteLM`) on ``run``'s task (the first ``limit``
    documents, or the document indices ``samples`` gives per subtask: a slice of a
    `unite_logits.evaluation.split.Split`); resumes from ``out``, and takes answers from the
    ``reuse`` folders where they match (`reuse_answers`). ``contexts=False`` leaves each record's
    prompt text out (many systems on the same documents: a search keeps it once, elsewhere).

    Raises:
        EvalUsageError: ``out`` holds another run (or records whose identity file is gone), or a
            ``reuse`` folder is not a results folder.
    """
    import lm_eval

    out = Path(out)
    meta = out / "meta.json"
    if not meta.exists() and any((out / folder).exists() and any((out / folder).iterdir())
                                 for folder in ("cache", "records")):
        raise EvalUsageError(f"{out} holds results but its meta.json is gone, so nothing says which task, data "
                             "and models they belong to; delete them or use another --out")
    sources = [(Path(folder), _stored_identity(Path(folder), "--reuse")) for folder in reuse]  # refused before any write
    check_meta(meta, identity)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    reuse_answers(out, identity, sources)
    run.systems = []
    for index, (name, make) in enumerate(systems, 1):
        where = (f", {sum(map(len, samples.values()))} documents" if samples else f", first {limit} documents" if limit
                 else "")
        logger.info("%s on %s (%d of %d)%s", name, run.name, index, len(systems), where)
        results = lm_eval.simple_evaluate(
            model=make(), tasks=[run.name], task_manager=run.manager, limit=None if samples else limit,
            samples=samples, num_fewshot=num_fewshot,
            log_samples=True, use_cache=str(_cache_prefix(out, name)), bootstrap_iters=0,
            apply_chat_template=apply_chat_template, verbosity="ERROR" if not progress else "WARNING",
        )
        assert results is not None
        records = [_record(subtask, sample, run.metrics, contexts) for subtask in sorted(results["samples"])
                   for sample in results["samples"][subtask]]
        write_records(out / "records" / f"{slug(name)}{RECORDS_SUFFIX}", records)
        run.systems.append(SystemRun(name, _means(records, run.metrics), records))
    return run


def read_run(out: str | os.PathLike[str]) -> TaskRun:
    """A results folder's run as its records hold it (no model, no lm-eval task is loaded):
    the systems of its ``meta.json`` that have records, in that order.

    Raises:
        EvalUsageError: no ``meta.json`` (not a results folder), a damaged one, or no records yet.
    """
    out = Path(out)
    meta = _stored_identity(out, "report")
    systems = []
    for system in meta["systems"]:
        path = records_path(out / "records", slug(system["name"]))
        if path.exists():
            systems.append(SystemRun(system["name"], {}, read_records(path)))
    if not systems:
        raise EvalUsageError(f"{out} has no records yet: run `unite-logits eval` there first")
    metrics = list(dict.fromkeys(m for s in systems for r in s.records for m in r["metrics"]))
    for system in systems:
        system.metrics = _means(system.records, metrics)
    generative = any(isinstance(r["output"], str) for s in systems for r in s.records)
    return TaskRun(meta["task"], None, {}, meta["docs_sha256"], metrics, generative, systems)


def _means(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    """Each metric over every sample (over all subtasks of a group: weighted by size)."""
    means = {}
    for metric in metrics:
        values = [r["metrics"][metric] for r in records if metric in r["metrics"]]
        if values:
            means[metric] = sum(values) / len(values)
    return means


def identity_of(run: TaskRun, systems: Sequence[System], *, num_fewshot: int | None,
                apply_chat_template: bool, **extra: Any) -> dict[str, Any]:
    """What a results folder of this run records and checks (see `run_identity`)."""
    return run_identity(task=run.name, docs_sha256=run.digest, systems=systems,
                        settings={"num_fewshot": num_fewshot, "apply_chat_template": apply_chat_template, **extra})
