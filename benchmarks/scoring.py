"""Ensembled scoring against the members scoring alone with lm-eval's ``hf`` model, in one run.

The same loglikelihood requests (an lm-eval multiple-choice task's: ``"Question: ...\\nAnswer:"``
and each choice, for ``--items`` items) are scored by lm-eval's ``HFLM`` on each member's
converted folder, and by the ``unite`` model on the ensemble (and, for reference, on each
member alone through the same code). Each repeat runs them all back to back; rows give
medians and the ratio

    ratio = unite ensemble seconds / sum of the members' hf seconds   (target <= 1.5)

with the per-repeat ratios. Also checks that ``unite`` on one model gives ``hf``'s numbers.

    python -m benchmarks.scoring --items 20 --repeats 3
    python -m benchmarks.scoring --task hellaswag --items 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "arc_easy": ("ARC-easy/validation.jsonl", lambda r: (f"Question: {r['question']}\nAnswer:",
                                                         [" " + t for t in r["choices"]["text"]])),
    "hellaswag": ("HellaSwag/validation.jsonl", None),
}


def requests(task: str, items: int, data: Path) -> list[tuple[str, str]]:
    """The loglikelihood requests lm-eval builds for the first ``items`` items of ``task``."""
    path, build = TASKS[task]
    rows = [json.loads(line) for line in (data / path).read_text().splitlines()[:items]]
    if task == "hellaswag":
        from lm_eval.tasks.hellaswag.utils import preprocess

        pairs = []
        for row in rows:
            context = preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
            pairs += [(context, " " + preprocess(ending)) for ending in row["endings"]]
        return pairs
    return [(context, choice) for context, choices in map(build, rows) for choice in choices]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="arc_easy")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from unite_logits.evaluation.data import DATA_ENV, resolve_data_dir
    from unite_logits.lm_eval import UniteLM
    from unite_logits.models.loading import cached_dir

    pairs = requests(args.task, args.items, resolve_data_dir(os.environ.get(DATA_ENV) or ROOT.parent / "shared" / "data"))
    instances = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    ensemble = UniteLM(models="+".join(args.models), top_k=args.top_k, batch_size=args.batch_size)
    alone = {name: UniteLM(models=name, top_k=args.top_k, batch_size=args.batch_size) for name in args.models}
    hf = {name: HFLM(pretrained=str(cached_dir(name)), dtype="float32", batch_size=args.batch_size, device="cpu")
          for name in args.models}

    def timed(run) -> tuple[float, list[tuple[float, bool]]]:
        started = time.perf_counter()
        out = run(instances, disable_tqdm=True)
        return time.perf_counter() - started, out

    seconds: dict[str, list[float]] = {f"hf {n}": [] for n in args.models}
    seconds.update({f"unite {n}": [] for n in args.models})
    seconds["unite ensemble"] = []
    ratios, worst_difference = [], 0.0
    for _ in range(args.repeats):
        for name in args.models:
            taken, reference = timed(hf[name].loglikelihood)
            seconds[f"hf {name}"].append(taken)
            taken, ours = timed(alone[name].loglikelihood)
            seconds[f"unite {name}"].append(taken)
            worst_difference = max([worst_difference, *(abs(a[0] - b[0]) for a, b in zip(ours, reference))])
        taken, _ = timed(ensemble.loglikelihood)
        seconds["unite ensemble"].append(taken)
        ratios.append(taken / sum(seconds[f"hf {n}"][-1] for n in args.models))
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    report = {
        "benchmark": "ensembled scoring vs members alone with lm-eval hf (benchmarks/scoring.py)",
        "task": args.task, "items": args.items, "requests": len(pairs), "models": args.models,
        "batch_size": args.batch_size, "top_k": args.top_k, "threads": args.threads, "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "median_seconds": {k: round(v, 2) for k, v in medians.items()},
        "seconds": {k: [round(v, 3) for v in values] for k, values in seconds.items()},
        "ratio_ensemble_to_sum_of_hf": round(statistics.median(ratios), 3),
        "repeat_ratios": [round(r, 3) for r in ratios],
        "one_model_max_abs_difference_to_hf": worst_difference,
    }
    print(f"{args.task}: {len(pairs)} requests ({args.items} items), batch {args.batch_size}, top_k {args.top_k}")
    for key, value in medians.items():
        print(f"  {key:<40} {value:8.2f} s")
    print(f"  ratio ensemble / sum of members alone (hf): {report['ratio_ensemble_to_sum_of_hf']} "
          f"(repeats {report['repeat_ratios']}); one model vs hf: max |diff| {worst_difference:.2e}")
    out = args.out or ROOT / "benchmarks" / "results" / f"scoring-{args.task}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
