"""Constrained multiple choice: the best option letter at the first answer position.

The ensemble is scored by calling the *same* processor used for generation once on the
primary's logits for the prompt, so constrained and free modes share one ensembling
path. A member alone is scored from its own log-softmax.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

__all__ = ["Choice", "letter_token_ids", "pick_letter", "choose"]

_LETTER_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Choice:
    letter: str | None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _single_token(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _scan_vocabulary(tokenizer: Any, wanted: set[str]) -> dict[str, list[int]]:
    """Tokens whose decoded text is a letter or space+letter (for unusual tokenizers)."""
    found: dict[str, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if text in wanted:
            found.setdefault(text.strip(), []).append(token_id)
    return found


def letter_token_ids(tokenizer: Any, letters: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Token ids of each letter, with and without a leading space (cached per tokenizer).

    Letters that encode to no single token either way are looked up in the vocabulary by
    decoded text; a letter with no token at all is left out (it can never be chosen).
    """
    cache = _LETTER_CACHE.setdefault(tokenizer, {})
    missing = [letter for letter in letters if letter not in cache]
    unresolved = []
    for letter in missing:
        ids = {i for v in (letter, " " + letter) if (i := _single_token(tokenizer, v)) is not None}
        if ids:
            cache[letter] = tuple(sorted(ids))
        else:
            unresolved.append(letter)
    if unresolved:
        scanned = _scan_vocabulary(tokenizer, {v for l in unresolved for v in (l, " " + l)})
        for letter in unresolved:
            cache[letter] = tuple(sorted(set(scanned.get(letter, []))))
    return {letter: cache[letter] for letter in letters if cache[letter]}


def pick_letter(scores: torch.Tensor, letter_ids: Mapping[str, Sequence[int]]) -> Choice:
    """Highest-scoring letter (best of its token variants); None if all are -inf."""
    row = scores.reshape(-1).float()
    best = {letter: float(row[list(ids)].max()) for letter, ids in letter_ids.items() if ids}
    finite = {k: v for k, v in best.items() if v != float("-inf")}
    letter = max(finite, key=finite.__getitem__) if finite else None  # ties: first letter
    return Choice(letter, best)


@torch.inference_mode()
def choose(
    model: Any,
    tokenizer: Any,
    prompt: str,
    letters: Sequence[str],
    processor: LogitsProcessor | None = None,
) -> Choice:
    """One forward pass on the prompt; the processor (if any) turns logits into scores."""
    start = time.perf_counter()
    encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
    logits = model(**encoded).logits[:, -1, :]
    if processor is None:
        scores = torch.log_softmax(logits.float(), dim=-1)
    else:
        scores = processor(encoded["input_ids"], logits)
    choice = pick_letter(scores, letter_token_ids(tokenizer, letters))
    return Choice(choice.letter, choice.scores, time.perf_counter() - start)
