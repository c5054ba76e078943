"""Draft-and-verify against per-token UniTE, in one run on one machine.

For each setting (models x prompt x new tokens x batch size) and each repeat, back to back:
every model generating alone, the per-token ensemble (``UniTEProcessor`` in stock ``generate``)
and draft-and-verify (``custom_generate=draft_and_verify``), all greedy with exactly N new
tokens per row (``min_new_tokens``). Reported per setting (medians over repeats):

* ms/token of each mode (wall time of the batch / tokens of one row);
* ``spec / sum``: draft-and-verify over the sum of the members alone; ``spec / primary`` and
  ``spec / slowest``: over the primary alone and the slowest member alone; ``per-token / sum``;
* acceptance (drafted tokens kept), mean tokens per round and row, member passes;
* identical: whether draft-and-verify wrote exactly the per-token ensemble's tokens;
* where the time goes (``profile``, last repeat, ms per token): the primary's forward passes,
  the members' forward passes, and the rest of the wall time (alignment, bookkeeping,
  ``generate`` itself), for the per-token ensemble and for draft-and-verify. The members run on
  their workers beside the primary (per-token: every step; draft-and-verify: beside the last
  pass of each draft), so the rest is negative where they overlapped.

``--latency MS`` adds a fixed sleep to every forward pass of the auxiliaries (whatever its
length), as if they ran on devices of their own: what draft-and-verify saves is then the number
of member passes. Targets: real pair, batch 1, 64 tokens: spec / sum <= 0.60 and
below the slower member alone; B=8: <= 0.70 x the sum; injected latency: <= 0.6 x per-token.

    python -m benchmarks.speculative --suite real --new-tokens 64 256 --batch 1 8
    python -m benchmarks.speculative --suite real --latency 100 --new-tokens 64 --batch 1
    python -m benchmarks.speculative --suite tiny --repeats 1      # smoke test, no models needed
    python -m benchmarks.speculative --tables benchmarks/results/speculative-*.json   # the tables again
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unite_logits import Member, SpeculationStats, UniTEProcessor, draft_and_verify
from unite_logits.core.speculation import SCHEDULES, Schedule

ROOT = Path(__file__).resolve().parent.parent
SUITES = {"real": ["smollm2-135m-instruct", "gemma3-270m"],
          "trio": ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]}
SHORT = "Question: What is the capital of France, and what is it known for?\nAnswer:"


def gsm_prompt() -> str:
    """The 4-shot GSM8K prompt of this repository's test data (a repeated short one without it)."""
    path = ROOT.parent / "shared" / "data" / "GSM" / "gsm_prompt.txt"
    if not path.exists():
        return (SHORT + " Paris.\n") * 30 + SHORT
    return path.read_text() + "\nQuestion: Janet's ducks lay 16 eggs per day. How much does she make?\nAnswer:"


PROMPTS = {"short": lambda: SHORT, "gsm8k-4shot": gsm_prompt}
CHAT_QUESTIONS = ["What is the capital of France?", "Why is the sky blue?", "How do I boil an egg?",
                  "Name a famous painter.", "What is machine learning?", "Who wrote Romeo and Juliet?",
                  "What is the largest ocean?", "How many legs does a spider have?"]


@dataclass
class Row:
    models: list[str]
    prompt: str
    prompt_tokens: int
    new_tokens: int
    batch: int
    latency_ms: float
    alone_ms_per_token: dict[str, float]
    per_token_ms_per_token: float
    spec_ms_per_token: float
    ratios: dict[str, float]  # "spec / sum", "spec / primary", "spec / slowest", "per-token / sum", "spec / per-token"
    acceptance: float
    tokens_per_round: float
    member_passes: int
    identical: bool
    gate: float | None = None
    schedule: str = "cost"
    gate_rows_identical: float | None = None
    gate_tokens_agree: float | None = None
    repeats: dict[str, list[float]] = field(default_factory=dict)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)


class Sleepy(torch.nn.Module):
    """Wraps a model's forward with a fixed sleep: a member on a device of its own."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def hook(self, module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        time.sleep(self.seconds)
        return output


class Stopwatch:
    """Wall time inside each watched model's forward passes (a pre-hook starts, a hook stops),
    summed per part ("primary", "members"): the profile of one generation."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: dict[int, float] = {}
        self.handles: list[Any] = []

    def watch(self, part: str, model: Any) -> None:
        def start(module: Any, args: Any) -> None:
            self._started[id(module)] = time.perf_counter()

        def stop(module: Any, args: Any, output: Any) -> None:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - self._started.pop(id(module))

        self.handles += [model.register_forward_pre_hook(start), model.register_forward_hook(stop)]

    def profile(self, total: float, new_tokens: int) -> dict[str, float]:
        """ms per token in each part and the rest of ``total`` seconds; then starts afresh."""
        parts = {part: 1000 * self.seconds.get(part, 0.0) / new_tokens for part in ("primary", "members")}
        parts["rest"] = 1000 * total / new_tokens - sum(parts.values())
        self.seconds = {}
        return {part: round(value, 2) for part, value in parts.items()}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def load(suite: str) -> list[tuple[str, Any, Any]]:
    if suite == "tiny":
        from testkit import tiny

        pairs = [(tiny.byte_bpe(), tiny.tiny_llama), (tiny.sp_bpe(), tiny.tiny_gemma3)]
        return [(f"tiny-{i}", make(tok), tok) for i, (tok, make) in enumerate(pairs)]
    from unite_logits.models.loading import load_model

    return [(name, *load_model(name, progress=False)) for name in SUITES[suite]]


