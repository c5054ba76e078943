"""The eval/select subcommands with an injected model loader (tiny models)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from testkit.eval_tiny import tiny_members, write_data
from unite_logits.evaluation.cli import DEFAULT_MEMBERS, add_eval_parser, add_select_parser, main, run_eval, run_select
from unite_logits.evaluation.errors import EvalUsageError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unite-logits")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    add_select_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def loader():
    models = {name: (model, tok) for model, tok, name in tiny_members()}
    calls: list[str] = []

    def load(spec: str):
        calls.append(spec)
        if spec not in models:
            raise EvalUsageError(f"unknown model {spec!r}")
        return models[spec]

    load.calls = calls  # type: ignore[attr-defined]
    return load


def test_eval_defaults_and_handler() -> None:
    args = parse(["eval", "--task", "arc"])
    assert args.members == list(DEFAULT_MEMBERS) and args.mode == "free" and args.limit is None
    assert args.handler is run_eval
    assert parse(["select", "--task", "gsm8k", "--candidates", "x", "y"]).handler is run_select
    with pytest.raises(SystemExit):
        parse(["eval", "--task", "nope"])
    with pytest.raises(SystemExit):
        parse(["eval", "--task", "arc", "--limit", "0"])


def test_eval_command_single_member(loader, tmp_path: Path, capsys) -> None:
    data = write_data(tmp_path / "data")
    args = parse(["eval", "--task", "arc", "--members", "a", "--limit", "2", "--mode", "both",
                  "--out", str(tmp_path / "out"), "--data-dir", str(data), "--no-progress"])
    assert run_eval(args, loader=loader) == 0
    assert "| a | " in capsys.readouterr().out
    records = (tmp_path / "out" / "arc.constrained.jsonl").read_text().splitlines()
    assert [json.loads(r)["id"] for r in records] == ["arc/0", "arc/1"]
    assert json.loads((tmp_path / "out" / "arc.summary.json").read_text())["modes"].keys() == {"free", "constrained"}


def test_usage_errors_come_before_model_loading(loader, tmp_path: Path) -> None:
    before = len(loader.calls)
    with pytest.raises(EvalUsageError, match="multiple-choice"):
        run_eval(parse(["eval", "--task", "gsm8k", "--mode", "constrained"]), loader=loader)
    with pytest.raises(EvalUsageError, match="not found"):
        run_eval(parse(["eval", "--task", "arc", "--data-dir", str(tmp_path / "none")]), loader=loader)
    with pytest.raises(EvalUsageError, match="at least two"):
        run_select(parse(["select", "--task", "arc", "--candidates", "a"]), loader=loader)
    assert len(loader.calls) == before
    assert main(["eval", "--task", "gsm8k", "--mode", "both"]) == 2


def test_select_command(loader, tmp_path: Path, capsys) -> None:
    data = write_data(tmp_path / "data")
    args = parse(["select", "--task", "arc", "--candidates", "a", "b", "--limit", "2", "--max-gap", "0",
                  "--max-new-tokens", "3", "--out", str(tmp_path / "out"), "--data-dir", str(data),
                  "--no-progress", "--no-heatmap"])
    assert run_select(args, loader=loader) == 0
    out = capsys.readouterr().out
    assert "Suggested set" in out and "accuracy gap" in out
    report = json.loads((tmp_path / "out" / "arc.select.json").read_text())
    assert report["thresholds"]["max_accuracy_gap"] == 0.0
