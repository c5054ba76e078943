"""The UniTE paper's protocols: loading its data files, its prompts, stop strings, answer reading.

A ``Task`` turns a data file into ``Item``s whose prompt is final, and scores a response.
These are what lm-eval lacks (the paper's own prompts and answer reading); the shipped
lm-eval tasks ``unite_paper_*`` run them (`unite_logits/lm_eval/tasks/unite_tasks.py`),
and every other benchmark is lm-eval's own task.

Items the data cannot score (ARC rows whose options are all blank, or whose gold option
is blank) are returned as ``Skipped`` with a reason instead of being counted wrong.
"""

from __future__ import annotations

import itertools
import string
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unite_logits.evaluation.paper import extract, prompts
from unite_logits.evaluation.data import read_jsonl
from unite_logits.evaluation.errors import EvalUsageError

__all__ = [
    "Answer",
    "Item",
    "Skipped",
    "TaskData",
    "Task",
    "GSM8KTask",
    "ChoiceTask",
    "ARCTask",
    "PIQATask",
    "MMLUTask",
    "TASKS",
    "get_task",
    "parse_options",
    "question_of",
]

Answer = float | str | None
_LETTERS = string.ascii_uppercase[:8]


@dataclass(frozen=True)
class Item:
    """One scorable question with its final prompt; ``letters`` only for multiple choice."""

    id: str
    prompt: str
    gold: Any
    letters: tuple[str, ...] = ()
    row: int = 0  # position in the task's fixed order (items and skipped rows together)


@dataclass(frozen=True)
class Skipped:
    """A data row that cannot be scored, and why."""

    id: str
    reason: str
    row: int = 0


@dataclass
class TaskData:
    """Items to evaluate and unscorable rows; ``digest`` identifies the whole data set
    (every id, prompt and gold answer), so a results folder can refuse other data."""

    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)
    digest: str = ""


