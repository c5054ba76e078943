"""Splitting a byte stream into text an auxiliary can read.

The primary model emits tokens, and a byte-level token may be a fragment of a multi-byte
character. An auxiliary is fed *text*, so fragments are held back until the character is
complete. Held-back bytes are bounded: a fragment that can no longer become a valid
character (random models emit such bytes) is released at once as a raw byte, so an
auxiliary never waits forever and never sees a replacement character.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Utf8Split", "split_utf8"]


@dataclass(frozen=True)
class Utf8Split:
    """Result of `split_utf8`.

    Attributes:
        pieces: in order, either complete text (``str``) or one byte that is not valid UTF-8
            in its place (``int``).
        pending: a trailing fragment (at most 3 bytes) that may still become a character.
    """

    pieces: tuple[str | int, ...]
    pending: bytes


def split_utf8(data: bytes) -> Utf8Split:
    """Split ``data`` into complete text, invalid single bytes and an incomplete tail.

    Cost: linear in ``len(data)``.
    """
    pieces: list[str | int] = []
    start = 0
    while start < len(data):
        try:
            pieces.append(data[start:].decode("utf-8"))
            return Utf8Split(tuple(pieces), b"")
        except UnicodeDecodeError as error:
            bad = start + error.start
            if bad > start:
                pieces.append(data[start:bad].decode("utf-8"))
            if error.reason == "unexpected end of data":
                return Utf8Split(tuple(pieces), data[bad:])
            pieces.append(data[bad])
            start = bad + 1
    return Utf8Split(tuple(pieces), b"")
