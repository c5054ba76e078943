"""Greedy free generation of one model, optionally through a logits processor.

Members alone and the ensemble go through this one function (the ensemble only adds
its processor), so their outputs differ by the ensembling and nothing else.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

__all__ = ["Generation", "generate", "cut_at_stop"]


@dataclass(frozen=True)
class Generation:
    """The response text (cut before any stop string), new tokens produced, wall seconds."""

    text: str
    tokens: int
    seconds: float


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Text before the earliest stop string (generation may overshoot by a token)."""
    cut = min((i for s in stop_strings if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _greedy_config(model: Any, tokenizer: Any, max_new_tokens: int, stop_strings: Sequence[str]) -> Any:
    """The model's generation config made greedy; stop strings live in it (not as kwargs)."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.stop_strings = list(stop_strings) or None
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return config


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    processor: LogitsProcessor | None = None,
) -> Generation:
    """Greedy decoding that stops at EOS or a stop string; counts generated tokens."""
    start = time.perf_counter()
    encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
    kwargs: dict[str, Any] = {"tokenizer": tokenizer} if stop_strings else {}
    if processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    output = model.generate(
        **encoded, generation_config=_greedy_config(model, tokenizer, max_new_tokens, stop_strings), **kwargs
    )
    new_tokens = output[0, encoded["input_ids"].shape[1]:]
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    return Generation(cut_at_stop(text, stop_strings), int(new_tokens.numel()), time.perf_counter() - start)
