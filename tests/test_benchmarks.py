"""The serving benchmark runs end to end on the tiny suite (so it does not rot); no timings are asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")


def test_serving_benchmark_batched_answers_equal_one_at_a_time(tmp_path, monkeypatch):
    from benchmarks import serving

    out = tmp_path / "serving.json"
    assert serving.main(["--suite", "tiny", "--clients", "1", "3", "--max-tokens", "4", "--repeats", "1",
                         "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["clients"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["same_answers"] == row["clients"] and row["completion_tokens"] == 4 * row["clients"]
        assert set(row["wall_s"]) == set(serving.MODES) and all(s > 0 for s in row["wall_s"].values())


def test_union_coverage_counts_unproposed_tokens_by_side_and_position():
    from benchmarks.union_coverage import coverage
    from unite_logits.core.scoring import TokenScores

    def scores(logprobs, proposed):
        return TokenScores(logprobs, [False] * len(logprobs), proposed)

    # item 0 (gold 1 of 2): the gold answer wins; item 1 (gold 0 of 3): a distractor wins
    scored = [scores([-3.0, -1.0], [False, True]), scores([-1.0, -0.5, -0.1], [True, True, False]),
              scores([-4.0], [True]), scores([-1.0], [False]), scores([-9.0], [False])]
    report = coverage(scored, [(1, 2), (0, 3)])
    assert report["accuracy"] == 0.5
    assert report["tokens"] == {"gold_first": 2, "gold_later": 2, "other_first": 3, "other_later": 1}
    assert report["unproposed_share"] == {"gold_first": 0.0, "gold_later": 0.5, "other_first": 1.0, "other_later": 0.0}
    with pytest.raises(ValueError, match="5 scored choices for items with 4"):
        coverage(scored, [(1, 2), (0, 2)])


def test_eval_tables_put_every_system_and_the_gain_of_each_folder_in_its_row(tmp_path, capsys):
    from benchmarks import eval_tables

    def result(name, metric, value):
        return {"name": name, "metric": metric, "value": value, "n": 10, "ci_low": value - 0.1, "ci_high": value + 0.1}

    gain = {"diff": -0.012, "low": -0.034, "high": 0.01, "n": 10, "method": "bootstrap"}
    summary = {"task": "unite_piqa", "n": 1838, "metrics": ["acc"],
               "results": [result("smollm2-135m-instruct", "acc", 0.5), result("x", "acc", 0.6), result("ensemble", "acc", 0.588)],
               "best_members": {"acc": "x"}, "gains": {"acc": gain},
               "agreement": {"members": ["smollm2-135m-instruct", "x"], "n": 10, "ensemble_accuracy": 0.588,
                             "buckets": [{"members_right": k, "n": 4, "ensemble_right": k + 1, "best_member_right": 2 * k}
                                         for k in range(3)],
                             "references": [{"key": k, "accuracy": 0.5, "versus_best": gain}
                                            for k in ("mean_probability", "sum_logprob", "oracle")]}}
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "piqa" / "meta.json").write_text(json.dumps({"top_k": 5, "weights": [0.5, 1.0]}))
    assert eval_tables.main([str(tmp_path / "piqa")]) == 0
    out = capsys.readouterr().out
    assert "| piqa | 1,838 | 5, weights 0.5,1 | 50.0 [40.0, 60.0] | 60.0 [50.0, 70.0] | 58.8 [48.8, 68.8] | −1.2 [−3.4, +1.0] (vs x) |" in out
    assert "| piqa | 5, weights 0.5,1 | 2 | 4 | 2 (50.0 %) | 2 (50.0 %) | 58.8 | 50.0 (−1.2) | 50.0 (−1.2) | 50.0 (−1.2) |" in out


ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(path.parent for path in (ROOT / "benchmarks" / "results" / "eval").glob("*/meta.json"))


def test_every_committed_eval_folder_is_rebuilt_exactly_from_its_compressed_records(tmp_path, capsys):
    """docs/results.md's tables come from the committed folders: `report` rebuilds each summary
    byte for byte from the records alone, and eval_tables prints the rows the page shows."""
    import shutil

    from benchmarks import eval_tables
    from unite_logits.evaluation.run_task import report
    from unite_logits.evaluation.runs import _stored_identity

    assert len(COMMITTED) >= 13
    assert not list((ROOT / "benchmarks" / "results" / "eval").rglob("records/*.jsonl"))  # kept compressed
    rebuilt = []
    for folder in COMMITTED:
        copy = shutil.copytree(folder, tmp_path / folder.name)
        for name in ("summary.json", "summary.md", "differences.jsonl"):
            (copy / name).unlink()
        report(copy)
        for name in ("summary.json", "summary.md", "differences.jsonl"):
            assert (copy / name).read_bytes() == (folder / name).read_bytes(), f"{folder.name}/{name}"
        assert _stored_identity(folder, "--reuse")["systems"]  # what --reuse reads of a folder
        rebuilt.append(str(copy))
    assert eval_tables.main(rebuilt) == 0
    tables = capsys.readouterr().out
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    agreement = [line for line in page.splitlines() if line.startswith(("| arc_", "| piqa |", "| hellaswag |"))]
    assert len(agreement) >= 8 and all(line in tables for line in agreement)


def test_speculative_benchmark_runs_on_the_tiny_suite_and_finds_the_same_tokens(tmp_path):
    from benchmarks import speculative

    out = tmp_path / "speculative.json"
    assert speculative.main(["--suite", "tiny", "--repeats", "1", "--new-tokens", "6", "--batch", "1", "2",
                             "--prompts", "short", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["new_tokens"]) for r in rows] == [(1, 6), (2, 6)]
    assert all(r["identical"] for r in rows) and all(r["spec_ms_per_token"] > 0 for r in rows)
    for row in rows:  # the profile splits each mode's time: model passes and the rest add up to the whole
        for mode, total in (("per-token", row["repeats"]["per-token"][-1]), ("spec", row["repeats"]["spec"][-1])):
            parts = row["profile"][mode]
            assert parts["primary"] > 0 and parts["members"] > 0
            assert abs(sum(parts.values()) - total) < 0.05 * total + 0.05


DETERMINED = sorted((ROOT / "benchmarks" / "results" / "determined").glob("*/*.select.json"))


def _flags_of(folder: Path, metric: str) -> dict[str, dict[tuple[str, int], bool]]:
    """Each system's right/wrong per document, read from a committed records folder alone."""
    from unite_logits.evaluation.records import read_records, records_path
    from unite_logits.evaluation.runs import slug

    meta = json.loads((folder / "meta.json").read_text())
    flags = {}
    for system in meta["systems"]:
        records = read_records(records_path(folder / "records", slug(system["name"])))
        flags[system["name"]] = {(r["task"], r["doc_id"]): r["metrics"][metric] == 1.0 for r in records}
    return flags


