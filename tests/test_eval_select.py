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
    """Split, candidates alone on the dev slice, the search, the choice, the held-out slice and the
    ensemble file; then `eval --ensemble` evaluates exactly that ensemble on the held-out documents."""
    pytest.importorskip("lm_eval")
    import json

    from unite_logits.ensemble.spec import read_ensemble_file
    from unite_logits.evaluation.run_task import evaluate

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    data = write_data(tmp_path / "data", n_arc=24)
    members = tiny_members()
    report = select("paper_arc", members, out=tmp_path / "out", data_dir=data, dev_fraction=0.5, progress=False,
                    heatmap=False)
    assert [c.name for c in report.candidates] == ["a", "b"]
    dev, held = report.determined.split["dev_documents"], report.determined.split["held_out_documents"]
    assert all(c.n == dev for c in report.candidates) and dev + held == 24 and dev > 5 and held > 5
    (pair,) = report.pairs
    assert (pair.a, pair.b) == ("a", "b")
    assert pair.vocab_overlap_a_in_b == 1.0 and pair.top_k_agreement_a_in_b is not None
    names = [o.name for o in report.determined.options]
    assert {"a", "b", "a+b", "b+a", "a+b@1,0.25", "b+a@1,2"} <= set(names) and len(names) == 2 + 2 * 4
    content = read_ensemble_file(tmp_path / "out" / "ensemble.json", check_models=False)
    assert content.spec == report.determined.choice.option.spec
    tuned = content.tuned
    assert tuned["task"] == "unite_paper_arc" and tuned["dev_documents"] == dev and tuned["held_out"]["documents"] == held
    assert set(tuned["held_out"]["systems"]) >= {"a", "b", "equal weights"}
    md = (tmp_path / "out" / "unite_paper_arc.select.md").read_text()
    assert "Suggested set" in md and "Held out" in md and "Chosen:" in md
    # the file evaluated on the held-out slice: the same documents as select's held-out folder
    monkeypatch.setattr("unite_logits.evaluation.run_task.read_ensemble_file",
                        lambda path: read_ensemble_file(path, check_models=False))
    loaded = {m.name: m for m in members}
    comparison = evaluate("paper_arc", ensemble_file=tmp_path / "out" / "ensemble.json", out=tmp_path / "eval",
                          data_dir=data, progress=False, loader=loaded.__getitem__)
    assert comparison.n == held
    ids = lambda folder: {json.loads(line)["doc_id"] for line in __import__("gzip").open(  # noqa: E731
        next((tmp_path / folder / "records").glob("*.jsonl.gz")), "rt")}
    assert ids("eval") == ids("out/held-out") and not ids("eval") & ids("out/dev")


def test_the_split_is_disjoint_stable_and_grows_with_the_documents() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from unite_logits.evaluation.split import split_documents

    @given(counts=st.dictionaries(st.sampled_from(["t1", "t2", "t3"]), st.integers(40, 300), min_size=1),
           seed=st.integers(0, 5), fraction=st.sampled_from([0.2, 0.3, 0.5]))
    def check(counts, seed, fraction):
        split = split_documents(counts, seed=seed, dev_fraction=fraction)
        for task, count in counts.items():
            dev, held = set(split.dev[task]), set(split.held_out[task])
            assert not dev & held and dev | held == set(range(count))
        assert split == split_documents(counts, seed=seed, dev_fraction=fraction)  # the same seed, the same split
        grown = split_documents({t: c + 50 for t, c in counts.items()}, seed=seed, dev_fraction=fraction)
        assert all(set(split.dev[t]) <= set(grown.dev[t]) for t in counts)  # a document keeps its side
        total = sum(counts.values())
        assert abs(split.sizes[0] / total - fraction) < 0.2

    check()
    with pytest.raises(ValueError, match="left a slice empty"):
        split_documents({"t": 1}, dev_fraction=0.3)


def _option(models, weights, flags):
    from unite_logits.ensemble.spec import EnsembleSpec
    from unite_logits.evaluation.selection.search import Option

    return Option(EnsembleSpec(models, weights), tuple(bool(f) for f in flags))


def test_a_gain_within_its_interval_keeps_the_best_member_alone() -> None:
    """On 100 documents an ensemble 2 points better on dev is noise: the verdict is one model."""
    from unite_logits.evaluation.selection.search import choose

    best = [1] * 60 + [0] * 40
    alone = [_option(["a"], None, best), _option(["b"], None, [1] * 55 + [0] * 45)]
    ensembles = [_option(["a", "b"], None, [1] * 62 + [0] * 38), _option(["a", "b"], [1, 0.5], [1] * 61 + [0] * 39)]
    choice = choose(alone, ensembles)
    assert choice.option.spec.models == ("a",) and len(choice.option.spec.taking_part) == 1
    assert all(not taken for _, _, taken in choice.steps) and "not taken" in choice.reasons[0]
    assert "interval reaches 0" in choice.reasons[0]
    worse = [_option(["a", "b"], None, [1] * 40 + [0] * 60)]  # 20 points below: not noise, worse
    assert choose(alone, worse).reasons[0].endswith("not taken: worse than the choice before")
    clear = [_option(["a", "b"], [1, 0.5], [1] * 75 + [0] * 25)]
    assert choose(alone, ensembles[:1] + clear).option.spec.weights == (1.0, 0.5)  # 15 points: taken


def test_a_one_model_verdict_loads_as_that_model_alone(tmp_path: Path) -> None:
    from unite_logits import Ensemble, LoadedModel
    from unite_logits.ensemble.spec import EnsembleFile, EnsembleSpec, write_ensemble_file
    from testkit import tiny

    tok = tiny.byte_bpe()
    folder = tmp_path / "m"
    tiny.tiny_llama(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(EnsembleSpec([str(folder)])))
    ensemble = Ensemble.from_file(path)
    assert len(ensemble.models) == 1 and isinstance(ensemble.primary, LoadedModel)
    with ensemble.processor() as processor:
        assert processor.members == []


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