def question_of(row: Mapping[str, Any], where: str) -> str:
    """The row's question: non-blank text, else an error naming the row."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        found = "missing" if question is None else f"{type(question).__name__} {question!r}"[:60]
        raise EvalUsageError(f"{where}: 'question' has to be non-empty text ({found})")
    return question


class Task(ABC):
    """A benchmark: where its data is, how to prompt, when to stop, how to score."""

    name: ClassVar[str]
    default_file: ClassVar[str]
    stop_strings: ClassVar[tuple[str, ...]]
    max_new_tokens: ClassVar[int]
    multiple_choice: ClassVar[bool] = False

    @abstractmethod
    def load(self, data_dir: Path, path: Path | None = None) -> TaskData:
        """Items in a fixed order (a prefix of it is what ``--limit`` evaluates)."""

    @abstractmethod
    def extract(self, text: str, item: Item) -> Answer:
        """The answer a response commits to, or None."""

    @abstractmethod
    def is_correct(self, answer: Answer, item: Item) -> bool:
        """Whether an extracted answer matches the gold answer."""

    def _path(self, data_dir: Path, path: Path | None) -> Path:
        return Path(path) if path is not None else Path(data_dir) / self.default_file


class GSM8KTask(Task):
    """4-shot chain of thought; numeric answer compared by value."""

    name = "gsm8k"
    default_file = "GSM/test.cleand.jsonl"
    prompt_file = "GSM/gsm_prompt.txt"
    stop_strings = prompts.GSM_STOP
    max_new_tokens = 256

    def load(self, data_dir: Path, path: Path | None = None) -> TaskData:
        demo_path = Path(data_dir) / self.prompt_file
        if not demo_path.is_file():
            raise EvalUsageError(f"GSM8K demonstrations not found: {demo_path}")
        demos = demo_path.read_text(encoding="utf-8")
        items, skipped = [], []
        file = self._path(data_dir, path)
        for i, row in enumerate(read_jsonl(file)):
            item_id = str(row.get("id", f"gsm8k/{i}"))
            gold = extract.extract_number_answer(str(row.get("answer", "")))
            if gold is None:
                skipped.append(Skipped(item_id, "no number in the gold answer", i))
                continue
            question = question_of(row, f"{file} record {i + 1}")
            items.append(Item(item_id, prompts.gsm_prompt(question, demos), gold, row=i))
        return TaskData(items, skipped)

    def extract(self, text: str, item: Item) -> Answer:
        return extract.extract_number_answer(text)

    def is_correct(self, answer: Answer, item: Item) -> bool:
        return isinstance(answer, float) and extract.numbers_equal(answer, item.gold)


def parse_options(row: Mapping[str, Any]) -> tuple[dict[str, str], str | None, str | None]:
    """(non-blank options by letter, gold letter, reason to skip) for a lettered row.

    Numeric gold labels ("1".."4") are mapped to letters by position; a row is skipped
    when it has no non-blank option or its gold option is blank or missing.
    """
    options = {
        letter: str(row[letter]).strip()
        for letter in _LETTERS
        if row.get(letter) is not None and str(row[letter]).strip()
    }
    gold = str(row.get("answer", "")).strip().upper()
    if gold.isdigit() and 1 <= int(gold) <= len(_LETTERS):
        gold = _LETTERS[int(gold) - 1]
    if not options:
        return options, None, "no options given (blank option texts)"
    if gold not in options:
        return options, None, f"gold option {gold or '?'} is blank or missing"
    return options, gold, None


class ChoiceTask(Task):
    """Lettered multiple choice (ARC/PIQA layout); scored by exact letter."""

    multiple_choice = True
    stop_strings = prompts.CHOICE_STOP
    max_new_tokens = 32

    def load(self, data_dir: Path, path: Path | None = None) -> TaskData:
        file = self._path(data_dir, path)
        return self._items(
            (f"{self.name}/{i}", row, (), f"{file} record {i + 1}")
            for i, row in enumerate(read_jsonl(file))
        )

    def _items(self, rows: Any) -> TaskData:
        items, skipped = [], []
        for position, (item_id, row, shots, where) in enumerate(rows):
            options, gold, reason = parse_options(row)
            if reason is not None:
                skipped.append(Skipped(item_id, reason, position))
                continue
            prompt = prompts.choice_prompt(question_of(row, where), options, shots)
            items.append(Item(item_id, prompt, gold, tuple(options), position))
        return TaskData(items, skipped)

    def extract(self, text: str, item: Item) -> Answer:
        return extract.extract_letter(text, item.letters)

    def is_correct(self, answer: Answer, item: Item) -> bool:
        return answer is not None and answer == item.gold


class ARCTask(ChoiceTask):
    name = "arc"
    default_file = "ARC-challenge/test.jsonl"


class PIQATask(ChoiceTask):
    name = "piqa"
    default_file = "PIQA/dev_our.jsonl"


class MMLUTask(ChoiceTask):
    """5-shot per subject from ``dev``; items interleaved across subjects.

    Round-robin order makes every prefix (``--limit N``) cover all subjects evenly
    instead of being all abstract algebra, and it is stable, so resuming still works.
    """

    name = "mmlu"
    default_file = "MMLU"

    def __init__(self, split: str = "test", subjects: Sequence[str] | None = None, shots: int = 5):
        self.split = split
        self.subjects = list(subjects) if subjects else None
        self.shots = shots

    def load(self, data_dir: Path, path: Path | None = None) -> TaskData:
        root = self._path(data_dir, path)
        split_dir = root / self.split
        if not split_dir.is_dir():
            raise EvalUsageError(f"MMLU split directory not found: {split_dir}")
        subjects = self.subjects or sorted(p.stem for p in split_dir.glob("*.jsonl"))
        per_subject = [self._subject_rows(root, subject) for subject in subjects]
        interleaved = (
            row for group in itertools.zip_longest(*per_subject) for row in group if row
        )
        return self._items(interleaved)

    def _subject_rows(self, root: Path, subject: str) -> list[tuple[str, dict[str, Any], tuple[Any, ...], str]]:
        shots = []
        dev = root / "dev" / f"{subject}.jsonl"
        for i, row in enumerate(read_jsonl(dev)[: self.shots]):
            options, gold, reason = parse_options(row)
            if reason is None:
                shots.append((question_of(row, f"{dev} record {i + 1}"), options, gold))
        file = root / self.split / f"{subject}.jsonl"
        rows = read_jsonl(file)
        return [(f"mmlu/{subject}/{i}", row, tuple(shots), f"{file} record {i + 1}") for i, row in enumerate(rows)]


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (GSM8KTask, ARCTask, PIQATask, MMLUTask)
}


def get_task(task: str | Task, **options: Any) -> Task:
    """A task instance from its name (or the instance itself)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise EvalUsageError(f"unknown task {task!r}; choose from {', '.join(sorted(TASKS))}")
    return TASKS[task](**options)
