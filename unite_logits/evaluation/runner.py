"""Evaluate each member alone and the ensemble on the same items, resumably.

Members are `unite_logits.models.loading.LoadedModel`s, the same type `load_model` returns
and `unite_logits.Ensemble` takes. The ensemble is injected as
``make_processor(prompt) -> LogitsProcessor | None`` (tests inject stand-ins); by default
it is built by `unite_logits.Ensemble.processor`, the one factory that also serves
``generate`` and the CLI, so the evaluated ensemble has the same weights and EOS ids. Both
modes share that processor: free generation passes it to ``generate``, constrained
choice calls it once on the primary's prompt logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import LogitsProcessor

from unite_logits.evaluation.choice import choose
from unite_logits.evaluation.data import resolve_data_dir
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.generation import generate
from unite_logits.evaluation.identity import data_digest, run_identity
from unite_logits.evaluation.records import RecordLog, check_meta
from unite_logits.evaluation.summary import ENSEMBLE, Summary, summarize
from unite_logits.evaluation.tasks import MODES, Item, Skipped, Task, TaskData, get_task
from unite_logits.models.loading import LoadedModel

__all__ = [
    "EvalMember",
    "ProcessorFactory",
    "MODES",
    "as_members",
    "unite_processor_factory",
    "evaluate",
    "evaluate_item",
    "load_items",
]

ProcessorFactory = Callable[[str], LogitsProcessor | None]


EvalMember = LoadedModel  # the evaluation's member is a loaded model: one type, not two


def as_members(members: Iterable[Any]) -> list[LoadedModel]:
    """Accept `LoadedModel`s or ``(model, tokenizer, name)`` tuples; names must be unique."""
    out = [m if isinstance(m, LoadedModel) else LoadedModel(*m) for m in members]
    if not out:
        raise EvalUsageError("at least one member is needed")
    names = [m.name for m in out]
    if len(set(names)) != len(names) or ENSEMBLE in names:
        raise EvalUsageError(f"member names must be unique and not {ENSEMBLE!r}: {names}")
    return out


def unite_processor_factory(
    members: Sequence[LoadedModel], top_k: int = 10, weights: Sequence[float] | None = None
) -> ProcessorFactory:
    """A fresh UniTE processor per item, built as ``generate`` builds it (first member primary)."""
    from unite_logits.ensemble.ensemble import Ensemble  # the core; imported only when used

    ensemble = Ensemble(members, weights=weights, top_k=top_k)
    return lambda prompt: ensemble.processor()


def _modes(mode: str, task: Task) -> list[str]:
    if mode not in MODES:
        raise EvalUsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    modes = ["free", "constrained"] if mode == "both" else [mode]
    if "constrained" in modes and not task.multiple_choice:
        raise EvalUsageError(f"constrained mode needs a multiple-choice task; {task.name} is not")
    return modes


def _answer(
    task: Task, item: Item, mode: str, member: EvalMember, processor: LogitsProcessor | None,
    max_new_tokens: int,
) -> dict[str, Any]:
    if mode == "constrained":
        choice = choose(member.model, member.tokenizer, item.prompt, item.letters, processor)
        return {"answer": choice.letter, "tokens": 0, "seconds": choice.seconds,
                "output": {k: round(v, 4) if math.isfinite(v) else None  # JSON has no -inf
                           for k, v in choice.scores.items()}}
    gen = generate(member, item.prompt, max_new_tokens=max_new_tokens, stop_strings=task.stop_strings,
                   processor=processor)
    return {"answer": task.extract(gen.text, item), "tokens": gen.completion_tokens,
            "seconds": gen.seconds, "output": gen.text}


def evaluate_item(
    task: Task,
    item: Item,
    mode: str,
    members: Sequence[EvalMember],
    make_processor: ProcessorFactory | None,
    max_new_tokens: int,
) -> dict[str, Any]:
    """One record: every member alone, then the ensemble through the primary."""
    runs: list[tuple[str, EvalMember, LogitsProcessor | None]] = [(m.name, m, None) for m in members]
    if make_processor is not None:
        runs.append((ENSEMBLE, members[0], make_processor(item.prompt)))
    record: dict[str, Any] = {"id": item.id, "mode": mode, "gold": item.gold,
                              "answers": {}, "correct": {}, "tokens": {}, "seconds": {}, "outputs": {}}
    for name, member, processor in runs:
        try:
            result = _answer(task, item, mode, member, processor, max_new_tokens)
        finally:
            close = getattr(processor, "close", None)
            if close is not None:
                close()  # the ensemble's worker threads end with the item
        record["answers"][name] = result["answer"]
        record["correct"][name] = task.is_correct(result["answer"], item)
        record["tokens"][name] = result["tokens"]
        record["seconds"][name] = round(result["seconds"], 4)
        record["outputs"][name] = result["output"]
    return record


def _refuse_duplicate_ids(data: TaskData, source: str) -> None:
    seen: dict[str, int] = {}
    entries: list[Item | Skipped] = [*data.items, *data.skipped]
    for entry in sorted(entries, key=lambda e: e.row):
        if entry.id in seen:
            raise EvalUsageError(
                f"{source}: item id {entry.id!r} appears more than once (records {seen[entry.id] + 1} and "
                f"{entry.row + 1}); ids have to be unique"
            )
        seen[entry.id] = entry.row


def load_items(
    task: Task, data_dir: str | Path | None = None, data_path: str | Path | None = None,
    limit: int | None = None,
) -> TaskData:
    """The task's items (first ``limit`` of its fixed order) and the skipped rows among them.

    Refuses data without a scorable item and data whose ids repeat (results are keyed by
    id). ``digest`` covers the whole data set, so ``--limit`` can grow on resume.
    """
    if limit is not None and limit < 1:
        raise EvalUsageError(f"--limit must be positive, got {limit}")
    if data_path is not None and data_dir is None:
        try:  # a task file given alone: side files (GSM demos) still come from the data dir
            root = resolve_data_dir()
        except EvalUsageError:
            root = Path(data_path).parent
    else:
        root = resolve_data_dir(data_dir)
    data = task.load(root, Path(data_path) if data_path is not None else None)
    source = str(data_path) if data_path is not None else f"{task.name} data in {root}"
    _refuse_duplicate_ids(data, source)
    if not data.items:
        raise EvalUsageError(f"{source}: no scorable items ({len(data.skipped)} rows skipped as unscorable)")
    digest = data_digest(data)
    if not limit or limit >= len(data.items):
        return TaskData(data.items, data.skipped, digest)
    items = data.items[:limit]
    last_row = items[-1].row
    return TaskData(items, [s for s in data.skipped if s.row < last_row], digest)


def evaluate(
    task: str | Task,
    members: Sequence[Any],
    *,
    limit: int | None = None,
    out_dir: str | Path = "eval-results",
    mode: str = "free",
    data_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    make_processor: ProcessorFactory | None = None,
    ensemble: bool = True,
    weights: Sequence[float] | None = None,
    top_k: int = 10,
    max_new_tokens: int | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    items: TaskData | None = None,
) -> Summary:
    """Evaluate members alone and (if ``ensemble``) their ensemble; resumes from ``out_dir``.

    Records go to ``<out_dir>/<task>.<mode>.jsonl`` one line per item as it finishes;
    items already there are not redone, provided the folder holds the same run (task, data,
    members and their weights digests, ``weights``, ``top_k``, token budget; see
    `unite_logits.evaluation.identity`); otherwise one-line `EvalUsageError`. ``weights``
    (one per member, primary first) weight the ensemble as in ``generate``.
    ``on_record`` is called after each new record.
    """
    task = get_task(task)
    members = as_members(members)
    modes = _modes(mode, task)
    if ensemble and make_processor is None and len(members) >= 2:
        make_processor = unite_processor_factory(members, top_k, weights)
    if not ensemble:
        make_processor = None
    data = items if items is not None else load_items(task, data_dir, data_path, limit)
    max_new = max_new_tokens or task.max_new_tokens
    out = Path(out_dir)
    summary = Summary(task.name)
    for m in modes:
        log = RecordLog(out / f"{task.name}.{m}.jsonl")
        meta = out / f"{task.name}.{m}.meta.json"
        if not meta.exists() and log.path.exists() and log.path.stat().st_size:
            raise EvalUsageError(
                f"{log.path} holds records but {meta.name} is gone, so nothing says which data, models and "
                "settings they belong to; delete the records or use another --out"
            )
        check_meta(meta, run_identity(
            task=task.name, mode=m, data=data, members=members, weights=weights,
            ensemble=make_processor is not None, top_k=top_k, max_new_tokens=max_new,
        ))
        done = log.load()
        todo = [item for item in data.items if item.id not in done]
        bar = tqdm(total=len(data.items), initial=len(data.items) - len(todo),
                   desc=f"{task.name} {m}", unit="item", disable=not progress)
        with bar:
            for item in todo:
                record = evaluate_item(task, item, m, members, make_processor, max_new)
                log.append(record)
                done[item.id] = record
                bar.update(1)
                if on_record is not None:
                    on_record(record)
        records = [done[item.id] for item in data.items]
        summary.modes[m] = summarize(task.name, m, records, [x.name for x in members], len(data.skipped))
    summary.save(out)
    return summary
