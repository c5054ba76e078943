"""Batch throughput of the ensemble against its members alone at the same batch, in one run.

For each setting (B distinct prompts, left-padded; or one prompt with beam search) it
measures ms per decoding step of every member generating alone with the same batch and
settings, and of the ensemble (primary + auxiliaries via UniTEProcessor), greedy, exactly
N new tokens, and reports

    ratio = ensemble ms/step / sum of the members' ms/step (same batch, same run)

Each repeat runs the members alone and then the ensemble back to back; rows give medians.
Targets (batched-members issue, CPU): B=1 <= 1.05, B=8 <= 1.15, B=32 <= 1.2, beams=4 <= 1.3.

    python -m benchmarks.throughput --suite tiny
    python -m benchmarks.throughput --suite real --batches 1 4 8 32 --new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.latency import load_suite

from unite_logits import Member, UniTEProcessor

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    setting: str
    batch: int
    beams: int
    new_tokens: int
    members_ms_per_step: dict[str, float]
    ensemble_ms_per_step: float
    ratio: float
    repeat_ratios: list[float]
    auxiliary_forward_passes: int


def questions(count: int) -> list[str]:
    """``count`` distinct GSM8K questions (the shared data set, else made-up ones)."""
    path = ROOT.parent / "shared" / "data" / "GSM" / "test.cleand.jsonl"
    if path.exists():
        lines = path.read_text().splitlines()[:count]
        items = [json.loads(line)["question"] for line in lines]
    else:
        items = [f"Question {i}: what is {i} plus {2 * i}?" for i in range(count)]
    return [f"Question: {q}\nAnswer:" for q in items]


@torch.no_grad()
def seconds_to_generate(model, tokenizer, prompts: list[str], new_tokens: int, beams: int, processors=()) -> float:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    out = model.generate(
        **enc, logits_processor=list(processors), do_sample=False, num_beams=beams,
        num_return_sequences=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
    )
    seconds = time.perf_counter() - start
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return seconds


def measure(members, batch: int, beams: int, new_tokens: int, top_k: int, repeats: int) -> Row:
    (_, primary, primary_tok), auxiliaries = members[0], members[1:]
    prompts = questions(batch)
    alone: dict[str, list[float]] = {name: [] for name, _, _ in members}
    ensemble, ratios, passes = [], [], 0
    for _ in range(repeats):
        for name, model, tokenizer in members:
            alone[name].append(1000 * seconds_to_generate(model, tokenizer, prompts, new_tokens, beams) / new_tokens)
        processor = UniTEProcessor(primary_tok, [Member(m, t, name=n) for n, m, t in auxiliaries], top_k=top_k)
        seconds = seconds_to_generate(primary, primary_tok, prompts, new_tokens, beams, [processor])
        passes = sum(runner.forward_passes for runner in processor.runners)
        ensemble.append(1000 * seconds / new_tokens)
        ratios.append(ensemble[-1] / sum(times[-1] for times in alone.values()))
    median = statistics.median
    setting = f"beams={beams}" if beams > 1 else f"B={batch}"
    return Row(setting, batch, beams, new_tokens, {n: median(t) for n, t in alone.items()}, median(ensemble),
               median(ratios), ratios, passes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--ensemble", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 32])
    parser.add_argument("--beams", type=int, default=4, help="also one beam-search row (0: none)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ROOT / "benchmarks" / "results" / f"throughput-{args.suite}.json"
    members = load_suite(args.suite, args.ensemble)
    measure(members, 2, 1, 2, args.top_k, 1)  # warm-up: byte views, allocator
    rows = [measure(members, b, 1, args.new_tokens, args.top_k, args.repeats) for b in args.batches]
    if args.beams > 1:
        rows.append(measure(members, 1, args.beams, args.new_tokens, args.top_k, args.repeats))
    names = [m[0] for m in members]
    print(f"ms/step, {args.suite} suite, {args.new_tokens} new tokens, top_k={args.top_k}, "
          f"torch threads={torch.get_num_threads()}, median of {args.repeats} interleaved repeat(s)")
    print(f"{'setting':<9}" + "".join(f"{n[:22]:>24}" for n in names) + f"{'ensemble':>10}{'ratio':>7}  repeats")
    for row in rows:
        cells = "".join(f"{row.members_ms_per_step[n]:>24.1f}" for n in names)
        spread = ", ".join(f"{r:.2f}" for r in row.repeat_ratios)
        print(f"{row.setting:<9}{cells}{row.ensemble_ms_per_step:>10.1f}{row.ratio:>7.2f}  {spread}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this run: {peak_mb:.0f} MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "suite": args.suite, "members": names, "top_k": args.top_k, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "new_tokens": args.new_tokens, "machine": platform.platform(),
        "rows": [asdict(r) for r in rows], "peak_rss_mb": peak_mb,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
