"""Concurrent auxiliaries: ensemble latency against the sum and the slowest of its members.

Two suites:

* ``latency``: tiny models whose every forward pass also sleeps D ms (a sleep releases the
  GIL, as a GPU kernel or a remote call does): a primary and two auxiliaries. One after
  another costs about 3D per token; concurrent and overlapped should cost about D.
* ``real``: catalogue models on this machine's CPU. Reports ms/token of each member alone,
  of the ensemble one member after another (``concurrent=False``) and concurrent, for the
  given thread splits (``--primary-threads`` for the primary, ``--member-threads`` for each
  auxiliary's worker); ratios against the sum and against the slowest member.

Each repeat runs every variant back to back; rows give medians.

    python -m benchmarks.concurrency --suite latency
    python -m benchmarks.concurrency --suite real --splits 2:1 1:1 2:2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.latency import load_suite, ms_per_token

from unite_logits import Member, UniTEProcessor

ROOT = Path(__file__).resolve().parent.parent


def ensemble_ms(members, new_tokens: int, concurrent: bool, member_threads: int | None) -> float:
    (_, primary, tok), auxiliaries = members[0], members[1:]
    with UniTEProcessor(tok, [Member(m, t, name=n) for n, m, t in auxiliaries], top_k=10,
                        concurrent=concurrent, member_threads=member_threads) as processor:
        return ms_per_token(primary, tok, new_tokens, processor)


def latency_suite(delay_ms: float, new_tokens: int, repeats: int) -> dict:
    members = load_suite("tiny", ["a", "b", "c"])
    for _, model, _ in members:
        model.register_forward_pre_hook(lambda module, args: time.sleep(delay_ms / 1000))
    ensemble_ms(members, 2, True, 1)  # warm-up
    results: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    for _ in range(repeats):
        results["sequential"].append(ensemble_ms(members, new_tokens, False, 1))
        results["concurrent"].append(ensemble_ms(members, new_tokens, True, 1))
    row = {name: statistics.median(times) for name, times in results.items()}
    print(f"injected latency D = {delay_ms:.0f} ms per forward pass, primary + 2 auxiliaries, "
          f"{new_tokens} tokens, median of {repeats}")
    for name, value in row.items():
        print(f"  {name:<11} {value:7.1f} ms/token = {value / delay_ms:.2f} D")
    return {"delay_ms": delay_ms, "ms_per_token": row, "in_D": {k: v / delay_ms for k, v in row.items()},
            "repeats": results}


def real_suite(names: list[str], splits: list[str], new_tokens: int, repeats: int) -> dict:
    members = load_suite("real", names)
    ensemble_ms(members, 2, True, None)  # warm-up
    rows = []
    for split in splits:
        primary_threads, member_threads = (int(part) for part in split.split(":"))
        torch.set_num_threads(primary_threads)
        alone: dict[str, list[float]] = {name: [] for name, _, _ in members}
        sequential, concurrent = [], []
        for _ in range(repeats):
            for name, model, tokenizer in members:
                alone[name].append(ms_per_token(model, tokenizer, new_tokens))
            sequential.append(ensemble_ms(members, new_tokens, False, member_threads))
            concurrent.append(ensemble_ms(members, new_tokens, True, member_threads))
        median = statistics.median
        solo = {name: median(times) for name, times in alone.items()}
        row = {
            "split": split, "alone_ms": solo, "sequential_ms": median(sequential), "concurrent_ms": median(concurrent),
            "concurrent_vs_sum": median(concurrent) / sum(solo.values()),
            "concurrent_vs_slowest": median(concurrent) / max(solo.values()),
            "sequential_vs_sum": median(sequential) / sum(solo.values()),
        }
        rows.append(row)
        print(f"threads primary:member {split}: alone {', '.join(f'{n} {v:.0f}' for n, v in solo.items())} ms/token; "
              f"ensemble sequential {row['sequential_ms']:.0f} ({row['sequential_vs_sum']:.2f} x sum), "
              f"concurrent {row['concurrent_ms']:.0f} ({row['concurrent_vs_sum']:.2f} x sum, "
              f"{row['concurrent_vs_slowest']:.2f} x slowest)")
    return {"members": names, "new_tokens": new_tokens, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["latency", "real"], default="latency")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--ensemble", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--splits", nargs="+", default=["2:1", "1:1", "2:2"],
                        help="PRIMARY_THREADS:MEMBER_THREADS (real suite)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.suite == "latency":
        result = latency_suite(args.delay_ms, args.new_tokens, args.repeats)
    else:
        result = real_suite(args.ensemble, args.splits, args.new_tokens, args.repeats)
    result.update(suite=args.suite, machine=platform.platform())
    out = args.out or ROOT / "benchmarks" / "results" / f"concurrency-{args.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
