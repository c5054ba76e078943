"""Latency of the ensemble against its members alone, in one run on one machine.

Prints a table and writes JSON. For each setting (prompt x generated length) it measures
ms/token of every member generating alone and of the ensemble (primary + auxiliaries via
UniTEProcessor), all greedy with exactly N new tokens, and reports

    ratio = ensemble ms/token / sum of the members' ms/token
    step ratio = the same for the median decoding step (prefill and set-up excluded)

Each repeat runs the members alone and then the ensemble back to back; rows give medians.

Targets (issue: core processor): ratio <= 1.05 and ms/token at the longest length <= 1.1 x
that at the shortest (per-token cost flat in generated length). Ratios, not absolute times,
are the comparable numbers: absolute times drift on shared machines.

    python -m benchmarks.latency --suite tiny
    python -m benchmarks.latency --suite real --ensemble smollm2-135m-instruct gemma3-270m

``--suite real`` needs the catalogue models installed (see README); the tiny suite needs
nothing but this repository.
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
from transformers import LogitsProcessor

from unite_logits import Member, UniTEProcessor

ROOT = Path(__file__).resolve().parent.parent

SHORT_PROMPT = "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?\nAnswer:"


@dataclass
class Row:
    setting: str
    new_tokens: int
    prompt_tokens: int
    members_ms_per_token: dict[str, float]
    ensemble_ms_per_token: float
    ratio: float
    members_step_ms: dict[str, float]
    ensemble_step_ms: float
    step_ratio: float
    repeat_ratios: list[float]
    repeat_step_ratios: list[float]
    auxiliary_refills: int


class StepClock(LogitsProcessor):
    """Last in the processor list: the time of every decoding step, prefill excluded.

    Consecutive calls are one step apart (the primary's forward pass, every processor,
    the token choice), so their median gap is the steady-state cost per token.
    """

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.times.append(time.perf_counter())
        return scores

    def median_step_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return 1000 * statistics.median(gaps) if gaps else float("nan")


def gsm_prompt(shots: int = 4) -> str:
    """A ~1,000-1,500 token 4-shot GSM8K prompt from the shared data, if present."""
    path = ROOT.parent / "shared" / "data" / "GSM" / "gsm_prompt.txt"
    if not path.exists():
        return (SHORT_PROMPT + "\n") * 40
    return path.read_text() + "\nQuestion: Janet's ducks lay 16 eggs per day. How much does she make?\nAnswer:"


def load_suite(suite: str, names: list[str]) -> list[tuple[str, torch.nn.Module, object]]:
    if suite == "tiny":
        from testkit import tiny

        makers = [(tiny.byte_bpe, tiny.tiny_llama), (tiny.sp_bpe, tiny.tiny_llama), (tiny.unigram, tiny.tiny_gpt2)]
        return [(f"tiny-{m[0].__name__}", m[1](m[0]()), m[0]()) for m in makers[: max(2, len(names) or 2)]]
    from unite_logits.models.loading import load_model

    loaded = []
    for name in names:
        model, tokenizer = load_model(name)
        loaded.append((name, model, tokenizer))
    return loaded


@torch.no_grad()
def time_generate(model, tokenizer, prompt: str, new_tokens: int, processors=()) -> tuple[float, float, int]:
    """Seconds to generate exactly ``new_tokens`` tokens, median step ms, and prompt length."""
    enc = tokenizer(prompt, return_tensors="pt")
    clock = StepClock()
    start = time.perf_counter()
    out = model.generate(
        **enc, logits_processor=[*processors, clock], do_sample=False,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id,
    )
    seconds = time.perf_counter() - start
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return seconds, clock.median_step_ms(), int(enc["input_ids"].shape[1])


@torch.no_grad()
def ms_per_token(model, tokenizer, new_tokens: int, processor=None, prompt: str = SHORT_PROMPT) -> float:
    """Wall ms per token of one greedy generation of exactly ``new_tokens`` (prefill included)."""
    enc = tokenizer(prompt, return_tensors="pt")
    started = time.perf_counter()
    model.generate(**enc, logits_processor=[processor] if processor else [], do_sample=False,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.eos_token_id)
    return 1000 * (time.perf_counter() - started) / new_tokens


def measure(members, prompt_name: str, prompt: str, new_tokens: int, top_k: int, repeats: int) -> Row:
    """Each repeat runs every member alone, then the ensemble, back to back.

    Interleaving keeps slow drift of a shared machine from favouring one side; each
    repeat gives a ratio, and the row reports the medians.
    """
    (_, primary, primary_tok), auxiliaries = members[0], members[1:]
    alone: dict[str, list[float]] = {name: [] for name, _, _ in members}
    alone_step: dict[str, list[float]] = {name: [] for name, _, _ in members}
    ensemble, ensemble_step, ratios, step_ratios, refills = [], [], [], [], 0
    for _ in range(repeats):
        for name, model, tokenizer in members:
            seconds, step, _ = time_generate(model, tokenizer, prompt, new_tokens)
            alone[name].append(1000 * seconds / new_tokens)
            alone_step[name].append(step)
        processor = UniTEProcessor(primary_tok, [Member(m, t, name=n) for n, m, t in auxiliaries], top_k=top_k)
        seconds, step, prompt_tokens = time_generate(primary, primary_tok, prompt, new_tokens, [processor])
        refills += sum(runner.refills for runner in processor.runners)
        ensemble.append(1000 * seconds / new_tokens)
        ensemble_step.append(step)
        ratios.append(ensemble[-1] / sum(times[-1] for times in alone.values()))
        step_ratios.append(step / sum(steps[-1] for steps in alone_step.values()))
    median = statistics.median
    return Row(
        prompt_name, new_tokens, prompt_tokens,
        {name: median(times) for name, times in alone.items()}, median(ensemble), median(ratios),
        {name: median(steps) for name, steps in alone_step.items()}, median(ensemble_step), median(step_ratios),
        ratios, step_ratios, refills,
    )


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
    print(f"ms/token, {args.suite} suite, top_k={args.top_k}, torch threads={torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved repeat(s)")
    print(f"{'prompt':<7}{'tokens':>7}{'prompt_len':>11}" + "".join(f"{n[:22]:>24}" for n in names)
          + f"{'ensemble':>10}{'ratio':>7}{'step ratio':>12}{'refills':>9}")
    for row in rows:
        cells = "".join(f"{row.members_ms_per_token[n]:>24.1f}" for n in names)
        print(f"{row.setting:<7}{row.new_tokens:>7}{row.prompt_tokens:>11}{cells}"
              f"{row.ensemble_ms_per_token:>10.1f}{row.ratio:>7.2f}{row.step_ratio:>12.2f}{row.auxiliary_refills:>9}")
    print("ratio: ensemble ms/token over the sum of the members'; step ratio: the same for the median "
          "decoding step (prefill excluded)")
    flat = {}
    for name in args.prompts:
        per = {r.new_tokens: r for r in rows if r.setting == name}
        shortest, longest = per[min(per)], per[max(per)]
        flat[name] = {
            "ms_per_token": longest.ensemble_ms_per_token / shortest.ensemble_ms_per_token,
            "step_ms": longest.ensemble_step_ms / shortest.ensemble_step_ms,
        }
        print(f"flatness ({name}): ensemble at {longest.new_tokens} / at {shortest.new_tokens} tokens = "
              f"{flat[name]['ms_per_token']:.2f} (ms/token), {flat[name]['step_ms']:.2f} (median step)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this run: {peak_mb:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "suite": args.suite, "members": names, "top_k": args.top_k, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "machine": platform.platform(), "rows": [asdict(r) for r in rows],
        "flatness": flat, "peak_rss_mb": peak_mb,
    }, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
