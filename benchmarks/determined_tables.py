"""docs/results.md's "determined" table from `unite-logits select` folders, so every number there
comes from a file.

Each folder under ``benchmarks/results/determined/`` holds one ``select`` run: its report
(``<task>.select.json``: the split, every option's dev score, the choice and its reasons, the
held-out table) and the records behind it (``dev/``, ``search/``, ``held-out/``).

    python -m benchmarks.determined_tables
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "benchmarks" / "results" / "determined"
SHORT = {"smollm2-135m-instruct": "SmolLM2", "gemma3-270m": "Gemma 3", "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder"}
TASKS = {"unite_arc_easy": "ARC-Easy", "unite_piqa": "PIQA", "unite_hellaswag": "HellaSwag",
         "unite_arc_challenge": "ARC-Challenge"}


def _name(system: str) -> str:
    """"a+b@1,0.5" -> "SmolLM2 + Gemma 3 (1 : 0.5)"; a model alone -> its short name."""
    models, _, weights = system.partition("@")
    names = " + ".join(SHORT.get(m, m) for m in models.split("+"))
    return f"{names} ({' : '.join(weights.split(','))})" if weights else names


def _points(row: dict[str, float]) -> str:
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"


def reports(folder: Path = FOLDER) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*/*.select.json"))]


def _short_system(text: str) -> str:
    """Every model name in ``text`` replaced by its short name."""
    for name, short in SHORT.items():
        text = text.replace(name, short)
    return text


def table(found: Sequence[dict]) -> str:
    lines = ["| task | candidates | dev / held-out docs | best member (held-out) | equal weights − best | "
             "determined | determined − best |",
             "|---|---|---|---|---|---|---|"]
    for report in found:
        determined = report.get("determined")
        if not determined or not determined.get("held_out"):
            continue
        held = determined["held_out"]
        split = determined["split"]
        best = held["best_member"]
        best_row = held["systems"][best]
        chosen = held["chosen"]
        if chosen == best:
            chosen_name, gain = f"{SHORT.get(best, best)} alone", "0 (it is the best member)"
        else:
            alone = chosen in {c["name"] for c in report["candidates"]}
            chosen_name = f"{SHORT.get(chosen, chosen)} alone" if alone else _name(chosen)
            gain = _points(held["chosen_minus_best"])
        candidates = ", ".join(SHORT.get(c["name"], c["name"]) for c in report["candidates"])
        lines.append(
            f"| {TASKS.get(report['task'], report['task'])} | {candidates} | "
            f"{split['dev_documents']} / {held['documents']} | {SHORT.get(best, best)} {100 * best_row['score']:.1f} | "
            f"{_points(held['equal_minus_best'])} | {chosen_name} | {gain} |")
    return "\n".join(lines)


def choices(found: Sequence[dict]) -> str:
    """What was chosen on each task and why (the steps of the choice, gains in dev points)."""
    out = []
    for report in found:
        determined = report.get("determined")
        if not determined:
            continue
        task = TASKS.get(report["task"], report["task"])
        steps = "; ".join(_short_system(reason.replace(" points on the dev slice over the choice before", ""))
                          for reason in determined["reasons"])
        out.append(f"- **{task}, {len(report['candidates'])} candidates**: {steps}")
    return "\n".join(out)


def members(found: Sequence[dict]) -> str:
    """Each candidate alone on the dev slice and on the held-out documents (one row per task:
    the trio's run, which holds every candidate): how well dev ranks the members."""
    by_task: dict[str, dict] = {}
    for report in found:
        if report.get("determined", {}).get("held_out"):
            kept = by_task.get(report["task"])
            if kept is None or len(report["candidates"]) > len(kept["candidates"]):
                by_task[report["task"]] = report
    names = list(SHORT)
    lines = ["| task | " + " | ".join(f"{SHORT[n]} dev / held-out" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for task, report in by_task.items():
        dev = {row["system"]: row["score"] for row in report["determined"]["dev"]}
        held = report["determined"]["held_out"]["systems"]
        cells = [f"{100 * dev[n]:.1f} / {100 * held[n]['score']:.1f}" if n in dev and n in held else "–"
                 for n in names]
        lines.append(f"| {TASKS.get(task, task)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    found = reports(args.folder)
    print(table(found))
    print()
    print(choices(found))
    print()
    print(members(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
