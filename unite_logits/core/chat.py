"""Each model formats a conversation with its own chat template.

Chat templates differ between model families (markers, system prompts, BOS handling), so
a conversation is rendered separately for every member. A tokenizer without a template
falls back to the plain text of the messages, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

__all__ = ["chat_prompt_ids", "has_chat_template", "plain_text", "validate_messages"]

Message = Mapping[str, str]


def validate_messages(messages: Sequence[Message]) -> None:
    """Raise a clear error unless ``messages`` is a non-empty list of role/content dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError("`messages` has to be a non-empty list of {'role': ..., 'content': ...} dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise TypeError(f"`messages[{index}]` has to be a dict with string 'role' and 'content'")


def has_chat_template(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    """Whether ``tokenizer`` carries a chat template (so chat formatting needs no fallback)."""
    return bool(getattr(tokenizer, "chat_template", None))


def plain_text(messages: Sequence[Message]) -> str:
    """The fallback rendering: the messages' contents, one paragraph each."""
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], name: str | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Prompt ids of ``messages`` in ``tokenizer``'s own chat template, ready for a reply (or,
    without ``add_generation_prompt``, continuing the last message).

    ``name`` labels the model in the warning given when it has no template.
    """
    validate_messages(messages)
    if has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(
            [dict(message) for message in messages], add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt, tokenize=True, return_dict=False,
        )
        return [int(i) for i in ids]  # type: ignore[arg-type]  # tokenize=True, one conversation: ids
    warnings.warn(
        f"{name or repr(tokenizer.name_or_path)} has no chat template; using the plain text of the messages",
        stacklevel=2,
    )
    return list(tokenizer(plain_text(messages))["input_ids"])
