"""``unite-logits eval`` on lm-eval: members alone and the ensemble on the same documents,
resumed after a kill record for record, refusing another run's folder; the command line."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from testkit.eval_tiny import tiny_members, write_data  # noqa: E402
from unite_logits.evaluation.cli import add_eval_parser, add_select_parser, run_eval, run_select  # noqa: E402
from unite_logits.evaluation.errors import EvalUsageError  # noqa: E402
from unite_logits.evaluation.records import read_records  # noqa: E402
from unite_logits.apps.cli import build_parser  # noqa: E402
from unite_logits.evaluation.run_task import evaluate, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Task folders go to this test's cache; no hub or datasets network access."""
    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def members():
    return tiny_members()


def records(out: Path, system: str) -> list[dict]:
    return read_records(out / "records" / f"{system}.jsonl.gz")


def test_members_alone_and_the_ensemble_on_the_same_documents(members, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    comparison = evaluate("arc_challenge", members, out=tmp_path / "out", data_dir=data, top_k=4, progress=False)
    assert "unite loglikelihood" not in capsys.readouterr().err  # progress=False hides the model's bars
    assert comparison.task == "unite_arc_challenge" and comparison.n == 6  # the blank-option row is left out
    assert comparison.metrics == ["acc", "acc_norm"] and comparison.best_member in {"a", "b"}
    names = [r.name for r in comparison.results if r.metric == "acc"]
    assert names == ["a", "b", "ensemble"]
    assert set(comparison.gains) == {"acc", "acc_norm"} and comparison.gains["acc"].n == 6
    for metric, best in comparison.best_members.items():  # each metric against its own best member
        assert comparison.result(best, metric).value == max(comparison.result(m, metric).value for m in "ab")
    agreement = comparison.agreement  # multiple choice: where the ensemble wins and loses
    assert agreement is not None and agreement.n == 6 and agreement.best_member == comparison.best_member
    assert sum(b.ensemble_right for b in agreement.buckets) == round(6 * comparison.result("ensemble", "acc").value)
    for system in names:
        assert [r["doc_id"] for r in records(tmp_path / "out", system)] == list(range(6))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == "unite_arc_challenge" and summary["n_differences"] == len(comparison.differences)
    assert "ensemble − best member" in (tmp_path / "out" / "summary.md").read_text()
    assert "| members right | documents | ensemble right | " in (tmp_path / "out" / "summary.md").read_text()
    assert summary["agreement"]["n"] == 6 and len(summary["agreement"]["references"]) == 3
    for row in comparison.differences:
        assert row["ensemble"] != row["best_member"] and set(row["outputs"]) == {"a", "b", "ensemble"}


def test_a_generative_paper_task_runs_through_the_same_path(members, tmp_path):
    data = write_data(tmp_path / "data")
    comparison = evaluate("paper_gsm8k", members, out=tmp_path / "out", data_dir=data, limit=2, progress=False)
    assert comparison.metrics == ["exact_match"] and comparison.n == 2 and comparison.agreement is None
    assert all(isinstance(r["output"], str) for r in records(tmp_path / "out", "ensemble"))


def test_a_changed_data_file_or_model_set_is_refused(members, tmp_path):
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, progress=False)
    changed = tmp_path / "changed"
    write_data(changed, n_arc=7)
    with pytest.raises(EvalUsageError, match="other settings.*docs_sha256"):
        evaluate("arc_challenge", members, out=out, data_dir=changed, limit=2, progress=False)
    with pytest.raises(EvalUsageError, match="other settings.*systems"):
        evaluate("arc_challenge", members[:1], out=out, data_dir=data, limit=2, progress=False)
    with pytest.raises(EvalUsageError, match="other settings.*top_k"):
        evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, top_k=3, progress=False)
    grown = evaluate("arc_challenge", members, out=out, data_dir=data, limit=4, progress=False)  # --limit may grow
    assert grown.n == 4
    (out / "meta.json").unlink()
    with pytest.raises(EvalUsageError, match="meta.json is gone"):
        evaluate("arc_challenge", members, out=out, data_dir=data, limit=4, progress=False)


def test_unknown_tasks_and_repeated_members_are_one_line_errors(members, tmp_path):
    data = write_data(tmp_path / "data")
    with pytest.raises(EvalUsageError, match="unknown task 'no_such_task'"):
        evaluate("no_such_task", members, out=tmp_path / "out", data_dir=data, progress=False)
    with pytest.raises(EvalUsageError, match="each member may be given once"):
        evaluate("arc_challenge", [members[0], members[0]], out=tmp_path / "out", data_dir=data, progress=False)