def test_every_committed_select_run_recomputes_its_choice_and_held_out_table_from_its_records():
    """The determined table (docs/results.md) from records alone: the dev scores give the same
    choice and reasons through `choose`, the held-out records the same held-out table, and the page
    shows what benchmarks/determined_tables prints."""
    from benchmarks import determined_tables
    from unite_logits.ensemble.spec import EnsembleSpec
    from unite_logits.evaluation.selection.render import held_out_rows
    from unite_logits.evaluation.selection.search import Option, choose

    assert len(DETERMINED) >= 4
    for path in DETERMINED:
        report = json.loads(path.read_text())
        determined, folder = report["determined"], path.parent
        metric = determined["metric"]
        dev = {**_flags_of(folder / "dev", metric), **_flags_of(folder / "search", metric)}
        docs = sorted(next(iter(dev.values())))
        assert len(docs) == determined["split"]["dev_documents"]
        assert all(sorted(flags) == docs for flags in dev.values())
        members = [c["name"] for c in report["candidates"]]
        search = json.loads((folder / "search" / "meta.json").read_text())["systems"]
        alone = [Option(EnsembleSpec((name,), top_k=10), tuple(dev[name][d] for d in docs)) for name in members]
        ensembles = [Option(EnsembleSpec(tuple(m["name"] for m in s["models"]), s["ensemble"]["weights"],
                                         top_k=s["ensemble"]["top_k"]), tuple(dev[s["name"]][d] for d in docs))
                     for s in search]
        assert {o.name for o in ensembles} == {s["name"] for s in search}  # labels round-trip
        choice = choose(alone, ensembles)
        assert choice.reasons == determined["reasons"], path
        assert choice.option.spec.settings()["weights"] == determined["chosen"]["weights"] or (
            len(choice.option.spec.taking_part) == 1)
        held = _flags_of(folder / "held-out", metric)
        assert len(next(iter(held.values()))) == determined["held_out"]["documents"]
        assert held_out_rows(held, members, "equal weights", determined["held_out"]["chosen"]) == determined["held_out"]
    found = determined_tables.reports()
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    for block in (determined_tables.table(found), determined_tables.choices(found), determined_tables.members(found)):
        assert block in page


