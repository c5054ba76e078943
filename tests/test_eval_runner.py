"""The harness end to end on tiny in-process models, including interrupted runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testkit.eval_tiny import ForceText, tiny_members, write_data
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.evaluation.runner import evaluate


@pytest.fixture(scope="module")
def members() -> list[tuple[Any, Any, str]]:
    return tiny_members()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_data(tmp_path / "data")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_constrained_mode_uses_the_processor_once_per_item(members, data_dir, tmp_path) -> None:
    made: list[ForceText] = []

    def make(prompt: str) -> ForceText:
        assert prompt.endswith("Answer:")
        made.append(ForceText(members[0][1], " C"))
        return made[-1]

    summary = evaluate("arc", members, out_dir=tmp_path / "out", mode="constrained",
                       data_dir=data_dir, make_processor=make, progress=False)
    records = _lines(tmp_path / "out" / "arc.constrained.jsonl")
    assert [r["id"] for r in records] == [f"arc/{i}" for i in range(6)]  # arc/6 is unscorable
    assert all(r["answers"]["ensemble"] == "C" for r in records)
    assert all(r["answers"]["a"] in "ABCD" and r["answers"]["b"] in "ABCD" for r in records)
    assert [p.calls for p in made] == [1] * 6
    s = summary.modes["constrained"]
    assert (s.n, s.n_skipped) == (6, 1)
    assert s.system("ensemble").correct == 1  # golds cycle A,B,C,D,A,B: one C
    assert (tmp_path / "out" / "arc.summary.md").read_text().count("| ensemble |") == 1


def test_free_mode_stops_at_stop_string_and_eos(members, data_dir, tmp_path) -> None:
    tok = members[0][1]
    evaluate("arc", members, out_dir=tmp_path / "nl", mode="free", data_dir=data_dir,
             make_processor=lambda p: ForceText(tok, "\n"), max_new_tokens=6, progress=False)
    records = _lines(tmp_path / "nl" / "arc.free.jsonl")
    # "\n\n" is the task's stop string: two forced newlines end the answer.
    assert all(r["tokens"]["ensemble"] == 2 and r["outputs"]["ensemble"] == "" for r in records)
    assert all(r["answers"]["ensemble"] is None and not r["correct"]["ensemble"] for r in records)
    assert "| ensemble | 0 / 6 | 0.0 | [0.0, 39.0] | 6 |" in (tmp_path / "nl" / "arc.summary.md").read_text()
    assert all(1 <= r["tokens"]["a"] <= 6 for r in records)
    evaluate("arc", members, out_dir=tmp_path / "eos", mode="free", data_dir=data_dir, limit=2,
             make_processor=lambda p: ForceText(tok, "<eos>"), max_new_tokens=6, progress=False)
    records = _lines(tmp_path / "eos" / "arc.free.jsonl")
    assert [r["tokens"]["ensemble"] for r in records] == [1, 1]


def test_gsm_free_mode_scores_numbers(members, data_dir, tmp_path) -> None:
    summary = evaluate("gsm8k", members, out_dir=tmp_path / "g", data_dir=data_dir,
                       make_processor=lambda p: ForceText(members[0][1], "2"),
                       max_new_tokens=3, progress=False)
    records = _lines(tmp_path / "g" / "gsm8k.free.jsonl")
    assert [r["gold"] for r in records] == [0.0, 2.0, 4.0]
    assert [r["answers"]["ensemble"] for r in records] == [222.0] * 3
    assert summary.modes["free"].system("ensemble").correct == 0
    assert summary.modes["free"].system("ensemble").no_answer == 0


def test_deterministic_greedy(members, data_dir, tmp_path) -> None:
    for name in ("r1", "r2"):
        evaluate("arc", members, out_dir=tmp_path / name, mode="free", data_dir=data_dir,
                 ensemble=False, max_new_tokens=4, limit=3, progress=False)
    strip = lambda rs: [(r["answers"], r["outputs"]) for r in rs]  # noqa: E731
    assert strip(_lines(tmp_path / "r1" / "arc.free.jsonl")) == strip(_lines(tmp_path / "r2" / "arc.free.jsonl"))


class Interrupt(Exception):
    pass


def test_resume_after_interruption_redoes_nothing_and_loses_nothing(members, data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    kwargs = dict(out_dir=out, mode="constrained", data_dir=data_dir, progress=False,
                  make_processor=lambda p: ForceText(members[0][1], " B"))
    seen: list[str] = []

    def crash_after_three(record: dict[str, Any]) -> None:
        seen.append(record["id"])
        if len(seen) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate("arc", members, on_record=crash_after_three, **kwargs)
    assert len(_lines(out / "arc.constrained.jsonl")) == 3

    # The last write was cut off mid-line: that item must be redone, the others kept.
    path = out / "arc.constrained.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 25])
    redone: list[str] = []
    summary = evaluate("arc", members, on_record=lambda r: redone.append(r["id"]), **kwargs)
    assert redone == ["arc/2", "arc/3", "arc/4", "arc/5"]
    ids = [r["id"] for r in _lines(path)]
    assert ids == [f"arc/{i}" for i in range(6)]  # each exactly once, in order
    assert summary.modes["constrained"].n == 6

    again: list[str] = []
    evaluate("arc", members, on_record=lambda r: again.append(r["id"]), **kwargs)
    assert again == []


def test_resume_refuses_other_members_and_bad_modes(members, data_dir, tmp_path) -> None:
    evaluate("arc", members, out_dir=tmp_path, mode="constrained", data_dir=data_dir,
             ensemble=False, limit=1, progress=False)
    with pytest.raises(EvalUsageError, match="other settings"):
        evaluate("arc", members[:1], out_dir=tmp_path, mode="constrained", data_dir=data_dir,
                 ensemble=False, limit=1, progress=False)
    with pytest.raises(EvalUsageError, match="multiple-choice"):
        evaluate("gsm8k", members, out_dir=tmp_path, mode="constrained", data_dir=data_dir)
    with pytest.raises(EvalUsageError, match="unique"):
        evaluate("arc", [members[0], members[0]], out_dir=tmp_path, data_dir=data_dir)


def test_damaged_middle_line_is_an_error(members, data_dir, tmp_path) -> None:
    kwargs = dict(out_dir=tmp_path, mode="constrained", data_dir=data_dir, ensemble=False,
                  limit=3, progress=False)
    evaluate("arc", members, **kwargs)
    path = tmp_path / "arc.constrained.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalUsageError, match="damaged"):
        evaluate("arc", members, **kwargs)


# -- a results folder is only resumed by the same run ---------------------------------------
def _constrained(members, out: Path, **kwargs: Any):
    return evaluate("arc", members, out_dir=out, mode="constrained", ensemble=False, progress=False, **kwargs)


def test_resume_refuses_another_data_file_in_one_line(members, data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    _constrained(members, out, data_dir=data_dir)
    other = data_dir / "ARC-challenge" / "other.jsonl"
    rows = [json.loads(line) for line in (data_dir / "ARC-challenge" / "test.jsonl").read_text().splitlines()]
    rows[0]["question"] = "A different question?"  # same ids (positions), other content
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalUsageError, match="data_sha256") as caught:
        _constrained(members, out, data_dir=data_dir, data_path=other)
    assert "\n" not in str(caught.value) and "use another --out" in str(caught.value)


def test_resume_refuses_other_weights_of_a_member_with_the_same_name(members, data_dir, tmp_path) -> None:
    import copy

    out = tmp_path / "out"
    _constrained(members, out, data_dir=data_dir, limit=1)
    model, tokenizer, name = members[0]
    retrained = copy.deepcopy(model)
    with __import__("torch").no_grad():
        next(retrained.parameters()).add_(1.0)
    with pytest.raises(EvalUsageError, match="members"):
        _constrained([(retrained, tokenizer, name), members[1]], out, data_dir=data_dir, limit=1)


def test_resume_may_grow_the_limit(members, data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    _constrained(members, out, data_dir=data_dir, limit=2)
    summary = _constrained(members, out, data_dir=data_dir, limit=4)
    assert summary.modes["constrained"].n == 4


def test_damaged_meta_or_record_lines_are_one_line_errors(members, data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    _constrained(members, out, data_dir=data_dir, limit=2)
    meta = out / "arc.constrained.meta.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])
    with pytest.raises(EvalUsageError, match="damaged"):
        _constrained(members, out, data_dir=data_dir, limit=2)
    meta.write_text(good)
    log = out / "arc.constrained.jsonl"
    log.write_text("{}\n" + log.read_text())
    with pytest.raises(EvalUsageError, match="line 1 is not a result record"):
        _constrained(members, out, data_dir=data_dir, limit=2)


def _arc_rows(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data_dir / "ARC-challenge" / "test.jsonl").read_text().splitlines()]


def test_duplicate_item_ids_are_refused(members, data_dir, tmp_path) -> None:
    path = tmp_path / "dup.jsonl"
    rows = [{"id": "q1", "question": "What is 1+1?", "answer": "2"},
            {"id": "q2", "question": "What is 2+2?", "answer": "4"},
            {"id": "q1", "question": "What is 3+3?", "answer": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalUsageError, match="'q1' appears more than once .records 1 and 3."):
        evaluate("gsm8k", members, out_dir=tmp_path / "out", data_dir=data_dir, data_path=path, progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_skipped_count_is_the_evaluated_slices(members, data_dir, tmp_path) -> None:
    path = tmp_path / "arc.jsonl"
    rows = _arc_rows(data_dir)
    blank = {"question": "Blank?", "A": "", "B": "", "C": "", "D": "", "answer": "A"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], blank, rows[1], blank, blank, rows[2]]))
    first_two = _constrained(members, tmp_path / "two", data_dir=data_dir, data_path=path, limit=2)
    assert first_two.modes["constrained"].n_skipped == 1  # the blank between items 1 and 2 only
    everything = _constrained(members, tmp_path / "all", data_dir=data_dir, data_path=path)
    assert everything.modes["constrained"].n_skipped == 3


def test_data_without_a_scorable_item_is_refused(members, data_dir, tmp_path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(EvalUsageError, match="no scorable items"):
        _constrained(members, tmp_path / "out", data_dir=data_dir, data_path=path)


# -- one factory builds every ensemble -------------------------------------------------------
def test_evaluation_builds_its_ensemble_as_generate_does(members, data_dir, tmp_path, monkeypatch) -> None:
    from unite_logits import Ensemble
    from unite_logits.evaluation.runner import as_members, unite_processor_factory

    loaded = as_members(members)
    primary = loaded[0]
    extra_eos = 5  # like Gemma's <end_of_turn>: an EOS of the generation config only
    monkeypatch.setattr(primary.model.generation_config, "eos_token_id", [primary.tokenizer.eos_token_id, extra_eos])
    loaded = as_members([(m.model, m.tokenizer, m.name) for m in loaded])
    processor = unite_processor_factory(loaded, top_k=3, weights=[2.0, 0.5])("Question: x?\nAnswer:")
    reference = Ensemble(loaded, weights=[2.0, 0.5], top_k=3).processor("Question: x?\nAnswer:")
    assert extra_eos in processor.primary_view.eos_ids
    assert processor.primary_view.eos_ids == reference.primary_view.eos_ids
    assert processor.weights == reference.weights == [2.0, 0.5]
    assert processor.names == reference.names == ["a", "b"]
    assert processor.top_k == reference.top_k == 3

    built: list[Any] = []
    original = Ensemble.processor
    monkeypatch.setattr(Ensemble, "processor", lambda self, *a, **k: built.append(self.weights) or original(self, *a, **k))
    evaluate("arc", members, out_dir=tmp_path / "out", mode="constrained", data_dir=data_dir, limit=1,
             weights=[1.0, 3.0], progress=False)
    assert built == [[1.0, 3.0]]