CHILD = """
import sys
from testkit.eval_tiny import tiny_members
from unite_logits.evaluation.run_task import evaluate
evaluate("arc_challenge", tiny_members(), out=sys.argv[1], data_dir=sys.argv[2], batch_size=1, progress=False)
"""


def _cached(out: Path) -> int:
    total = 0
    for db in (out / "cache").glob("*.db"):
        with sqlite3.connect(db) as connection:
            total += connection.execute("select count(*) from unnamed").fetchone()[0]
    return total


def _counting(monkeypatch) -> list:
    """Every request the scorer computes (not answered from a cache) is appended here."""
    from unite_logits.ensemble.scoring import Scorer

    computed: list = []
    score = Scorer.score
    monkeypatch.setattr(Scorer, "score", lambda self, requests, **kw: computed.extend(requests) or score(self, requests, **kw))
    return computed


def test_a_run_killed_midway_resumes_to_the_same_records_computing_only_the_rest(members, tmp_path, monkeypatch):
    data = write_data(tmp_path / "data")
    whole = tmp_path / "whole"  # one request per forward pass everywhere, so floats do not depend on batching
    evaluate("arc_challenge", members, out=whole, data_dir=data, batch_size=1, progress=False)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(killed), str(data)], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        try:
            if _cached(killed) >= 30:  # the first system done, the second under way
                break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    before = _cached(killed)
    assert 0 < before < 3 * 24  # 6 items x 4 choices per system, 3 systems: part of it
    computed = _counting(monkeypatch)
    evaluate("arc_challenge", members, out=killed, data_dir=data, batch_size=1, progress=False)
    assert len(computed) == 3 * 24 - before  # nothing cached is computed again
    for system in ("a", "b", "ensemble"):
        assert records(killed, system) == records(whole, system)
    assert json.loads((killed / "summary.json").read_text())["gains"] == json.loads((whole / "summary.json").read_text())["gains"]


def test_reuse_takes_matching_answers_over_and_computes_only_what_changed(members, tmp_path, monkeypatch, caplog):
    data = write_data(tmp_path / "data")
    first = tmp_path / "k4"
    evaluate("arc_challenge", members, out=first, data_dir=data, top_k=4, batch_size=1, progress=False)
    computed = _counting(monkeypatch)
    swept = tmp_path / "k2"  # another top_k: the members alone are the same, the ensemble is not
    with caplog.at_level("INFO", logger="unite_logits.evaluation.runs"):
        evaluate("arc_challenge", members, out=swept, data_dir=data, top_k=2, batch_size=1, progress=False, reuse=[first])
    assert len(computed) == 24  # 6 items x 4 choices, the ensemble's only
    assert "a: answers taken from" in caplog.text and "b: answers taken from" in caplog.text
    assert "ensemble: answers taken" not in caplog.text
    for system in ("a", "b"):
        assert records(swept, system) == records(first, system)
    computed.clear()
    again = tmp_path / "again"  # the same run: every system taken over, nothing computed
    evaluate("arc_challenge", members, out=again, data_dir=data, top_k=4, batch_size=1, progress=False, reuse=[swept, first])
    assert computed == []
    for system in ("a", "b", "ensemble"):
        assert records(again, system) == records(first, system)
    from unite_logits.evaluation.selection import select

    select("arc_challenge", members, out=tmp_path / "select", data_dir=data, batch_size=1, heatmap=False,
           progress=False, reuse=[first], search=False, dev_fraction=0.5)  # its candidates alone are eval's members
    assert computed == []
    caplog.clear()
    alone = tmp_path / "alone"  # other documents: nothing matches, a warning says so
    with caplog.at_level("WARNING", logger="unite_logits.evaluation.runs"):
        evaluate("arc_challenge", members[:1], out=alone, data_dir=write_data(tmp_path / "other", n_arc=5),
                 top_k=4, batch_size=1, progress=False, reuse=[first])
    assert len(computed) == 5 * 4 and "nothing taken from it" in caplog.text


def test_reuse_of_a_folder_that_is_no_results_folder_is_refused_before_anything_is_written(members, tmp_path):
    data = write_data(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalUsageError, match="--reuse .*empty: it has no meta.json"):
        evaluate("arc_challenge", members, out=tmp_path / "out", data_dir=data, progress=False, reuse=[tmp_path / "empty"])
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty" / "meta.json").write_text("[1]")
    with pytest.raises(EvalUsageError, match="meta.json is damaged"):
        evaluate("arc_challenge", members, out=tmp_path / "out", data_dir=data, progress=False, reuse=[tmp_path / "empty"])


