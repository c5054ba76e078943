"""An auxiliary's own token ids for a text that grows at its end.

The primary model writes text token by token; each auxiliary must hold *its own*
tokenization of the same text. Re-encoding the whole text every step costs time linear in
its length, so `TokenSync` re-encodes only a short tail window:

1. Complete UTF-8 text is appended; a trailing fragment of a character is held back
   (`unite_logits.utf8`) and the auxiliary abstains until it completes.
2. The window starts at a word boundary a few tokens back (a token that begins with
   whitespace after one that does not), so the tokenizer sees a clean word start.
3. The window is accepted only if re-encoding it reproduces the old tokens up to the
   current word: proof that the boundary is stable for this tokenizer. Otherwise the
   window widens; in the worst case the text after the frozen prefix is re-encoded in full.
4. A tokenizer that cannot write the text exactly (lossy normalisation, a dummy-prefix
   space after a barrier) gets its closest spelling of the new text, frozen at once.
5. Bytes that can never be valid UTF-8 are fed through the tokenizer's single-byte token
   if it has one (byte-level or byte-fallback vocabularies), else skipped. They freeze
   everything before them.

Cost per pushed token: usually one encode of a window of about two words, at most three
window sizes (bounded by ``window`` tokens), independent of the text length; only when no
window verifies is the unfrozen text re-encoded in full (rare; tested on real tokenizers).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

from .token_bytes import TokenBytes
from .utf8 import split_utf8

__all__ = ["IdSync", "TokenSync"]

_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_SyncT = TypeVar("_SyncT", bound="_Ids")


class _Ids:
    """Ids that change at their end, with a record of where they last changed.

    Every change goes through `_replace_from`, so while a journal is open (`checkpoint`) each
    push records just what it overwrote, and `rollback_to` a `mark` taken after any push undoes
    the later ones: O(changed ids), never O(text). Draft-and-verify pushes a whole draft and
    rolls back to the point the ensemble accepted; the per-token path pushes a guessed token
    and rolls back when the guess was wrong.

    ``changed_from`` is the first id that may differ from what the member's cache holds (the
    ids at the last `take_changed_from`): every change, rollbacks included, only lowers it.
    """

    ids: list[int]
    changed_from: int
    _STATE: tuple[str, ...] = ()
    _journal: list[tuple[int, list[int]]] | None = None
    _saved: tuple[object, ...] = ()
    _base: int = 0  # journal entries before this index were released (`release`)

    def fork(self: "_SyncT") -> "_SyncT":
        """An independent copy that shares the immutable tokenizer view: O(ids), no vocabulary copy."""
        twin = copy.copy(self)
        twin.ids = list(self.ids)
        twin._journal = None
        twin._base = 0
        return twin

    # -- a journal of pushes, to roll back to any mark --------------------------------------
    def mark(self) -> tuple[int, tuple[object, ...]]:
        """A point to `rollback_to`; opens the journal if it is closed. Cost: O(1)."""
        if self._journal is None:
            self._journal, self._base = [], 0
        return self._base + len(self._journal), tuple(getattr(self, name) for name in self._STATE)

    def rollback_to(self, point: tuple[int, tuple[object, ...]]) -> None:
        """Undo every change made since ``point`` (a `mark`); the journal stays open."""
        index, state = point
        if self._journal is None or index < self._base:
            raise RuntimeError("rollback to a point that was not marked or was released")
        while self._base + len(self._journal) > index:
            start, old = self._journal.pop()
            self.ids[start:] = old
            self.changed_from = min(self.changed_from, start)
        for name, value in zip(self._STATE, state):
            setattr(self, name, value)

    def release(self, point: tuple[int, tuple[object, ...]] | None = None) -> None:
        """Forget the journal before ``point`` (no rollback can go there any more); None: close it."""
        if point is None or self._journal is None:
            self._journal, self._base = None, 0
            return
        drop = point[0] - self._base
        if drop > 0:
            del self._journal[:drop]
            self._base = point[0]

    # -- one checkpoint (the per-token path's guess) ----------------------------------------
    def checkpoint(self) -> None:
        """Start recording changes, so that `rollback` can return to this state."""
        self.release()
        self._saved = self.mark()

    @property
    def recording(self) -> bool:
        """Whether changes are being recorded since a `checkpoint` or `mark`."""
        return self._journal is not None

    def rollback(self) -> None:
        """Undo every change since `checkpoint` (then recording stops)."""
        if self._journal is None:
            raise RuntimeError("rollback without a checkpoint")
        self.rollback_to(self._saved)  # type: ignore[arg-type]
        self.release()

    def commit(self) -> None:
        """Keep the changes since `checkpoint`; stop recording."""
        self.release()

    def _replace_from(self, start: int, new_ids: Sequence[int]) -> None:
        if self._journal is not None:
            self._journal.append((start, self.ids[start:]))
        self.ids[start:] = new_ids
        self.changed_from = min(self.changed_from, start)

    def take_changed_from(self) -> int:
        """Index of the first id changed since the last call (ids before it are unchanged)."""
        changed, self.changed_from = self.changed_from, len(self.ids)
        return changed


class IdSync(_Ids):
    """An auxiliary with the primary's own vocabulary: the primary's ids are used as they are.

    Re-encoding the primary's text could give other, equally valid ids than the ones the
    primary emitted (non-canonical sequences), so they are passed through instead.
    """

    ready = True

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        self.ids = [int(i) for i in prompt_ids]
        self.changed_from = 0

    def push_token(self, token_id: int, data: bytes | None) -> None:
        self._replace_from(len(self.ids), [token_id])


class TokenSync(_Ids):
    """Token ids of one auxiliary for one batch row.

    Args:
        view: the auxiliary tokenizer's byte view.
        prompt_ids: the auxiliary's prompt ids.
        frozen: how many leading ids are never re-tokenized (special tokens, a prompt given as
            ids). Everything after them must be plain text of ``view``.
        window: at most this many tokens are re-encoded per step before falling back to a
            full re-encode of the unfrozen text.
    """

    _STATE = ("pending", "frozen")

    def __init__(self, view: TokenBytes, prompt_ids: Sequence[int], frozen: int, window: int = 32) -> None:
        self.view = view
        self.ids: list[int] = [int(i) for i in prompt_ids]
        self.frozen = min(frozen, len(self.ids))
        self.window = window
        self.pending = b""
        self.changed_from = 0

    @classmethod
    def from_text(cls, view: TokenBytes, text: str, add_special_tokens: bool = True) -> "TokenSync":
        """Start from a prompt text; only its leading special tokens are frozen."""
        ids = view.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        frozen = 0
        for index, token in enumerate(ids):
            if view.bytes_of(token) is None:
                frozen = index + 1
        return cls(view, ids, frozen)

    @classmethod
    def from_ids(cls, view: TokenBytes, ids: Sequence[int]) -> "TokenSync":
        """Start from prompt ids given verbatim (e.g. a chat template): all of them frozen."""
        return cls(view, ids, len(ids))

    @property
    def ready(self) -> bool:
        """False while the text ends inside an incomplete character: the auxiliary abstains."""
        return not self.pending

    def push(self, data: bytes) -> None:
        """Append the bytes of the primary's newest token."""
        split = split_utf8(self.pending + data)
        for piece in split.pieces:
            if isinstance(piece, str):
                self._append_text(piece)
            else:
                self._append_raw_byte(piece)
        self.pending = split.pending

    def push_token(self, token_id: int, data: bytes | None) -> None:
        """The primary emitted ``token_id`` standing for ``data`` (None: no text, ignored)."""
        if data:
            self.push(data)

    # -- internals ------------------------------------------------------------------------
    def _append_raw_byte(self, byte: int) -> None:
        token = self.view.byte_ids.get(bytes([byte]))
        if token is not None:
            self._replace_from(len(self.ids), [token])
        self.frozen = len(self.ids)

    def _append_text(self, text: str) -> None:
        for start, keep in self._window_attempts():
            tail = self.view.join(self.ids[start:]).decode("utf-8") + text
            new_ids = self.view.encode_text(tail)
            if new_ids is not None and new_ids[:keep] == self.ids[start : start + keep]:
                self._replace_from(start, new_ids)
                return
        unfrozen = self.view.join(self.ids[self.frozen :]).decode("utf-8", errors="replace") + text
        new_ids = self.view.encode_text(unfrozen)
        if new_ids is None:
            # This tokenizer cannot write the text exactly (lossy normalisation, or a dummy
            # prefix space at a mid-word start after a barrier). Take its closest spelling of
            # the new text and freeze it, so the approximation costs nothing later.
            self._replace_from(len(self.ids), self.view.encode_approximately(text))
            self.frozen = len(self.ids)
            return
        self._replace_from(self.frozen, new_ids)

    def _window_attempts(self) -> list[tuple[int, int]]:
        """(start, keep) pairs: re-encode from ``start``; its first ``keep`` ids must not change."""
        lowest = max(self.frozen, len(self.ids) - self.window)
        boundaries = [p for p in range(len(self.ids) - 1, lowest, -1) if self._is_word_start(p)]
        if len(boundaries) < 2:
            boundaries = [
                p for p in range(len(self.ids) - 3, lowest, -1) if self._is_char_start(p)
            ][::2]
        if len(boundaries) < 2:
            return []
        anchor = boundaries[0]
        return [(start, anchor - start) for start in boundaries[1:4]]

    def _is_char_start(self, position: int) -> bool:
        data = self.view.bytes_of(self.ids[position])
        return data is not None and len(data) > 0 and not 0x80 <= data[0] < 0xC0

    def _is_word_start(self, position: int) -> bool:
        data = self.view.bytes_of(self.ids[position])
        before = self.view.bytes_of(self.ids[position - 1])
        if not data or not before:
            return False
        return data[0] in _WHITESPACE and before[-1] not in _WHITESPACE
