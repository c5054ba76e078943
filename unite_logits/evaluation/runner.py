"""Evaluate each member alone and the ensemble on the same items, resumably.

The ensemble is injected as ``make_processor(prompt) -> LogitsProcessor | None`` so the
harness does not depend on how the core builds it (tests inject stand-ins); by default
it builds a fresh ``UniTEProcessor`` per item with the first member as primary. Both
modes share that processor: free generation passes it to ``generate``, constrained
choice calls it once on the primary's prompt logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import LogitsProcessor

from unite_logits.evaluation.choice import choose
from unite_logits.evaluation.data import resolve_data_dir
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.generation import generate
from unite_logits.evaluation.records import RecordLog, check_meta
from unite_logits.evaluation.summary import ENSEMBLE, Summary, summarize
from unite_logits.evaluation.tasks import Item, Task, TaskData, get_task

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
MODES = ("free", "constrained", "both")


@dataclass(frozen=True)
class EvalMember:
    """A model with its tokenizer and the name used in records and reports."""

    model: Any
    tokenizer: Any
    name: str


def as_members(members: Iterable[Any]) -> list[EvalMember]:
    """Accept ``(model, tokenizer, name)`` tuples or ``EvalMember``s; names must be unique."""
    out = [m if isinstance(m, EvalMember) else EvalMember(*m) for m in members]
    if not out:
        raise EvalUsageError("at least one member is needed")
    names = [m.name for m in out]
    if len(set(names)) != len(names) or ENSEMBLE in names:
        raise EvalUsageError(f"member names must be unique and not {ENSEMBLE!r}: {names}")
    return out


def unite_processor_factory(members: Sequence[EvalMember], top_k: int = 10) -> ProcessorFactory:
    """A fresh UniTE processor per item: first member primary, the others auxiliaries."""
    from unite_logits import Member, UniTEProcessor  # the core; imported only when used

    primary, auxiliaries = members[0], members[1:]

    def make(prompt: str) -> LogitsProcessor:
        return UniTEProcessor(
            primary_tokenizer=primary.tokenizer,
            members=[Member(m.model, m.tokenizer, weight=1.0, name=m.name) for m in auxiliaries],
            top_k=top_k,
        )

    return make


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
    gen = generate(member.model, member.tokenizer, item.prompt, max_new_tokens=max_new_tokens,
                   stop_strings=task.stop_strings, processor=processor)
    return {"answer": task.extract(gen.text, item), "tokens": gen.tokens,
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
        result = _answer(task, item, mode, member, processor, max_new_tokens)
        record["answers"][name] = result["answer"]
        record["correct"][name] = task.is_correct(result["answer"], item)
        record["tokens"][name] = result["tokens"]
        record["seconds"][name] = round(result["seconds"], 4)
        record["outputs"][name] = result["output"]
    return record


def load_items(
    task: Task, data_dir: str | Path | None = None, data_path: str | Path | None = None,
    limit: int | None = None,
) -> TaskData:
    """The task's items (first ``limit`` of its fixed order) and its skipped rows."""
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
    return TaskData(data.items[:limit] if limit else data.items, data.skipped)


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
    top_k: int = 10,
    max_new_tokens: int | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    items: TaskData | None = None,
) -> Summary:
    """Evaluate members alone and (if ``ensemble``) their ensemble; resumes from ``out_dir``.

    Records go to ``<out_dir>/<task>.<mode>.jsonl`` one line per item as it finishes;
    items already there are not redone. ``on_record`` is called after each new record.
    """
    task = get_task(task)
    members = as_members(members)
    modes = _modes(mode, task)
    if ensemble and make_processor is None and len(members) >= 2:
        make_processor = unite_processor_factory(members, top_k)
    if not ensemble:
        make_processor = None
    data = items if items is not None else load_items(task, data_dir, data_path, limit)
    max_new = max_new_tokens or task.max_new_tokens
    out = Path(out_dir)
    summary = Summary(task.name)
    for m in modes:
        log = RecordLog(out / f"{task.name}.{m}.jsonl")
        check_meta(out / f"{task.name}.{m}.meta.json", {
            "task": task.name, "mode": m, "members": [x.name for x in members],
            "ensemble": make_processor is not None, "top_k": top_k, "max_new_tokens": max_new,
        })
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
