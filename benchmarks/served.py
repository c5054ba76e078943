"""An all-served ensemble: every model behind llama-server, the ensemble a light coordinator.

Starts ``llama-server`` for SmolLM2-135M-Instruct (the primary) and Gemma 3 270M on 127.0.0.1
(each ``-t 1``: the machine has 2 cores; ``--swa-full`` for Gemma; one slot per batch row),
then measures, greedy, exactly N new tokens, with interleaved repeats (each repeat runs every
setting back to back; the report gives medians and every repeat):

* ms/token of the all-served pair (a `ServedCausalLM` primary driven by stock ``generate``
  with a `UniTEProcessor` holding a `RemoteMember`), of each served model alone (the same
  ``generate``, no processor), and of the same pair in transformers (fp32, 2 torch threads);
* the coordinator's own work per decoding step: the CPU time of this process (which runs no
  model: HTTP, JSON, ids, the union and alignment) per step, at batch 1 and batch ``--batch``;
* how a step grows with the generated length: wall and coordinator ms per step over the first
  and the last ``--window`` steps of a ``--long``-token generation (a served model is sent
  the row's whole id sequence each step; the server's prefix cache evaluates only the new
  token).

Targets (issue: a served primary): the all-served pair >= 2x faster than the transformers
pair, and <= 1.2x the slowest served model alone.

    python -m benchmarks.served                  # writes benchmarks/results/served.json

Needs llama-server (scripts/install_llama_server.sh) and the two catalogue models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from benchmarks.latency import SHORT_PROMPT
from benchmarks.remote import llama_cpp_build
from unite_logits import Member, UniTEProcessor
from unite_logits.models.catalogue import get_entry
from unite_logits.models.gguf_files import materialize_gguf
from unite_logits.models.loading import load_model
from unite_logits.remote.llama_server import LlamaServer, find_binary
from unite_logits.remote.primary import top_n_for
from unite_logits.remote.spec import remote_member_from_spec, served_primary_from_spec

ROOT = Path(__file__).resolve().parent.parent
PRIMARY, AUXILIARY = "smollm2-135m-instruct", "gemma3-270m"
BATCH_PROMPTS = (SHORT_PROMPT, "The quick brown fox", "Question: What is 12 plus 30?\nAnswer:",
                 "def fibonacci(n):", "Paris is the capital of", "Once upon a time, in a small village,",
                 "The three primary colours are", "To make a cup of tea, first")


class StepClock(LogitsProcessor):
    """Wall and process CPU time at every decoding step (run last, it changes no score)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores

    def step_ms(self, first: int = 0, last: int | None = None) -> tuple[float, float]:
        """Median wall ms and mean coordinator CPU ms per step between calls ``first`` and ``last``."""
        wall, cpu = self.wall[first:last], self.cpu[first:last]
        deltas = [1000 * (b - a) for a, b in zip(wall, wall[1:])]
        return statistics.median(deltas), 1000 * (cpu[-1] - cpu[0]) / (len(cpu) - 1)


@torch.no_grad()
def timed_generate(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int,
                   processor: Any = None) -> tuple[float, StepClock]:
    """Wall ms per generated token (per row-step) of one greedy ``generate`` of exactly ``new_tokens``."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    clock = StepClock()
    started = time.perf_counter()
    out = model.generate(**enc, logits_processor=[*([processor] if processor else []), clock], do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    seconds = time.perf_counter() - started
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return 1000 * seconds / new_tokens, clock


def one_repeat(served: dict[str, Any], local: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Every setting once, back to back."""
    tokens, top_k, row = args.new_tokens, args.top_k, {}
    primary, aux_member, aux_alone = served["primary"], served["aux"], served["aux_alone"]
    row["served_primary_alone"], _ = timed_generate(primary.model, primary.tokenizer, [SHORT_PROMPT], tokens)
    row["served_aux_alone"], _ = timed_generate(aux_alone.model, aux_alone.tokenizer, [SHORT_PROMPT], tokens)
    with UniTEProcessor(primary.tokenizer, [aux_member], top_k=top_k) as proc:
        row["all_served_pair"], clock = timed_generate(primary.model, primary.tokenizer, [SHORT_PROMPT], tokens, proc)
    row["coordinator_cpu_ms_per_step_b1"] = clock.step_ms(1)[1]
    batch = list(BATCH_PROMPTS[: args.batch])
    with UniTEProcessor(primary.tokenizer, [aux_member], top_k=top_k) as proc:
        row[f"all_served_pair_b{args.batch}_ms_per_step"], clock = timed_generate(
            primary.model, primary.tokenizer, batch, tokens, proc)
    row[f"coordinator_cpu_ms_per_step_b{args.batch}"] = clock.step_ms(1)[1]
    with UniTEProcessor(primary.tokenizer, [aux_member], top_k=top_k) as proc:
        _, clock = timed_generate(primary.model, primary.tokenizer, [SHORT_PROMPT], args.long, proc)
    w = args.window
    row["early_step_wall_ms"], row["early_step_cpu_ms"] = clock.step_ms(1, 1 + w)
    row["late_step_wall_ms"], row["late_step_cpu_ms"] = clock.step_ms(args.long - w, None)
    torch.set_num_threads(2)
    with UniTEProcessor(local["primary"].tokenizer, [local["aux"]], top_k=top_k) as proc:
        row["transformers_pair"], _ = timed_generate(local["primary"].model, local["primary"].tokenizer,
                                                     [SHORT_PROMPT], tokens, proc)
    torch.set_num_threads(1)
    return {key: round(value, 2) for key, value in row.items()}


