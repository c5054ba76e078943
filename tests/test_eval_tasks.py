"""Prompt builders and loaders on the real benchmark files (skipped when absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unite_logits.evaluation.data import resolve_data_dir
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.paper.tasks import get_task, parse_options

DATA = Path(os.environ.get("UNITE_LOGITS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")


@needs_data
def test_gsm_prompt_is_four_shot_then_question() -> None:
    data = get_task("gsm8k").load(DATA)
    first = data.items[0]
    assert len(data.items) == 1319 and not data.skipped
    assert first.prompt.count("Question:") == 5
    assert first.prompt.count("\\boxed{") == 4
    assert first.prompt.endswith("How much in dollars does she make every day at the farmers' market?\nLet's think step by step\n")
    assert "\\boxed{146}\n\n\nQuestion: Janet" in first.prompt
    assert first.gold == 18.0
    assert data.items[2].gold == 70000.0


@needs_data
def test_arc_prompt_and_quirky_items() -> None:
    data = get_task("arc").load(DATA)
    assert len(data.items) + len(data.skipped) == 1172
    assert len(data.skipped) == 22  # numeric labels with all options blank
    assert all("no options" in s.reason for s in data.skipped)
    first = data.items[0]
    assert first.prompt == (
        "Answer the question by replying A, B, C or D.\n"
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\n"
        "A: Planetary density will decrease.\nB: Planetary years will become longer.\n"
        "C: Planetary days will become shorter.\nD: Planetary gravity will become stronger.\nAnswer:"
    )
    assert first.gold == "C" and first.letters == ("A", "B", "C", "D")
    three = [item for item in data.items if len(item.letters) == 3]
    assert len(three) == 3  # one blank option: offered as A, B or C
    assert all(item.prompt.startswith("Answer the question by replying A, B or C.") for item in three)
    assert all("\nD:" not in item.prompt for item in three)


@needs_data
def test_piqa_prompt_has_two_options() -> None:
    item = get_task("piqa").load(DATA).items[0]
    assert item.prompt.startswith("Answer the question by replying A or B.\nQuestion: How do I ready")
    assert item.letters == ("A", "B") and item.gold == "A"
    assert item.prompt.endswith("a food dish.\nAnswer:")


@needs_data
def test_mmlu_five_shot_and_interleaved() -> None:
    data = get_task("mmlu").load(DATA)
    assert len(data.items) == 14042
    first = data.items[0]
    assert [i.id for i in data.items[:2]] == ["mmlu/abstract_algebra/0", "mmlu/anatomy/0"]
    assert first.prompt.count("Question:") == 6
    assert first.prompt.count("\nAnswer: ") == 5  # five answered shots, then "Answer:"
    assert first.prompt.endswith("A: 0\nB: 4\nC: 2\nD: 6\nAnswer:")


def test_parse_options_maps_numeric_gold_and_flags_blank() -> None:
    opts, gold, reason = parse_options({"question": "q", "A": "x", "B": "y", "answer": "2"})
    assert (gold, reason) == ("B", None)
    _, gold, reason = parse_options({"question": "q", "A": "", "B": "", "answer": "2"})
    assert gold is None and "no options" in reason
    _, gold, reason = parse_options({"question": "q", "A": "x", "B": " ", "answer": "B"})
    assert gold is None and "blank" in reason


def test_unknown_task_and_missing_data_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(EvalUsageError, match="unknown task"):
        get_task("nope")
    with pytest.raises(EvalUsageError, match="not found"):
        resolve_data_dir(tmp_path / "missing")
    with pytest.raises(EvalUsageError, match="not found"):
        get_task("arc").load(tmp_path)


# -- bad rows: one line naming the place, never a traceback ----------------------------------
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"A": "x", "B": "y", "answer": "A"}\n', "record 1: 'question' has to be non-empty text .missing."),
        (b'{"question": null, "A": "x", "answer": "A"}\n', "'question' has to be non-empty text"),
        (b'{"question": 7, "A": "x", "answer": "A"}\n', "'question' has to be non-empty text .int 7."),
        (b'["question", "A"]\n', ":1: a record has to be a JSON object, not list"),
        (b'{"question": "ok?", "A": "x", "answer": "A"}\n\xff\xfe\n', ":2: not valid UTF-8"),
    ],
)
def test_bad_arc_rows_are_usage_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "arc.jsonl"
    path.write_bytes(content)
    with pytest.raises(EvalUsageError, match=needle) as caught:
        get_task("arc").load(tmp_path, path)
    assert "\n" not in str(caught.value)
