"""The harness with the real UniTEProcessor (skipped until the core is importable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.eval_tiny import tiny_members, write_data
from unite_logits.evaluation.runner import evaluate

core = pytest.importorskip("unite_logits.processor", reason="core UniTEProcessor not available")


def test_default_factory_runs_both_modes_with_the_core(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    members = tiny_members()
    summary = evaluate("arc", members, out_dir=tmp_path / "out", mode="both", data_dir=data,
                       limit=3, max_new_tokens=4, progress=False)
    for mode in ("free", "constrained"):
        records = [json.loads(l) for l in (tmp_path / "out" / f"arc.{mode}.jsonl").read_text().splitlines()]
        assert len(records) == 3 and all("ensemble" in r["answers"] for r in records)
        assert summary.modes[mode].gain is not None


def test_constrained_letters_come_from_the_ensembled_scores(tmp_path: Path) -> None:
    # Random tiny models rarely put a letter in a top-10 union; a top-k covering the whole
    # vocabulary makes every letter a candidate, so the ensemble must answer every item.
    data = write_data(tmp_path / "data")
    evaluate("arc", tiny_members(), out_dir=tmp_path, mode="constrained", data_dir=data,
             limit=3, top_k=300, progress=False)
    records = [json.loads(l) for l in (tmp_path / "arc.constrained.jsonl").read_text().splitlines()]
    for r in records:
        scores = r["outputs"]["ensemble"]
        assert set(scores) == {"A", "B", "C", "D"} and all(v is not None and v < 0 for v in scores.values())
        assert r["answers"]["ensemble"] == max(scores, key=scores.get)