def test_records_are_compressed_stable_and_plain_ones_of_older_folders_are_still_read(members, tmp_path):
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    first = evaluate("arc_challenge", members, out=out, data_dir=data, limit=3, progress=False)
    written = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    assert sorted(written) == ["a.jsonl.gz", "b.jsonl.gz", "ensemble.jsonl.gz"]
    evaluate("arc_challenge", members, out=out, data_dir=data, limit=3, progress=False)  # answered from the cache
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == written  # the same bytes: no time stamp
    for name in written:  # the layout of a folder written before compression
        compressed = out / "records" / name
        (out / "records" / name.removesuffix(".gz")).write_bytes(gzip.decompress(compressed.read_bytes()))
        compressed.unlink()
    assert report(out).to_dict() == first.to_dict()
    evaluate("arc_challenge", members, out=out, data_dir=data, limit=3, progress=False)  # a run compresses them
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == written


# -- where the documents come from ----------------------------------------------------------
ARC_ROWS = [{"id": f"q{i}", "question": f"Which is number {i}?", "answerKey": "ABC"[i % 3],
             "choices": {"text": ["one", "two", "three"], "label": ["A", "B", "C"]}} for i in range(4)]


def test_without_a_data_folder_a_shipped_name_is_lm_evals_own_task_over_its_cached_dataset(members, tmp_path,
                                                                                            monkeypatch):
    import datasets

    from testkit.hf_datasets import cache_dataset

    monkeypatch.delenv("UNITE_LOGITS_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # only where the cache is
    cache_dataset(tmp_path / "hf", "allenai/ai2_arc", "ARC-Easy",
                  {"train": ARC_ROWS[:1], "validation": ARC_ROWS[:2], "test": ARC_ROWS})
    comparison = evaluate("arc_easy", members, out=tmp_path / "out", progress=False)  # offline (own_cache)
    assert comparison.task == "unite_arc_easy" and comparison.n == 4  # lm-eval's arc_easy: its test split
    assert [r["context"] for r in records(tmp_path / "out", "a")] == [
        f"Question: Which is number {i}?\nAnswer:" for i in range(4)]
    local = tmp_path / "data" / "ARC-easy"  # with a data folder the same name reads its local file instead
    local.mkdir(parents=True)
    (local / "validation.jsonl").write_text(json.dumps({**ARC_ROWS[0], "question": "Local?"}) + "\n")
    monkeypatch.setenv("UNITE_LOGITS_DATA", str(tmp_path / "data"))
    again = evaluate("arc_easy", members, out=tmp_path / "local", progress=False)
    assert again.n == 1 and records(tmp_path / "local", "a")[0]["context"] == "Question: Local?\nAnswer:"


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("unite-logits: error")]


