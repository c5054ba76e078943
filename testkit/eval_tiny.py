"""Tiny in-process models and data for the evaluation tests (no downloads, seconds).

Two byte-level BPE tokenizers of different sizes (so vocabularies differ), random
``LlamaForCausalLM``s seeded for determinism, and a data folder in the paper's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Answer the question by replying A, B, C or D.",
    "Question: Which is the most likely effect? A: faster B: slower C: same D: none Answer: B",
    "Question: How many eggs? Let's think step by step. 16 - 3 - 4 = 9. The answer is \\boxed{9}",
    "The answer is 18. Therefore, the answer is 1,234 or -5 or 3.5.",
] * 20


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def tiny_members() -> list[Any]:
    """Two tiny `LoadedModel`s, "a" and "b", over byte-level BPE tokenizers of different sizes."""
    from unite_logits import LoadedModel

    tok_a, tok_b = tiny_tokenizer(300), tiny_tokenizer(340)
    return [LoadedModel(tiny_model(tok_a, 0), tok_a, "a"), LoadedModel(tiny_model(tok_b, 1), tok_b, "b")]


def write_data(root: Path, n_arc: int = 6, n_gsm: int = 3) -> Path:
    """A miniature data dir in the paper's layout (ARC with a blank-options quirk, GSM)."""
    (root / "ARC-challenge").mkdir(parents=True)
    rows = [{"question": f"Question {i}?", "A": "one", "B": "two", "C": "three", "D": "four",
             "answer": "ABCD"[i % 4]} for i in range(n_arc)]
    rows.append({"question": "Broken?", "A": "", "B": "", "C": "", "D": "", "answer": "2"})
    (root / "ARC-challenge" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "GSM").mkdir()
    (root / "GSM" / "gsm_prompt.txt").write_text(
        "Question: 1+1?\nLet's think step by step\n1+1=2\nThe answer is \\boxed{2}\n")
    rows = [{"question": f"What is {i}+{i}?", "answer": f"{i}+{i}={2 * i}\nTherefore, the answer is {2 * i}"}
            for i in range(n_gsm)]
    (root / "GSM" / "test.cleand.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
