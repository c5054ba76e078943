"""Concurrent requests to `unite-logits serve`: batched together against one at a time, in one run.

C clients (the official ``openai`` client, one thread each) send one greedy chat request
each at the same moment (distinct GSM8K questions, ``max_tokens`` N) to a server on
127.0.0.1 started in this process. Two servers share the loaded ensemble: ``--max-batch 1``
(one generation at a time, as before batching) and ``--max-batch 8`` (requests that arrive
together run as the rows of one batch). For each C, repeats alternate between the two; rows
give medians and

    speed-up = wall seconds one at a time / wall seconds batched   (same requests, same answers)

Greedy answers do not depend on the mode, so both modes generate the same tokens; the run
also reports how many batched answers equal their one-at-a-time answer.

    python -m benchmarks.serving --suite tiny
    python -m benchmarks.serving --suite real --clients 1 4 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import openai
import torch

from benchmarks.throughput import questions

from unite_logits.apps.serving import BackgroundServer, ServerSettings

ROOT = Path(__file__).resolve().parent.parent

MODES = {"one at a time": 1, "batched": 8}


@dataclass
class Row:
    clients: int
    max_tokens: int
    wall_s: dict[str, float]  # median per mode
    completion_tokens: int
    tokens_per_s: dict[str, float]
    mean_request_s: dict[str, float]
    speedup: float
    repeat_speedups: list[float]
    same_answers: int


def send_together(url: str, prompts: list[str], max_tokens: int) -> tuple[float, list[str], int, float]:
    """All prompts at once, one thread each: wall seconds, answers, completion tokens, mean request seconds."""
    client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=1800)
    answers: list[str] = [""] * len(prompts)
    tokens = [0] * len(prompts)
    seconds = [0.0] * len(prompts)
    start = threading.Barrier(len(prompts) + 1)

    def ask(index: int) -> None:
        start.wait()
        began = time.perf_counter()
        response = client.chat.completions.create(model="bench", max_tokens=max_tokens,
                                                  messages=[{"role": "user", "content": prompts[index]}])
        seconds[index] = time.perf_counter() - began
        answers[index] = response.choices[0].message.content or ""
        tokens[index] = response.usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, answers, sum(tokens), statistics.mean(seconds)


def load(suite: str, names: list[str]):
    if suite == "tiny":
        from testkit.tiny_ensemble import tiny_ensemble

        return tiny_ensemble()
    from unite_logits import Ensemble

    return Ensemble.load(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--ensemble", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per row (default 2)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/serving-SUITE.json)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / f"serving-{args.suite}.json"
    ensemble = load(args.suite, args.ensemble)
    servers = {mode: BackgroundServer(ensemble, ServerSettings("bench", max_batch=size)).start()
               for mode, size in MODES.items()}
    rows = []
    try:
        for mode, server in servers.items():  # warm-up: byte views, allocator, HTTP connections
            send_together(server.url, questions(2), 2)
        for clients in args.clients:
            prompts = questions(clients)
            walls: dict[str, list[float]] = {mode: [] for mode in MODES}
            means: dict[str, list[float]] = {mode: [] for mode in MODES}
            answers: dict[str, list[str]] = {}
            tokens = 0
            for _ in range(args.repeats):
                for mode, server in servers.items():
                    wall, answers[mode], tokens, mean = send_together(server.url, prompts, args.max_tokens)
                    walls[mode].append(wall)
                    means[mode].append(mean)
            wall_s = {mode: statistics.median(values) for mode, values in walls.items()}
            rows.append(Row(
                clients=clients, max_tokens=args.max_tokens, wall_s=wall_s, completion_tokens=tokens,
                tokens_per_s={mode: tokens / wall for mode, wall in wall_s.items()},
                mean_request_s={mode: statistics.median(values) for mode, values in means.items()},
                speedup=wall_s["one at a time"] / wall_s["batched"],
                repeat_speedups=[a / b for a, b in zip(walls["one at a time"], walls["batched"])],
                same_answers=sum(a == b for a, b in zip(answers["one at a time"], answers["batched"])),
            ))
    finally:
        for server in servers.values():
            server.stop()
    print(f"concurrent chat requests, {args.suite} suite, max_tokens={args.max_tokens}, "
          f"torch threads={torch.get_num_threads()}, median of {args.repeats} interleaved repeat(s)")
    print(f"{'clients':>7}{'tokens':>8}{'1-at-a-time s':>15}{'batched s':>11}{'tok/s 1x1':>11}{'tok/s batch':>13}"
          f"{'speed-up':>10}{'same':>6}  repeats")
    for row in rows:
        spread = ", ".join(f"{r:.2f}" for r in row.repeat_speedups)
        print(f"{row.clients:>7}{row.completion_tokens:>8}{row.wall_s['one at a time']:>15.2f}"
              f"{row.wall_s['batched']:>11.2f}{row.tokens_per_s['one at a time']:>11.1f}"
              f"{row.tokens_per_s['batched']:>13.1f}{row.speedup:>10.2f}{row.same_answers:>4}/{row.clients}  {spread}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "suite": args.suite, "members": [m.name for m in ensemble.models], "threads": torch.get_num_threads(),
        "repeats": args.repeats, "machine": platform.platform(), "modes": MODES,
        "rows": [asdict(r) for r in rows],
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
