"""Compatibility report: rules, measures and an end-to-end run on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.eval_tiny import tiny_members, tiny_tokenizer, write_data
from unite_logits.evaluation.selection import (
    CandidateProfile,
    Thresholds,
    answer_style,
    choose_set,
    judge_pair,
    select,
    top_k_agreement,
    vocabulary_overlap,
)


def profile(name: str, accuracy: float, chars: float) -> CandidateProfile:
    return CandidateProfile(name, accuracy, 100, chars, chars / 5, 0.0, "direct")


def test_pair_over_accuracy_gap_is_flagged() -> None:
    pair = judge_pair(profile("strong", 0.62, 300), profile("weak", 0.48, 280), Thresholds())
    assert not pair.compatible
    assert any("accuracy gap 14.0 pts > 10" in r for r in pair.reasons)
    ok = judge_pair(profile("strong", 0.62, 300), profile("close", 0.55, 280), Thresholds())
    assert ok.compatible and ok.reasons[0].startswith("accuracy gap 7.0 pts ≤ 10")
    assert judge_pair(profile("strong", 0.62, 300), profile("weak", 0.48, 280),
                      Thresholds(max_accuracy_gap=0.2)).compatible


def test_pair_with_incomparable_length_is_flagged() -> None:
    pair = judge_pair(profile("verbose", 0.5, 900), profile("terse", 0.5, 100), Thresholds())
    assert not pair.compatible and any("length ratio 9.00x > 2x" in r for r in pair.reasons)
    silent = judge_pair(profile("silent", 0.5, 0), profile("terse", 0.5, 100), Thresholds())
    assert not silent.compatible


def test_optional_thresholds_gate_only_when_given() -> None:
    a, b = profile("a", 0.5, 100), profile("b", 0.5, 100)
    measures = dict(vocab_overlap_a_in_b=0.2, vocab_overlap_b_in_a=0.3,
                    top_k_agreement_a_in_b=0.9, top_k_agreement_b_in_a=0.8)
    assert judge_pair(a, b, Thresholds(), **measures).compatible
    low = judge_pair(a, b, Thresholds(min_vocab_overlap=0.5), **measures)
    assert not low.compatible and any("vocabulary overlap 20.0% < 50%" in r for r in low.reasons)


def test_best_set_starts_from_best_and_skips_incompatible() -> None:
    profiles = [profile("b", 0.55, 300), profile("a", 0.60, 320), profile("c", 0.40, 310),
                profile("d", 0.58, 2000)]
    pairs = [judge_pair(x, y, Thresholds()) for i, x in enumerate(profiles) for y in profiles[i + 1:]]
    chosen, reasons = choose_set(profiles, pairs)
    assert chosen == ["a", "b"]
    assert any(r.startswith("c: left out") and "accuracy gap" in r for r in reasons)
    assert any(r.startswith("d: left out") and "length ratio" in r for r in reasons)


def test_answer_style() -> None:
    assert answer_style(" B") == "direct"
    assert answer_style("Paris") == "direct"
    assert answer_style("First, 3*3=9.\nThe answer is 9") == "step-by-step"
    assert answer_style("9 because three threes") == "step-by-step"


def test_vocabulary_overlap_and_self_agreement() -> None:
    small, large = tiny_tokenizer(300), tiny_tokenizer(340)
    assert vocabulary_overlap(small, small) == 1.0
    assert vocabulary_overlap(small, large) == 1.0  # BPE merges are a prefix of the larger run
    assert 0.5 < vocabulary_overlap(large, small) < 1.0
    member, _ = tiny_members()
    assert top_k_agreement(member, member, ["Question: x\nAnswer:", "The answer is"], k=3) == (1.0, 1.0)


def test_select_end_to_end(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data")
    members = tiny_members()
    report = select("paper_arc", members, out=tmp_path / "out", data_dir=data, limit=3, progress=False,
                    heatmap=False)
    assert [c.name for c in report.candidates] == ["a", "b"]
    assert all(c.n == 3 for c in report.candidates)
    (pair,) = report.pairs
    assert (pair.a, pair.b) == ("a", "b")
    assert pair.vocab_overlap_a_in_b == 1.0 and pair.top_k_agreement_a_in_b is not None
    assert report.best_set[0] in {"a", "b"}
    assert "Suggested set" in (tmp_path / "out" / "unite_paper_arc.select.md").read_text()
    assert (tmp_path / "out" / "unite_paper_arc.select.json").is_file()


def _report() -> "SelectReport":
    from unite_logits.evaluation.selection import SelectReport

    a, b = profile("a", 0.5, 100), profile("b", 0.5, 120)
    pair = judge_pair(a, b, Thresholds(), top_k_agreement_a_in_b=0.7, top_k_agreement_b_in_a=0.4)
    return SelectReport("arc", Thresholds(), [a, b], [pair], ["a", "b"], [])


def test_heatmap_leaves_the_callers_backend_alone_and_prints_nothing(tmp_path: Path, capsys) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    from unite_logits.evaluation.selection.plot import save_heatmap

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # the caller's choice
    try:
        path = save_heatmap(_report(), tmp_path)
        assert path is not None and path.read_bytes().startswith(b"\x89PNG")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert capsys.readouterr().out == ""


def test_heatmap_without_matplotlib_is_a_logged_warning(tmp_path: Path, capsys, caplog, monkeypatch) -> None:
    import sys

    from unite_logits.evaluation.selection.plot import save_heatmap

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if absent
    with caplog.at_level("WARNING"):
        assert save_heatmap(_report(), tmp_path) is None
    assert "matplotlib is not installed" in caplog.text
    assert capsys.readouterr().out == ""