def test_the_draft_and_verify_tables_in_the_docs_come_from_the_committed_json(capsys):
    """docs/benchmarks.md's draft-and-verify rows are rows that `--tables` prints from the
    committed results (none typed by hand), and every one of them wrote the per-token text."""
    from benchmarks import speculative

    files = sorted((ROOT / "benchmarks" / "results").glob("speculative-*.json"))
    assert files and speculative.main(["--tables", *map(str, files)]) == 0
    printed = set(capsys.readouterr().out.splitlines())
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = page.split("## Draft and verify", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| smollm2")]
    assert len(rows) >= 20 and all(row in printed for row in rows)
    exact = [row for row in rows if row.count("|") == 16 and "| - |" in row]
    assert exact and all(row.endswith("| yes |") for row in exact)


def test_the_gate_table_in_the_docs_recomputes_from_the_committed_records():
    """docs/results.md's confidence-gate rows: each gated eval folder against its exact folder,
    document by document, from the records alone."""
    from benchmarks import gate_tables

    folders = sorted((ROOT / "benchmarks" / "results" / "eval").glob("*-pair-gate*"))
    assert len(folders) >= 2 and {f.name.split("-")[0] for f in folders} >= {"arc_easy", "piqa"}
    printed = gate_tables.table(folders).splitlines()
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    section = page.split("## The confidence gate in scoring", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith(("| ARC-Easy |", "| PIQA |"))]
    assert len(rows) == len(folders) and all(row in printed for row in rows)


def test_gate_tables_compares_a_gated_folder_with_its_exact_one_document_by_document(tmp_path):
    from benchmarks import gate_tables
    from unite_logits.evaluation.records import write_records

    def folder(name, rights, outputs):
        records = [{"task": "unite_piqa", "doc_id": i, "metrics": {"acc": float(r)}, "output": o}
                   for i, (r, o) in enumerate(zip(rights, outputs))]
        (tmp_path / name / "records").mkdir(parents=True)
        write_records(tmp_path / name / "records" / "ensemble.jsonl.gz", records)

    folder("piqa-pair", [1, 1, 0, 0], [[0, -1], [0, -1], [-1, 0], [-1, 0]])
    folder("piqa-pair-gate0.8", [1, 0, 1, 0], [[0, -1], [-1, 0], [0, -1], [-1, 0]])
    line = gate_tables.row(tmp_path / "piqa-pair-gate0.8")
    assert line.startswith("| PIQA | 0.8 | 4 | 50.0 | 50.0 | +0.0 [") and line.endswith("| 2 |")
    with pytest.raises(ValueError, match="is not named"):
        gate_tables.row(tmp_path / "piqa-pair")