def summarise(rounds: list[dict[str, float]], batch: int) -> dict[str, float]:
    median = {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
    slowest = max(median["served_primary_alone"], median["served_aux_alone"])
    median["ratio_vs_slowest_served_alone"] = round(median["all_served_pair"] / slowest, 2)
    median["speedup_vs_transformers_pair"] = round(median["transformers_pair"] / median["all_served_pair"], 2)
    median["late_over_early_wall"] = round(median["late_step_wall_ms"] / median["early_step_wall_ms"], 2)
    median["late_over_early_cpu"] = round(median["late_step_cpu_ms"] / median["early_step_cpu_ms"], 2)
    return median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per timed generation (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="rows of the batched measurement (default 8)")
    parser.add_argument("--long", type=int, default=256, help="tokens of the length-growth run (default 256)")
    parser.add_argument("--window", type=int, default=32, help="steps compared at its start and end (default 32)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "served.json")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= len(BATCH_PROMPTS):
        parser.error(f"--batch has to be between 1 and {len(BATCH_PROMPTS)}")
    if not 2 <= args.window < args.long:
        parser.error("--window has to be at least 2 and shorter than --long")
    binary = find_binary()
    if binary is None:
        parser.error("llama-server is not installed (bash scripts/install_llama_server.sh)")

    torch.set_num_threads(1)
    local_primary, local_aux = load_model(PRIMARY, progress=False), load_model(AUXILIARY, progress=False)
    local = {"primary": local_primary, "aux": Member(local_aux.model, local_aux.tokenizer, name=AUXILIARY)}
    with tempfile.TemporaryDirectory() as workdir:
        ggufs = {name: materialize_gguf(get_entry(name), Path(workdir)) for name in (PRIMARY, AUXILIARY)}
        slots = max(args.batch, 1)
        with LlamaServer(binary, ggufs[PRIMARY], slots=slots, ctx_per_slot=1024, extra_args=()) as smol, \
                LlamaServer(binary, ggufs[AUXILIARY], slots=slots, ctx_per_slot=1024) as gemma:
            served = {"primary": served_primary_from_spec(f"{PRIMARY}@{smol.url}", top_n=top_n_for(args.top_k)),
                      "aux": remote_member_from_spec(f"{AUXILIARY}@{gemma.url}"),
                      "aux_alone": served_primary_from_spec(f"{AUXILIARY}@{gemma.url}")}
            one_repeat(served, local, args)  # warm-up: byte maps, connections, the servers' first prompts
            rounds = []
            for index in range(args.repeats):
                rounds.append(one_repeat(served, local, args))
                print(f"repeat {index + 1}: {rounds[-1]}", flush=True)
            for model in (served["primary"].model, served["aux_alone"].model):
                model.close()
            served["aux"].close()
    median = summarise(rounds, args.batch)
    report = {
        "benchmark": "all-served ensemble vs transformers (benchmarks/served.py)",
        "models": {"primary": PRIMARY, "auxiliary": AUXILIARY},
        "servers": f"llama-server -t 1 -np {args.batch} -c {1024 * args.batch} (Gemma also --swa-full), Q4 GGUF",
        "llama_cpp": llama_cpp_build(),
        "transformers": "fp32, 2 torch threads, KV cache",
        "settings": vars(args) | {"out": str(args.out)},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__},
        "median": median,
        "repeats": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(median, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