@torch.no_grad()
def timed(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, processor: Any = None,
          speculative: bool = False) -> tuple[float, list[list[int]]]:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    extra: dict[str, Any] = {"custom_generate": draft_and_verify} if speculative else {}
    started = time.perf_counter()
    out = model.generate(**enc, logits_processor=[processor] if processor is not None else None, do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad, **extra)
    seconds = time.perf_counter() - started
    return seconds, out[:, enc["input_ids"].shape[1]:].tolist()


def measure(models: list[tuple[str, Any, Any]], prompt_name: str, new_tokens: int, batch: int, repeats: int,
            latency_ms: float, top_k: int, gate: float | None = None, prompts: list[str] | None = None,
            schedule: Schedule = "cost") -> Row:
    (primary_name, primary, tok), aux = models[0], models[1:]
    prompts = prompts or [PROMPTS[prompt_name]()] * batch
    chunks = [prompts[start:start + batch] for start in range(0, len(prompts), batch)]  # each a batch of rows

    def run(model: Any, tokenizer: Any, make: Any = None, speculative: bool = False) -> tuple[float, list[list[int]], Any]:
        """Seconds per step of a batch (the chunks' total over their count), every row's tokens, and the stats."""
        total, tokens, stats = 0.0, [], []
        for chunk in chunks:
            processor = make() if make is not None else None
            with processor if processor is not None else contextlib.nullcontext():
                seconds, chunk_tokens = timed(model, tokenizer, chunk, new_tokens, processor, speculative)
            total += seconds
            tokens += chunk_tokens
            stats.append(processor.last_speculation if processor is not None else None)
        return total / len(chunks), tokens, stats
    hooks = []
    if latency_ms:
        sleepy = Sleepy(latency_ms / 1000)
        hooks = [model.register_forward_hook(sleepy.hook, with_kwargs=True) for _, model, _ in aux]
    stopwatch = Stopwatch()  # after the sleep hooks: a member's time includes its injected latency
    stopwatch.watch("primary", primary)
    for _, model, _ in aux:
        stopwatch.watch("members", model)
    profile: dict[str, dict[str, float]] = {}
    try:
        samples: dict[str, list[float]] = {name: [] for name, _, _ in models}
        samples |= {"per-token": [], "spec": []}
        per_token_tokens = spec_tokens = None
        stats = None
        for _ in range(repeats):
            for name, model, tokenizer in models:
                seconds, _, _ = run(model, tokenizer)
                samples[name].append(1000 * seconds / new_tokens)
            members = [Member(model, tokenizer, name=name) for name, model, tokenizer in aux]
            stopwatch.profile(0.0, new_tokens)
            seconds, per_token_tokens, _ = run(primary, tok, lambda: UniTEProcessor(tok, members, top_k=top_k))
            profile["per-token"] = stopwatch.profile(seconds * len(chunks), new_tokens * len(chunks))
            samples["per-token"].append(1000 * seconds / new_tokens)
            seconds, spec_tokens, chunk_stats = run(
                primary, tok, lambda: UniTEProcessor(tok, members, top_k=top_k, confidence_gate=gate,
                                                     draft_schedule=schedule), speculative=True)
            profile["spec"] = stopwatch.profile(seconds * len(chunks), new_tokens * len(chunks))
            stats = SpeculationStats(rounds=sum(s.rounds for s in chunk_stats), drafted=sum(s.drafted for s in chunk_stats),
                                     accepted=sum(s.accepted for s in chunk_stats),
                                     ensembled=sum(s.ensembled for s in chunk_stats),
                                     member_passes=sum(s.member_passes for s in chunk_stats))
            samples["spec"].append(1000 * seconds / new_tokens)
    finally:
        stopwatch.close()
        for hook in hooks:
            hook.remove()
    median = {name: statistics.median(values) for name, values in samples.items()}
    alone = {name: median[name] for name, _, _ in models}
    total = sum(alone.values())
    assert stats is not None
    return Row(
        models=[name for name, _, _ in models], prompt=prompt_name,
        prompt_tokens=len(tok(prompts[0])["input_ids"]), new_tokens=new_tokens, batch=batch, latency_ms=latency_ms,
        alone_ms_per_token=alone, per_token_ms_per_token=median["per-token"], spec_ms_per_token=median["spec"],
        ratios={"per-token / sum": median["per-token"] / total, "spec / sum": median["spec"] / total,
                "spec / primary": median["spec"] / alone[primary_name],
                "spec / slowest": median["spec"] / max(alone.values()),
                "spec / per-token": median["spec"] / median["per-token"]},
        acceptance=stats.acceptance,
        tokens_per_round=stats.emitted / max(1, stats.rounds) / min(batch, len(prompts)), member_passes=stats.member_passes,
        identical=per_token_tokens == spec_tokens, gate=gate, schedule=schedule,
        gate_rows_identical=None if gate is None else _rows_identical(per_token_tokens, spec_tokens),
        gate_tokens_agree=None if gate is None else _prefix_agreement(per_token_tokens, spec_tokens),
        repeats={k: [round(v, 2) for v in vs] for k, vs in samples.items()}, profile=profile,
    )


