"""Functions the shipped lm-eval task YAMLs name with ``!function unite_tasks.NAME``.

* ``*_from_lettered``: the paper's lettered files (question, A..D, answer letter) in the field
  layout of lm-eval's own task of that benchmark, so its prompts and metrics apply unchanged.
* ``paper_dataset`` / ``paper_results``: the paper's own protocols (its GSM8K 4-shot prompt,
  its lettered multiple-choice prompts, its answer reading), from `unite_logits.evaluation`,
  as generative lm-eval tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

LETTERS = "ABCD"


def piqa_from_lettered(dataset: datasets.Dataset) -> datasets.Dataset:
    """question, A, B, answer letter → piqa's goal, sol1, sol2, label."""
    return dataset.map(lambda doc: {"goal": doc["question"], "sol1": doc["A"], "sol2": doc["B"],
                                    "label": LETTERS.index(doc["answer"])}, remove_columns=dataset.column_names)


def arc_from_lettered(dataset: datasets.Dataset) -> datasets.Dataset:
    """question, A..D, answer → arc's question, choices {text, label}, answerKey.

    Only non-blank options are kept; an item whose answer is not the letter of one of them
    (the 22 with numeric answers and no options) is left out, rather than counted wrong.
    ``row`` keeps the item's line in the file (lm-eval renumbers docs after the filter).
    """
    def convert(doc: dict[str, Any], row: int) -> dict[str, Any]:
        labels = [letter for letter in LETTERS if str(doc.get(letter) or "").strip()]
        return {"row": row, "question": doc["question"], "choices": {"text": [doc[letter] for letter in labels],
                                                                     "label": labels}, "answerKey": doc["answer"]}

    converted = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)
    return converted.filter(lambda doc: doc["answerKey"] in doc["choices"]["label"])


def mmlu_from_lettered(dataset: datasets.Dataset) -> datasets.Dataset:
    """question, A..D, answer letter, domain → mmlu's question, subject, choices, answer index."""
    return dataset.map(lambda doc: {"question": doc["question"], "subject": doc.get("domain", ""),
                                    "choices": [doc[letter] for letter in LETTERS],
                                    "answer": LETTERS.index(doc["answer"])}, remove_columns=dataset.column_names)


def paper_dataset(paper_task: str, data_dir: str, **_: Any) -> datasets.DatasetDict:
    """The paper's items of ``paper_task`` (gsm8k, arc, piqa, mmlu) with their final prompts.

    Unscorable rows are left out (as the harness's own loader does). lm-eval passes its
    metadata (the model arguments among them) too; they are ignored.
    """
    from unite_logits.evaluation.paper.tasks import get_task

    from unite_logits.evaluation.errors import EvalUsageError

    if not data_dir:  # the task folder was made without a data folder
        raise EvalUsageError(f"unite_paper_{paper_task} reads local files only (the paper's own protocol; there is no "
                             "standard dataset) and no data folder was given (--data-dir, $UNITE_LOGITS_DATA): pass "
                             "--data-dir DIR (eval, select) or set UNITE_LOGITS_DATA=DIR")
    data = get_task(paper_task).load(Path(data_dir))
    if not data.items:
        raise EvalUsageError(f"{paper_task} data in {data_dir}: no scorable items ({len(data.skipped)} rows skipped)")
    rows = [{"id": item.id, "prompt": item.prompt, "gold": str(item.gold), "letters": list(item.letters),
             "paper_task": paper_task} for item in data.items]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def paper_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The paper's answer reading of the generated text, scored as its harness scores it."""
    from unite_logits.evaluation.paper.tasks import Item, get_task

    task = get_task(doc["paper_task"])
    gold: Any = float(doc["gold"]) if doc["paper_task"] == "gsm8k" else doc["gold"]
    item = Item(doc["id"], doc["prompt"], gold, tuple(doc["letters"]))
    return {"exact_match": float(task.is_correct(task.extract(results[0], item), item))}
