"""Greedy free generation of one model for an evaluation item, through the one generation path.

Members alone and the ensemble both go through `unite_logits.ensemble.streaming.generate_rows`
(the path of ``generate``, ``chat`` and ``serve``); the ensemble only adds its processor, so
their outputs differ by the ensembling and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import LogitsProcessor

from unite_logits.ensemble.options import GenerationOptions
from unite_logits.ensemble.prompts import PreparedPrompt
from unite_logits.ensemble.streaming import GenerationRequest, GenerationResult, generate_rows
from unite_logits.models.loading import LoadedModel

__all__ = ["generate"]


def generate(
    member: LoadedModel,
    prompt: str,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    processor: LogitsProcessor | None = None,
) -> GenerationResult:
    """Greedy decoding of ``prompt`` (the tokenizer's own encoding, BOS included) that stops at
    EOS or before a stop string."""
    ids = list(member.tokenizer(prompt)["input_ids"])
    request = GenerationRequest(PreparedPrompt(prompt, False, ids, []),
                                GenerationOptions(max_new_tokens=max_new_tokens, stop=tuple(stop_strings)))
    return generate_rows(member, [request], [processor] if processor is not None else [])[0]