def _rows_identical(a: list[list[int]] | None, b: list[list[int]] | None) -> float:
    assert a is not None and b is not None
    return sum(x == y for x, y in zip(a, b)) / len(a)


def _prefix_agreement(a: list[list[int]] | None, b: list[list[int]] | None) -> float:
    """The share of tokens written before the gated text first departs from exact UniTE."""
    assert a is not None and b is not None
    agreed = 0
    for x, y in zip(a, b):
        agreed += next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), len(x))
    return agreed / sum(len(x) for x in a)


RATIOS = ("per-token / sum", "spec / sum", "spec / primary", "spec / slowest", "spec / per-token")


def table(rows: Sequence[Row]) -> str:
    lines = ["| models | prompt | new | B | latency | schedule | gate | " + " | ".join(RATIOS)
             + " | acceptance | tokens/round | identical |", "|---" * (10 + len(RATIOS)) + "|"]
    for r in rows:
        same = ("yes" if r.identical else "NO") if r.gate is None else (
            f"{100 * (r.gate_rows_identical or 0):.0f} % rows, {100 * (r.gate_tokens_agree or 0):.0f} % tokens")
        lines.append(f"| {' + '.join(r.models)} | {r.prompt} | {r.new_tokens} | {r.batch} | {r.latency_ms:g} ms | "
                     f"{r.schedule} | {'-' if r.gate is None else r.gate} | "
                     + " | ".join(f"{r.ratios[name]:.2f}" for name in RATIOS)
                     + f" | {r.acceptance:.2f} | {r.tokens_per_round:.2f} | {same} |")
    return "\n".join(lines)


def profile_table(rows: Sequence[Row]) -> str:
    """Where each row's time goes: ms/token in the primary's passes, the members' and the rest."""
    lines = ["| models | prompt | new | B | latency | schedule | per-token: primary / members / rest | "
             "spec: primary / members / rest |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [" / ".join(f"{r.profile[mode][part]:.0f}" for part in ("primary", "members", "rest"))
                 for mode in ("per-token", "spec")]
        lines.append(f"| {' + '.join(r.models)} | {r.prompt} | {r.new_tokens} | {r.batch} | {r.latency_ms:g} ms | "
                     f"{r.schedule} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["tiny", "real", "trio"], default="real")
    parser.add_argument("--prompts", nargs="+", choices=list(PROMPTS), default=["short", "gsm8k-4shot"])
    parser.add_argument("--new-tokens", nargs="+", type=int, default=[64])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--latency", type=float, default=0.0, help="ms of sleep per auxiliary forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=["cost"],
                        help="draft schedules to measure, each a row (default: cost, the processor's default)")
    parser.add_argument("--gates", nargs="*", type=float, default=[],
                        help="also draft-and-verify on eight chat questions, one at a time: exact, then with the "
                             "confidence gate at each of these taus (against exact UniTE)")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/speculative-SUITE.json)")
    parser.add_argument("--tables", nargs="+", type=Path, metavar="JSON",
                        help="print the tables of earlier runs' JSON files (in order) and run nothing")
    args = parser.parse_args(argv)
    if args.tables:
        rows = [Row(**row) for path in args.tables for row in json.loads(path.read_text())["rows"]]
        print(table(rows))
        print()
        print(profile_table(rows))
        return 0
    models = load(args.suite)
    rows = []
    for prompt in args.prompts:
        for new_tokens in args.new_tokens:
            for batch in args.batch:
                for schedule in args.schedules:
                    row = measure(models, prompt, new_tokens, batch, args.repeats, args.latency, args.top_k,
                                  schedule=schedule)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    for gate in [None, *args.gates] if args.gates else []:  # exact draft-and-verify on the same prompts first
        for new_tokens in args.new_tokens:
            row = measure(models, "chat-questions", new_tokens, 1, args.repeats, args.latency,
                          args.top_k, gate=gate, prompts=[f"Question: {q}\nAnswer:" for q in CHAT_QUESTIONS])
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    print()
    print(profile_table(rows))
    out = args.out or ROOT / "benchmarks" / "results" / f"speculative-{args.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "torch_threads": torch.get_num_threads(),
                               "rows": [asdict(row) for row in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
