"""A prompt checked and encoded for every model before any generation starts.

A prompt is text or a list of chat messages. `check_prompt` refuses what no model can use
(blank text, lone surrogates, malformed messages); `encode_prompt` gives each model its own
ids (its own chat template for a conversation); `PreparedPrompt` carries the result. A prompt
past the primary's context window would otherwise run for minutes on positions the model
was never trained on (RoPE extrapolates silently), so `check_fits` refuses it up front.

The error types are importable without torch or transformers (the command line catches them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from ..core.checks import context_window

if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..remote import RemoteMember

__all__ = [
    "Prompt",
    "PromptError",
    "PromptTooLongError",
    "PreparedPrompt",
    "check_text",
    "check_prompt",
    "check_fits",
    "encode_prompt",
    "messages_of",
    "token_ids",
]

Prompt = Union[str, Sequence[Mapping[str, str]], Sequence[int]]
"""Text, a conversation (chat messages), or the primary's token ids (as OpenAI completions take)."""


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


def token_ids(prompt: Prompt) -> list[int] | None:
    """The prompt's token ids if it is given as ids, else None."""
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [int(t) for t in prompt]
    return None


def check_prompt(prompt: Prompt) -> None:
    """A prompt is non-blank valid text, a non-empty list of chat messages, or non-negative ids."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty")
        check_text(prompt)
        return
    ids = token_ids(prompt)
    if ids is not None:
        if min(ids) < 0:
            raise PromptError("the prompt holds negative token ids")
        return
    if not prompt or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt):
        raise PromptError("a chat prompt has to be a non-empty list of {'role': ..., 'content': ...} messages")
    for index, message in enumerate(prompt):
        check_text(str(message["content"]), f"message {index}")  # type: ignore[index]


def check_fits(model: Any, name: str, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt whose tokens plus ``max_new_tokens`` do not fit ``model``'s context window."""
    window = context_window(model)
    if window is not None and prompt_tokens + max_new_tokens > window:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens for {name}, whose context window is {window} "
            f"(max_position_embeddings); with max_new_tokens={max_new_tokens} it needs "
            f"{prompt_tokens + max_new_tokens}: shorten the prompt"
        )


def messages_of(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat messages (text is one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]  # type: ignore[arg-type]


def encode_prompt(loaded: "LoadedModel | RemoteMember", prompt: Prompt, *, chat: bool) -> list[int]:
    """Token ids of ``prompt`` as this model expects them.

    With ``chat`` the model's own chat template is applied (generation prompt added); a model
    without one gets the plain text, with a warning (`unite_logits.core.chat.chat_prompt_ids`).
    Without ``chat`` the text is encoded as the tokenizer does by default (with BOS where the
    tokenizer adds one).
    """
    from ..core.chat import chat_prompt_ids, plain_text

    if chat:
        return chat_prompt_ids(loaded.tokenizer, messages_of(prompt), name=loaded.name)
    text = prompt if isinstance(prompt, str) else plain_text(prompt)  # type: ignore[arg-type]
    return list(loaded.tokenizer(text)["input_ids"])


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt checked for every model: the primary's ids, and each auxiliary's ids for a chat."""

    prompt: Prompt
    chat: bool
    primary_ids: list[int]
    member_ids: list[list[int] | None]  # None: the auxiliary re-encodes the primary's prompt text
