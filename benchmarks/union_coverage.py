"""Where the union top-k bites when an ensemble scores answers: the tokens it had to add.

Scoring puts each continuation token into the union of the models' top-k; a token that no
model proposed (`TokenScores.proposed` false) is one that generation would never write, and
its ensembled probability rests on the models' mass outside their top-k. This counts such
tokens on a multiple-choice task's requests (the gold answer and the distractors apart, the
first token of an answer apart from the rest) for several ``top_k``, with the accuracy on
the same items, to read beside the ``top_k`` sweep of docs/results.md.

    python -m benchmarks.union_coverage --items 100 --top-k 1 5 10 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from benchmarks.scoring import ROOT, TASKS, requests

logger = logging.getLogger(__name__)


def _answers(task: str, items: int, data: Path) -> list[tuple[int, int]]:
    """Each item's (gold index, number of choices), in the order `requests` lists them."""
    rows = [json.loads(line) for line in (data / TASKS[task][0]).read_text().splitlines()[:items]]
    if task == "hellaswag":
        return [(int(row["label"]), len(row["endings"])) for row in rows]
    return [(row["choices"]["label"].index(row["answerKey"]), len(row["choices"]["text"])) for row in rows]


def coverage(scored: list[Any], answers: list[tuple[int, int]]) -> dict[str, Any]:
    """Shares of unproposed tokens (gold / distractors, first token / later) and the accuracy;
    ``answers``: each item's (gold index, number of choices), its choices consecutive in ``scored``."""
    if sum(n for _, n in answers) != len(scored):
        raise ValueError(f"{len(scored)} scored choices for items with {sum(n for _, n in answers)} in all")
    counts = {key: [0, 0] for key in ("gold_first", "gold_later", "other_first", "other_later")}
    right, start = 0, 0
    for answer, n_choices in answers:
        choices = scored[start:start + n_choices]
        start += n_choices
        right += max(range(n_choices), key=lambda c: choices[c].logprob) == answer
        for c, result in enumerate(choices):
            side = "gold" if c == answer else "other"
            for position, proposed in enumerate(result.proposed):
                cell = counts[f"{side}_{'first' if position == 0 else 'later'}"]
                cell[0] += not proposed
                cell[1] += 1
    shares = {key: (missing / total if total else None) for key, (missing, total) in counts.items()}
    return {"accuracy": right / len(answers), "unproposed_share": shares,
            "tokens": {key: total for key, (_, total) in counts.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="arc_easy")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--top-k", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/union-coverage-TASK.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    from unite_logits import Ensemble

    data = Path(os.environ.get("UNITE_LOGITS_DATA", ROOT.parent / "shared" / "data"))
    pairs = requests(args.task, args.items, data)
    answers = _answers(args.task, args.items, data)
    loaded = Ensemble.load(args.models)
    rows = []
    for k in args.top_k:
        logger.info("top_k %d: %d requests", k, len(pairs))
        scored = Ensemble(loaded.models, top_k=k).score(pairs, batch_size=args.batch_size)
        rows.append({"top_k": k, **coverage(scored, answers)})
    print(f"| top_k | acc ({args.items} items) | unproposed: gold 1st | gold later | distractor 1st | distractor later |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = row["unproposed_share"]
        print(f"| {row['top_k']} | {100 * row['accuracy']:.1f} | " + " | ".join(
            f"{100 * s[key]:.1f} %" for key in ("gold_first", "gold_later", "other_first", "other_later")) + " |")
    out = args.out or ROOT / "benchmarks" / "results" / f"union-coverage-{args.task}.json"
    out.write_text(json.dumps({"task": args.task, "items": args.items, "models": args.models, "rows": rows,
                               "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                           "torch": torch.__version__}}, indent=2) + "\n")
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
