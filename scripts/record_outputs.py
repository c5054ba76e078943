"""Record what the ensemble generates, to show that a refactoring changed no output.

Run from the repository root (``testkit`` is imported from there):

    python scripts/record_outputs.py --suite tiny --out before-tiny.json
    python scripts/record_outputs.py --suite real --out before-real.json
    python scripts/record_outputs.py --compare before-tiny.json after-tiny.json

Each case is run through stock ``model.generate`` with a `UniTEProcessor` (greedy, sampled
with a seed, beams, a left-padded batch, sequential and concurrent members) and through
`Ensemble` (text, chat, batch); the token ids of every output row are written. ``--compare``
reports every case whose ids differ (exit status 1 if any does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

PROMPTS = (
    "The quick brown fox",
    "Question: What is 12 plus 30? Answer:",
    "café au lait, 東京 🙂 and",
)
CASES: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False},
    "greedy_sequential": {"do_sample": False, "concurrent": False},
    "sampled": {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "seed": 7},
    "beams": {"do_sample": False, "num_beams": 3, "num_return_sequences": 3},
}


def _suite(name: str) -> tuple[Any, Any, list[Any], Any]:
    """Primary model and tokenizer, auxiliary members, and an `Ensemble` of the same models.

    The tiny suite uses only tokenizers whose training is deterministic across processes
    (byte-level and SentencePiece BPE; the Unigram and WordPiece trainers are not).
    """
    from unite_logits import Ensemble, Member
    from unite_logits.models.loading import LoadedModel

    if name == "tiny":
        from testkit import tiny

        tok, sp = tiny.byte_bpe(), tiny.sp_bpe()
        primary = tiny.tiny_llama(tok, seed=0)
        loaded = [LoadedModel(primary, tok, "p"), LoadedModel(tiny.tiny_gemma3(sp, seed=3, sliding_window=6), sp, "g"),
                  LoadedModel(tiny.tiny_llama(sp, seed=4), sp, "l")]
    else:
        from unite_logits.models.loading import load_model

        loaded = [load_model("smollm2-135m-instruct"), load_model("gemma3-270m")]
    members = [Member.from_loaded(m) for m in loaded[1:]]
    return loaded[0].model, loaded[0].tokenizer, members, Ensemble(loaded, top_k=5)


def _ensemble_texts(ensemble: Any, new_tokens: int) -> dict[str, Any]:
    """What `Ensemble` answers (text, chat, a batch), through this version's API."""
    try:
        from unite_logits import GenerationOptions
    except ImportError:  # before GenerationOptions reached Ensemble
        keywords: dict[str, Any] = {"max_new_tokens": new_tokens}
        args: tuple[Any, ...] = ()
    else:
        keywords, args = {}, (GenerationOptions(max_new_tokens=new_tokens),)
    out: dict[str, Any] = {}
    for index, prompt in enumerate(PROMPTS):
        out[f"ensemble_text/{index}"] = ensemble.generate(prompt, *args, **keywords).text
        out[f"ensemble_chat/{index}"] = ensemble.generate(prompt, *args, chat=True, **keywords).text
    out["ensemble_batch"] = [r.text for r in ensemble.generate_batch(list(PROMPTS), *args, **keywords)]
    return out


def record(suite: str, new_tokens: int) -> dict[str, Any]:
    from unite_logits import UniTEProcessor

    torch.set_num_threads(2)
    model, tokenizer, members, ensemble = _suite(suite)
    out: dict[str, Any] = {}
    for case, settings in CASES.items():
        settings = dict(settings)
        concurrent = settings.pop("concurrent", True)
        seed = settings.pop("seed", None)
        for index, prompt in enumerate(PROMPTS):
            if seed is not None:
                torch.manual_seed(seed)
            inputs = tokenizer(prompt, return_tensors="pt")
            with UniTEProcessor(tokenizer, members, top_k=5, concurrent=concurrent) as processor:
                ids = model.generate(**inputs, logits_processor=[processor], max_new_tokens=new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, **settings)
            out[f"{case}/{index}"] = ids[:, inputs["input_ids"].shape[1]:].tolist()
    tokenizer.padding_side = "left"
    batch = tokenizer(list(PROMPTS), return_tensors="pt", padding=True)
    with UniTEProcessor(tokenizer, members, top_k=5) as processor:
        ids = model.generate(**batch, logits_processor=[processor], max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    out["batch"] = ids[:, batch["input_ids"].shape[1]:].tolist()
    out.update(_ensemble_texts(ensemble, new_tokens))
    return out


def compare(before: Path, after: Path) -> int:
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    differ = [case for case in old if old[case] != new.get(case)]
    missing = [case for case in old if case not in new]
    print(f"{len(old) - len(differ)} of {len(old)} cases identical" + (f"; differ: {differ}" if differ else ""))
    if missing:
        print(f"missing in {after}: {missing}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    result = record(args.suite, args.new_tokens)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
