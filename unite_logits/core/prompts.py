"""Each member's prompt for a row of the primary's batch: its own ids, as a sync to grow.

By default an auxiliary reads the primary's prompt text (decoded without special tokens)
re-encoded by its own tokenizer with its own BOS; a member that shares the primary's
vocabulary takes the primary's ids as they are (`IdSync`). An override (a chat template's
output, say) replaces that default: a string encoded verbatim, a list of ids, or one entry
per batch row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sync import IdSync, TokenSync
from .token_bytes import TokenBytes

__all__ = ["MemberPrompt", "PromptSource", "strip_left_padding"]

MemberPrompt = str | Sequence[int] | Sequence[str | Sequence[int] | None]
Sync = IdSync | TokenSync


def strip_left_padding(rows: Sequence[Sequence[int]], pad: int | None) -> list[tuple[int, ...]]:
    """Each row without the leading ``pad`` ids that left-pad it in a batch."""
    prompts = []
    for ids in rows:
        start = 0
        while pad is not None and start < len(ids) and ids[start] == pad:
            start += 1
        prompts.append(tuple(ids[start:]))
    return prompts


class PromptSource:
    """Where one member's row prompts come from.

    Args:
        index: the member's position in ``member_prompts`` (for messages).
        view: the member's tokenizer as bytes.
        primary_view: the primary's.
        override: the member's entry of ``member_prompts`` (None: the default).
    """

    def __init__(self, index: int, view: TokenBytes, primary_view: TokenBytes, override: MemberPrompt | None) -> None:
        self.index = index
        self.view = view
        self.primary_view = primary_view
        self.override = override
        self.shares_vocab = view.id_bytes == primary_view.id_bytes

    def sync(self, row: int, primary_prompt: tuple[int, ...]) -> Sync:
        """The member's ids for ``row``, from its override or the primary's prompt ids."""
        override = self._row_override(row)
        if self.shares_vocab:
            return IdSync(primary_prompt if override is None else self._ids_of(override))
        if override is None:
            text = str(self.primary_view.tokenizer.decode(list(primary_prompt), skip_special_tokens=True))
            return TokenSync.from_text(self.view, text)
        return TokenSync.from_ids(self.view, self._ids_of(override))

    def _row_override(self, row: int) -> str | list[int] | None:
        prompt = self.override
        if prompt is None or isinstance(prompt, str):
            return prompt
        items: list[Any] = list(prompt)
        if items and isinstance(items[0], int):
            return [int(i) for i in items]
        if row >= len(items):
            raise ValueError(f"`member_prompts[{self.index}]` has {len(items)} rows, but the batch has more")
        entry = items[row]
        return entry if isinstance(entry, str) or entry is None else [int(i) for i in entry]

    def _ids_of(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("a member prompt is empty")
            return self.view.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return prompt
