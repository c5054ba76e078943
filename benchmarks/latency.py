"""Latency of the ensemble against its members alone, in one run on one machine.

Prints a table and writes JSON. For each setting (prompt x generated length) it measures
ms/token of every member generating alone and of the ensemble (primary + auxiliaries via
UniTEProcessor), all greedy with exactly N new tokens, and reports

    ratio = ensemble ms/token / sum of the members' ms/token

Targets (issue: core processor): ratio <= 1.05 and ms/token at the longest length <= 1.1 x
that at the shortest (per-token cost flat in generated length). Ratios, not absolute times,
are the comparable numbers: absolute times drift on shared machines.

    python benchmarks/latency.py --suite tiny
    python benchmarks/latency.py --suite real --ensemble smollm2-135m-instruct gemma3-270m

``--suite real`` needs the catalogue models installed (see README); the tiny suite needs
nothing but this repository.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "testkit"))

from unite_logits import Member, UniTEProcessor  # noqa: E402

SHORT_PROMPT = "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?\nAnswer:"


@dataclass
class Row:
    setting: str
    new_tokens: int
    prompt_tokens: int
    members_ms_per_token: dict[str, float]
    ensemble_ms_per_token: float
    ratio: float


def gsm_prompt(shots: int = 4) -> str:
    """A ~1,000-1,500 token 4-shot GSM8K prompt from the shared data, if present."""
    path = ROOT.parent / "shared" / "data" / "GSM" / "gsm_prompt.txt"
    if not path.exists():
        return (SHORT_PROMPT + "\n") * 40
    return path.read_text() + "\nQuestion: Janet's ducks lay 16 eggs per day. How much does she make?\nAnswer:"


def load_suite(suite: str, names: list[str]) -> list[tuple[str, torch.nn.Module, object]]:
    if suite == "tiny":
        import tiny

        makers = [(tiny.byte_bpe, tiny.tiny_llama), (tiny.sp_bpe, tiny.tiny_llama), (tiny.unigram, tiny.tiny_gpt2)]
        return [(f"tiny-{m[0].__name__}", m[1](m[0]()), m[0]()) for m in makers[: max(2, len(names) or 2)]]
    from unite_logits.loading import load_model

    loaded = []
    for name in names:
        model, tokenizer = load_model(name)
        loaded.append((name, model, tokenizer))
    return loaded


@torch.no_grad()
def time_generate(model, tokenizer, prompt: str, new_tokens: int, processors=(), repeats: int = 1) -> tuple[float, int]:
    """Best-of-``repeats`` seconds to generate exactly ``new_tokens`` tokens, and prompt length."""
    enc = tokenizer(prompt, return_tensors="pt")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(
            **enc, logits_processor=list(processors), do_sample=False,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id,
        )
        best = min(best, time.perf_counter() - start)
        assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return best, int(enc["input_ids"].shape[1])


def measure(members, prompt_name: str, prompt: str, new_tokens: int, top_k: int, repeats: int) -> Row:
    alone: dict[str, float] = {}
    for name, model, tokenizer in members:
        seconds, _ = time_generate(model, tokenizer, prompt, new_tokens, repeats=repeats)
        alone[name] = 1000 * seconds / new_tokens
    (_, primary, primary_tok), auxiliaries = members[0], members[1:]
    processor = UniTEProcessor(primary_tok, [Member(m, t, name=n) for n, m, t in auxiliaries], top_k=top_k)
    seconds, prompt_tokens = time_generate(primary, primary_tok, prompt, new_tokens, [processor], repeats=repeats)
    ensemble = 1000 * seconds / new_tokens
    return Row(prompt_name, new_tokens, prompt_tokens, alone, ensemble, ensemble / sum(alone.values()))


def marginal_costs(rows: list[Row]) -> dict[str, dict[str, float]]:
    """ms per token between consecutive lengths: fixed costs (prefill, set-up) cancel out.

    ``(T(n2) - T(n1)) / (n2 - n1)`` for the ensemble and for the sum of the members alone.
    """
    rows = sorted(rows, key=lambda r: r.new_tokens)
    out = {}
    for short, long in zip(rows, rows[1:]):
        span = long.new_tokens - short.new_tokens

        def slope(before: float, after: float) -> float:
            return (after * long.new_tokens - before * short.new_tokens) / span

        ensemble = slope(short.ensemble_ms_per_token, long.ensemble_ms_per_token)
        members = sum(slope(short.members_ms_per_token[n], long.members_ms_per_token[n])
                      for n in short.members_ms_per_token)
        out[f"{short.new_tokens}-{long.new_tokens}"] = {"ensemble": ensemble, "members": members,
                                                          "ratio": ensemble / members}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--ensemble", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"],
                        help="catalogue names, primary first (real suite)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--prompts", nargs="+", choices=["short", "gsm"], default=["short", "gsm"])
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    members = load_suite(args.suite, args.ensemble)
    # warm-up: first calls pay one-off costs (byte views, allocator)
    measure(members, "warmup", SHORT_PROMPT, 2, args.top_k, 1)
    prompts = {"short": SHORT_PROMPT, "gsm": gsm_prompt()}
    rows = [
        measure(members, name, prompts[name], n, args.top_k, args.repeats)
        for name in args.prompts
        for n in args.new_tokens
    ]
    names = [m[0] for m in members]
    header = f"{'prompt':<7}{'tokens':>7}{'prompt_len':>11}" + "".join(f"{n[:22]:>24}" for n in names) + f"{'ensemble':>10}{'ratio':>7}"
    print(f"ms/token, {args.suite} suite, top_k={args.top_k}, torch threads={torch.get_num_threads()}")
    print(header)
    for row in rows:
        cells = "".join(f"{row.members_ms_per_token[n]:>24.1f}" for n in names)
        print(f"{row.setting:<7}{row.new_tokens:>7}{row.prompt_tokens:>11}{cells}{row.ensemble_ms_per_token:>10.1f}{row.ratio:>7.2f}")
    flat, marginal = {}, {}
    for name in args.prompts:
        per = {r.new_tokens: r.ensemble_ms_per_token for r in rows if r.setting == name}
        lengths = sorted(per)
        flat[name] = per[lengths[-1]] / per[lengths[0]]
        print(f"flatness ({name}): ms/token at {lengths[-1]} / at {lengths[0]} = {flat[name]:.2f}")
        marginal[name] = marginal_costs([r for r in rows if r.setting == name])
        for span, cost in marginal[name].items():
            print(f"  steady state ({name}, tokens {span}): ensemble {cost['ensemble']:.1f} ms/token, "
                  f"members {cost['members']:.1f}, ratio {cost['ratio']:.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this run: {peak_mb:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "suite": args.suite, "members": names, "top_k": args.top_k, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "rows": [asdict(r) for r in rows], "flatness": flat,
        "steady_state": marginal,
        "peak_rss_mb": peak_mb,
    }, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