def test_without_a_data_folder_or_a_cached_dataset_eval_says_what_was_tried_in_one_line(tmp_path, monkeypatch,
                                                                                        capsys):
    import datasets

    from unite_logits.apps import cli

    monkeypatch.delenv("UNITE_LOGITS_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    common = ["--limit", "2", "--members", "/no/such/model", "--no-progress", "--out", str(tmp_path / "out")]
    assert cli.main(["eval", "--task", "piqa", *common]) == cli.EXIT_USAGE  # before any model is looked up
    (line,) = _error_lines(capsys.readouterr().err)
    for needle in ("task 'unite_piqa': no data folder was given (--data-dir, $UNITE_LOGITS_DATA)", "'baber/piqa'",
                   f"datasets cache {tmp_path / 'hf'}, offline", "--data-dir DIR (a folder with PIQA/dev_our.jsonl)",
                   "UNITE_LOGITS_DATA=DIR", "HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0"):
        assert needle in line, line
    assert cli.main(["eval", "--task", "paper_gsm8k", *common]) == cli.EXIT_USAGE  # nothing to fall back on
    (line,) = _error_lines(capsys.readouterr().err)
    assert "reads local files only" in line and "no data folder was given" in line
    assert cli.main(["eval", "--task", "piqa", "--data-dir", str(tmp_path / "nope"), *common]) == cli.EXIT_USAGE
    assert _error_lines(capsys.readouterr().err) == [
        f"unite-logits: error: benchmark data folder not found: {tmp_path / 'nope'} (from --data-dir); pass "
        "--data-dir DIR or set UNITE_LOGITS_DATA=DIR to a folder that exists"]
    monkeypatch.setenv("UNITE_LOGITS_DATA", str(tmp_path / "gone"))  # a named folder is never skipped
    assert cli.main(["eval", "--task", "piqa", *common]) == cli.EXIT_USAGE
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"not found: {tmp_path / 'gone'} (from $UNITE_LOGITS_DATA)" in line


# -- the command line ------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unite-logits")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_select_parser(sub)
    return parser.parse_args(argv)


def test_eval_defaults_and_handlers():
    args = parse(["eval", "--task", "piqa"])
    assert args.members is None and args.ensemble is None and args.limit is None and args.handler is run_eval
    assert parse(["select", "--task", "gsm8k", "--candidates", "x", "y"]).handler is run_select
    assert args.reuse == [] and parse(["eval", "--task", "piqa", "--reuse", "x", "--reuse", "y"]).reuse == ["x", "y"]
    with pytest.raises(SystemExit):
        parse(["eval", "--task", "piqa", "--limit", "0"])


def test_eval_command_prints_members_ensemble_and_the_interval(members, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    by_name = {m.name: m for m in members}
    args = parse(["eval", "--task", "arc_challenge", "--members", "a", "b", "--limit", "3", "--out", str(tmp_path / "out"),
                  "--data-dir", str(data), "--no-progress"])
    assert run_eval(args, loader=by_name.__getitem__) == 0
    out = capsys.readouterr().out
    assert "| a | " in out and "| b | " in out and "| ensemble | " in out and "95% CI" in out
    args = parse(["eval", "--task", "arc_challenge", "--members", "a", "b", "--limit", "3", "--out", str(tmp_path / "out"),
                  "--data-dir", str(data), "--no-progress", "--json"])
    assert run_eval(args, loader=by_name.__getitem__) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["best_member"] in {"a", "b"} and "acc" in report["gains"]


def test_report_summarises_a_folder_again_from_its_records_alone(members, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    evaluate("arc_challenge", members, out=out, data_dir=data, top_k=4, progress=False)
    written = {name: (out / name).read_text() for name in ("summary.json", "summary.md", "differences.jsonl")}
    for name in written:
        (out / name).unlink()
    (tmp_path / "data").rename(tmp_path / "gone")  # nothing but the folder is read
    args = build_parser().parse_args(["report", str(out)])
    assert args.handler(args) == 0
    assert {name: (out / name).read_text() for name in written} == written
    assert written["summary.md"] in capsys.readouterr().out
    with pytest.raises(EvalUsageError, match="not an eval results folder"):
        report(tmp_path / "gone")
    (out / "meta.json").write_text("{truncated", encoding="utf-8")
    with pytest.raises(EvalUsageError, match="report .*meta.json is damaged"):
        report(out)


def test_a_users_own_task_yaml_through_include_path(members, tmp_path):
    """`eval --include-path DIR --task NAME`: a task defined only in the user's folder of YAMLs."""
    rows = [{"q": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2} for i in range(8)]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "my_even.yaml").write_text(
        "task: my_even\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "validation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{q}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    comparison = evaluate("my_even", members, out=tmp_path / "out", include_path=folder, progress=False)
    assert comparison.n == 8 and comparison.task == "my_even"
    with pytest.raises(EvalUsageError, match="--include-path .*not a folder"):
        evaluate("my_even", members, out=tmp_path / "out2", include_path=tmp_path / "nowhere", progress=False)


def test_the_run_identity_holds_the_ensembles_settings_whole(members, tmp_path, monkeypatch):
    """A gate (or other weights) is another ensemble: never resumed into, never lent answers;
    the members alone are the same and are taken over."""
    data = write_data(tmp_path / "data")
    exact = tmp_path / "exact"
    evaluate("arc_challenge", members, out=exact, data_dir=data, batch_size=1, progress=False)
    meta = json.loads((exact / "meta.json").read_text())
    assert meta["weights"] is None and meta["top_k"] == 10 and "confidence_gate" not in meta  # the first version's shape
    with pytest.raises(EvalUsageError, match="confidence_gate"):
        evaluate("arc_challenge", members, out=exact, data_dir=data, confidence_gate=0.5, progress=False)
    computed = _counting(monkeypatch)
    gated = tmp_path / "gated"
    evaluate("arc_challenge", members, out=gated, data_dir=data, confidence_gate=0.5, batch_size=1, progress=False,
             reuse=[exact])
    assert json.loads((gated / "meta.json").read_text())["confidence_gate"] == 0.5
    assert len(computed) == 24  # the gated ensemble only: 6 items x 4 choices
