"""Checks on a prompt that must come before any generation: valid text, and a length that fits.

Kept free of torch and transformers so the CLI can import the error types at no cost.
A prompt past the primary's context window would otherwise run for minutes on positions
the model was never trained on (RoPE extrapolates silently), so it is refused up front.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PromptError", "PromptTooLongError", "check_text", "context_window", "check_fits"]


class PromptError(ValueError):
    """The prompt cannot be used as given; the message says why."""


class PromptTooLongError(PromptError):
    """Prompt plus the new tokens asked for exceed the primary model's context window."""


def check_text(text: str, what: str = "the prompt") -> None:
    """Text that can be encoded (no lone surrogates, such as undecodable bytes from argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PromptError(
            f"{what} is not valid Unicode text (a lone surrogate at character {error.start}, "
            "often bytes that are not UTF-8); pass UTF-8 text"
        ) from None


def context_window(model: Any) -> int | None:
    """Positions the model was trained on (``max_position_embeddings``, ``n_positions`` or
    ``max_sequence_length`` of its text config), if its config says."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model: Any, name: str, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt whose tokens plus ``max_new_tokens`` do not fit ``model``'s context window."""
    window = context_window(model)
    if window is not None and prompt_tokens + max_new_tokens > window:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens for {name}, whose context window is {window} "
            f"(max_position_embeddings); with max_new_tokens={max_new_tokens} it needs "
            f"{prompt_tokens + max_new_tokens}: shorten the prompt"
        )
