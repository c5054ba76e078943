"""The measures of the compatibility report: accuracy and length/style per candidate, and
vocabulary overlap and top-k agreement per pair.

Answer style heuristic (documented because it is one): a response is "step-by-step"
when it has two or more non-empty lines, or more than 30 words, or a reasoning marker
("step", "first", "then", "therefore", "because", "so", or an "=" calculation);
otherwise "direct". A model's style is the majority label of its responses.

Cost: `token_texts` decodes each vocabulary once per tokenizer (cached); `top_k_agreement`
runs one forward pass per model and context.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unite_logits.evaluation.runs import SystemRun
from unite_logits.evaluation.summary import Comparison
from unite_logits.models.loading import LoadedModel

__all__ = [
    "CandidateProfile",
    "answer_style",
    "token_texts",
    "vocabulary_overlap",
    "top_k_texts",
    "top_k_agreement",
    "profile_candidates",
    "probe_contexts",
]

_MARKERS = re.compile(r"\b(step|first|then|therefore|because|so)\b|=", re.IGNORECASE)
_TEXT_CACHE: "weakref.WeakKeyDictionary[Any, list[str | None]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class CandidateProfile:
    """What one candidate did alone on the dev slice."""

    name: str
    accuracy: float
    n: int
    mean_chars: float
    mean_words: float
    step_share: float
    style: str


def answer_style(text: str) -> str:
    """"step-by-step" or "direct" by the heuristic in the module docstring."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 2 or len(text.split()) > 30 or _MARKERS.search(text):
        return "step-by-step"
    return "direct"


def token_texts(tokenizer: Any) -> list[str | None]:
    """Decoded text of every token id (None for special tokens); cached per tokenizer."""
    if tokenizer not in _TEXT_CACHE:
        special = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        _TEXT_CACHE[tokenizer] = [
            None if i in special or t is None else tokenizer.convert_tokens_to_string([t])
            for i, t in enumerate(tokens)
        ]
    return _TEXT_CACHE[tokenizer]


def vocabulary_overlap(tok_a: Any, tok_b: Any) -> float:
    """Share of ``tok_a``'s distinct token texts that are also token texts of ``tok_b``."""
    texts_a = {t for t in token_texts(tok_a) if t}
    texts_b = {t for t in token_texts(tok_b) if t}
    return len(texts_a & texts_b) / len(texts_a) if texts_a else 0.0


def _key(text: str | None) -> str:
    """Comparison key of a token text: stripped, since decoders differ on leading spaces."""
    if text is None:
        return "\0special"
    return text.strip() or text


@torch.inference_mode()
def top_k_texts(model: Any, tokenizer: Any, context: str, k: int) -> list[str]:
    """Comparison keys of the model's k most likely next tokens after ``context``."""
    encoded = tokenizer(context, return_tensors="pt").to(model.device)
    logits = model(**encoded).logits[0, -1, : len(tokenizer)]
    texts = token_texts(tokenizer)
    return [_key(texts[i]) for i in torch.topk(logits, min(k, logits.numel())).indices.tolist()]


def top_k_agreement(a: LoadedModel, b: LoadedModel, contexts: Sequence[str], k: int = 10) -> tuple[float, float]:
    """(share of contexts where a's top-1 is in b's top-k, and the reverse)."""
    if not contexts:
        return (0.0, 0.0)
    hits_ab = hits_ba = 0
    for context in contexts:
        ta, tb = top_k_texts(a.model, a.tokenizer, context, k), top_k_texts(b.model, b.tokenizer, context, k)
        hits_ab += ta[0] in tb
        hits_ba += tb[0] in ta
    return (hits_ab / len(contexts), hits_ba / len(contexts))


def profile_candidates(systems: Sequence[SystemRun], comparison: Comparison) -> list[CandidateProfile]:
    """Accuracy (the task's first metric, from the comparison) and length/style of the generated
    answers (generative tasks; a log-likelihood task has none: zero length, no style)."""
    profiles = []
    first = comparison.metrics[0] if comparison.metrics else None
    for system in systems:
        outputs = [r["output"] for r in system.records if isinstance(r["output"], str)]
        n = max(1, len(outputs))
        step = sum(answer_style(o) == "step-by-step" for o in outputs) / n
        accuracy = comparison.result(system.name, first).value if first else 0.0
        profiles.append(CandidateProfile(
            system.name, accuracy, len(system.records), sum(len(o) for o in outputs) / n,
            sum(len(o.split()) for o in outputs) / n, step,
            ("step-by-step" if step >= 0.5 else "direct") if outputs else "n/a (log-likelihood task)",
        ))
    return profiles


def probe_contexts(prompts: Sequence[str], outputs: Sequence[Sequence[str]]) -> list[str]:
    """Contexts for top-k agreement: each prompt, and the prompt extended by the first half
    of each candidate's answer (cut at a space)."""
    contexts = []
    for prompt, outs in zip(prompts, outputs):
        contexts.append(prompt)
        for out in outs:
            half = out[: len(out) // 2]
            cut = half.rfind(" ")
            if cut > 0:
                contexts.append(prompt + half[:cut])
    return list(dict.fromkeys(contexts))
