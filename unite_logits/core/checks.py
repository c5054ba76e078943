"""Argument checks shared by every layer, each raising one line that names the argument.

Written once so that every constructor refuses the same mistakes in the same words, in the
style of transformers' processors ("`top_k` has to be a positive integer, but is 0"). A
``bool`` is never an integer here, although Python says it is. Also the one reader of a
model's context window. Free of torch and transformers, so the command line imports it cheaply.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

__all__ = ["is_int", "check_int", "check_top_k", "check_weight", "check_seconds", "context_window"]


def is_int(value: Any) -> TypeGuard[int]:
    """True for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` if it is an integer of at least ``minimum``, else a `ValueError` naming ``name``."""
    if not is_int(value) or value < minimum:
        kind = "positive integer" if minimum == 1 else f"integer >= {minimum}" if minimum else "non-negative integer"
        raise ValueError(f"`{name}` has to be a {kind}, but is {value!r}")
    return int(value)


def check_top_k(top_k: Any) -> int:
    """``top_k`` must be a positive integer (any size: it is capped at each vocabulary)."""
    return check_int("top_k", top_k, minimum=1)


def check_weight(name: str, weight: Any) -> float:
    """A weight must be a finite, non-negative number."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"`{name}` has to be a number, but is {type(weight).__name__}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"`{name}` has to be a finite non-negative number, but is {weight}")
    return float(weight)


def check_seconds(name: str, value: Any) -> float:
    """A duration must be a finite positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"`{name}` has to be a positive number of seconds, but is {value!r}")
    return float(value)


def context_window(model: Any) -> int | None:
    """Positions the model was trained on (``max_position_embeddings``, ``n_positions`` or
    ``max_sequence_length`` of its text config), if its config says."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if is_int(value) and value > 0:
            return int(value)
    return None
