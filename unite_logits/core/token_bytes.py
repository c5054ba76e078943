"""What each token of a vocabulary stands for, as bytes.

Every cross-vocabulary comparison in this library goes through this view: two tokens
from different tokenizers are "the same candidate" when they stand for the same bytes.
The bytes are derived from the tokenizer's own decoder configuration (byte-level table,
metaspace/replace rules, byte fallback, word-piece prefixes), so no code elsewhere knows
about marker characters such as a leading-space glyph or ``<0xNN>`` tokens.

Special tokens (BOS, EOS, chat markers, ``<unk>``, padding) stand for no text: their bytes
are ``None``. End-of-sequence is matched across vocabularies by role instead.

Building a view walks the whole vocabulary once (about a second per 100k tokens), so views
are built lazily and cached per tokenizer object: every processor that uses the same
tokenizer shares one view.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

__all__ = ["TokenBytes", "token_bytes_view", "bytes_to_unicode"]

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_FIRST_PIECE_CACHE_SIZE = 65536


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE decoders."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


class _DecoderRules:
    """Per-token part of a `tokenizers` decoder chain, applied to one token string.

    Only the steps that act on single tokens matter here. Steps that act on the joined text
    (`Fuse`, `Strip` of the first leading space, cleanup) describe how a *whole sequence*
    is printed, not what one token stands for, so they are ignored.
    """

    def __init__(self, decoder_config: dict[str, Any] | None) -> None:
        self.steps: list[dict[str, Any]] = []
        self.supported = True
        self._collect(decoder_config)

    def _collect(self, config: dict[str, Any] | None) -> None:
        if config is None:
            return
        kind = config.get("type")
        if kind == "Sequence":
            for child in config.get("decoders", []):
                self._collect(child)
        elif kind in {"ByteLevel", "Metaspace", "Replace", "ByteFallback", "WordPiece", "BPEDecoder"}:
            self.steps.append(config)
        elif kind in {"Fuse", "Strip", "CTC"}:
            return
        else:
            self.supported = False

    def token_bytes(self, token: str) -> bytes:
        """The bytes one token stands for in the middle of a text."""
        text: str | bytes = token
        pieces: list[bytes] | None = None
        for step in self.steps:
            kind = step["type"]
            if kind == "ByteLevel":
                table = _unicode_to_byte()
                assert isinstance(text, str)
                return b"".join(
                    bytes([table[c]]) if c in table else c.encode("utf-8") for c in text
                )
            if kind == "ByteFallback":
                assert isinstance(text, str)
                match = _BYTE_FALLBACK.match(text)
                if match:
                    pieces = [bytes([int(match.group(1), 16)])]
                    text = ""
            elif kind == "Metaspace":
                assert isinstance(text, str)
                text = text.replace(step.get("replacement", "\u2581"), " ")
            elif kind == "Replace":
                assert isinstance(text, str)
                pattern = step["pattern"]
                if "String" in pattern:
                    text = text.replace(pattern["String"], step["content"])
                else:
                    text = re.sub(pattern["Regex"], step["content"], text)
            elif kind == "WordPiece":
                assert isinstance(text, str)
                prefix = step.get("prefix", "##")
                text = text[len(prefix):] if text.startswith(prefix) else " " + text
            elif kind == "BPEDecoder":
                assert isinstance(text, str)
                suffix = step.get("suffix", "</w>")
                if text.endswith(suffix):
                    text = text[: -len(suffix)] + " "
        if pieces is not None:
            return b"".join(pieces)
        assert isinstance(text, str)
        return text.encode("utf-8")


class TokenBytes:
    """A tokenizer seen as bytes: id -> bytes, bytes -> id, end-of-sequence by role.

    Args:
        tokenizer: a fast (Rust-backed) Hugging Face tokenizer.
        eos_token_ids: extra ids that end a sequence (for example from a model's generation
            config); the tokenizer's own ``eos_token_id`` is always included.

    Raises:
        TypeError: if ``tokenizer`` is not a Hugging Face tokenizer with a Rust backend.
        ValueError: if the tokenizer has no end-of-sequence token at all.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: Iterable[int] = ()) -> None:
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                f"expected a transformers tokenizer, but got {type(tokenizer).__name__}"
            )
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} has no Rust backend; unite-logits needs a fast "
                "tokenizer (load it with use_fast=True)"
            )
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        eos = {int(i) for i in eos_token_ids}
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        if not eos:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r} has no EOS token; set `eos_token` on it or "
                "pass `eos_token_ids`"
            )
        self.eos_ids: frozenset[int] = frozenset(eos)
        self.eos_id: int = (
            int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else min(eos)
        )
        self.unk_id: int | None = tokenizer.unk_token_id
        # A private copy of the backend that encodes special-token strings as plain text, so a
        # candidate such as "<|im_end|>" written out by another model never becomes a control token.
        # Truncation and padding set on the shared tokenizer would cut or pad every re-encoding.
        self._encoder = backend.__class__.from_str(backend.to_str())
        self._encoder.encode_special_tokens = True
        self._encoder.no_truncation()
        self._encoder.no_padding()
        self._rules = _DecoderRules(json.loads(backend.to_str()).get("decoder"))
        strings: list[str | None] = list(tokenizer.convert_ids_to_tokens(list(range(self.size))))
        self.id_bytes: list[bytes | None] = self._build_id_bytes(strings)
        # How each token is *written* when it turns up inside encoded text: special tokens by
        # their literal string (a tokenizer may spell the text "<|im_end|>" with that token).
        self._spelling: list[bytes] = [
            data if data is not None else (token or "").encode("utf-8")
            for data, token in zip(self.id_bytes, strings)
        ]
        self.byte_ids: dict[bytes, int] = self._build_reverse(strings)
        self._longest_token = max((len(b) for b in self.byte_ids), default=0)
        self._first_piece: dict[tuple[bytes, bool], int | None] = {}
        self.adds_leading_space = self._detect_leading_space()

    # -- construction -------------------------------------------------------------------
    def _build_id_bytes(self, strings: list[str | None]) -> list[bytes | None]:
        tok = self.tokenizer
        specials = set(tok.all_special_ids) | set(self.eos_ids)
        if self.unk_id is not None:
            specials.add(self.unk_id)
        added = {
            idx: (token.content, bool(token.special))
            for idx, token in tok.added_tokens_decoder.items()
        }
        out: list[bytes | None] = []
        for idx, token in enumerate(strings):
            if idx in specials or token is None:
                out.append(None)
            elif idx in added:
                content, special = added[idx]
                out.append(None if special else content.encode("utf-8"))
            elif self._rules.supported:
                out.append(self._rules.token_bytes(token))
            else:
                out.append(self._probe_bytes(idx))
        return out

    def _probe_bytes(self, idx: int) -> bytes | None:
        """Fallback for decoders this module does not interpret: decode after an anchor."""
        found = self.tokenizer.convert_tokens_to_ids("a")
        anchor = idx if not isinstance(found, int) or found == self.unk_id else found
        base = str(self.tokenizer.decode([anchor]))
        text = str(self.tokenizer.decode([anchor, idx]))
        if not text.startswith(base) or "\ufffd" in text[len(base):]:
            return None
        return text[len(base):].encode("utf-8")

    def _build_reverse(self, strings: list[str | None]) -> dict[bytes, int]:
        """bytes -> id, preferring an ordinary token over a byte-fallback one."""
        reverse: dict[bytes, int] = {}
        for idx, data in enumerate(self.id_bytes):
            if not data:
                continue
            previous = reverse.get(data)
            if previous is None:
                reverse[data] = idx
            elif _BYTE_FALLBACK.match(strings[previous] or "") and not _BYTE_FALLBACK.match(
                strings[idx] or ""
            ):
                reverse[data] = idx
        return reverse

    def _detect_leading_space(self) -> bool:
        """Whether encoding a bare word invents a leading space (SentencePiece dummy prefix)."""
        ids = self._encoder.encode("a", add_special_tokens=False).ids
        return self.join(ids) == b" a"

    # -- queries ------------------------------------------------------------------------
    def bytes_of(self, token_id: int) -> bytes | None:
        """Bytes of one token, or None for special tokens and ids outside the vocabulary."""
        if 0 <= token_id < self.size:
            return self.id_bytes[token_id]
        return None

    def join(self, ids: Sequence[int]) -> bytes:
        """The text a token sequence writes (special tokens as their literal strings)."""
        return b"".join(self._spelling[i] for i in ids if 0 <= i < self.size)

    def encode_text(self, text: str) -> list[int] | None:
        """Ids whose bytes are exactly ``text``, or None if this tokenizer cannot say it alone.

        A tokenizer that prepends a space to its input (a SentencePiece "dummy prefix") cannot
        encode a text that starts mid-word; for a text that starts with a space the prefix is
        used as that space. Special-token strings inside ``text`` stay plain text.
        Cost: one call of the Rust encoder on ``text``.
        """
        if not text:
            return []
        target = text.encode("utf-8")
        ids = self._encoder.encode(text, add_special_tokens=False).ids
        got = self.join(ids)
        if got == target and not self._has_unknown(ids):
            return ids
        if got == b" " + target and text.startswith(" "):
            ids = self._encoder.encode(text[1:], add_special_tokens=False).ids
            if self.join(ids) == target and not self._has_unknown(ids):
                return ids
        return None

    def encode_approximately(self, text: str) -> list[int]:
        """This tokenizer's closest spelling of ``text`` when it has no exact one.

        A leading bare-space token invented by a dummy prefix is dropped.
        """
        ids = self._encoder.encode(text, add_special_tokens=False).ids
        if len(ids) > 1 and self.bytes_of(ids[0]) == b" " and not text.startswith(" "):
            ids = ids[1:]
        return ids

    def _has_unknown(self, ids: Sequence[int]) -> bool:
        return self.unk_id is not None and self.unk_id in ids

    def first_piece(self, data: bytes, skip_bare_space: bool = True) -> int | None:
        """The id that starts this tokenizer's spelling of ``data`` (None if it has none).

        This is how a candidate that is not one token of this vocabulary is scored: through
        the first token this tokenizer would use to write it. A first piece that is only a
        space is skipped when more pieces follow, so " 你好" is scored by "你好" rather than by
        a bare space. What the tokenizer cannot write exactly (bytes that are not UTF-8, a
        mid-word start for a tokenizer that prepends a space) is scored through the longest
        vocabulary token that writes a prefix of it. Results are cached.

        With ``skip_bare_space=False`` the bare space is kept: that is the token a model must
        *emit* to start writing ``data``.
        """
        key = (data, skip_bare_space)
        if key in self._first_piece:
            return self._first_piece[key]
        piece = self._compute_first_piece(data, skip_bare_space)
        if len(self._first_piece) >= _FIRST_PIECE_CACHE_SIZE:
            self._first_piece.clear()
        self._first_piece[key] = piece
        return piece

    def _compute_first_piece(self, data: bytes, skip_bare_space: bool) -> int | None:
        direct = self.byte_ids.get(data)
        if direct is not None:
            return direct
        try:
            ids = self.encode_text(data.decode("utf-8"))
        except UnicodeDecodeError:
            ids = None
        if ids:
            if skip_bare_space and len(ids) > 1 and self.bytes_of(ids[0]) == b" ":
                ids = ids[1:]
            if self.bytes_of(ids[0]) is not None:  # a vocabulary may spell "<pad>" with its control token
                return ids[0]
        return self._longest_token_prefix(data)

    def _longest_token_prefix(self, data: bytes) -> int | None:
        """The longest token that writes a prefix of ``data`` (for what encode cannot write)."""
        for end in range(min(len(data), self._longest_token), 0, -1):
            token = self.byte_ids.get(data[:end])
            if token is not None:
                return token
        return None


_VIEWS: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[frozenset[int], TokenBytes]]" = (
    weakref.WeakKeyDictionary()
)
_VIEWS_LOCK = threading.Lock()


def token_bytes_view(
    tokenizer: PreTrainedTokenizerBase, eos_token_ids: Iterable[int] = ()
) -> TokenBytes:
    """The shared, lazily built `TokenBytes` of ``tokenizer`` (cached per tokenizer)."""
    key = frozenset(int(i) for i in eos_token_ids)
    with _VIEWS_LOCK:
        per_tokenizer = _VIEWS.setdefault(tokenizer, {})
        view = per_tokenizer.get(key)
        if view is None:
            view = TokenBytes(tokenizer, key)
            per_tokenizer[key] = view
        return view
