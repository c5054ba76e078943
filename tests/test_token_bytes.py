"""The byte view: what each token stands for, derived from the tokenizer alone."""

import pytest
from hypothesis import given, settings

from testkit import tiny
from testkit.strategies import texts
from unite_logits.core.token_bytes import TokenBytes, bytes_to_unicode, token_bytes_view


def test_byte_table_is_a_bijection_over_all_bytes():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256


@pytest.mark.parametrize("name", tiny.LOSSLESS)
@settings(max_examples=80)
@given(text=texts)
def test_token_bytes_agree_with_the_tokenizers_own_decoder(name, text):
    """Joined token bytes read as the tokenizer's decode of the same ids (up to the one
    leading space a SentencePiece decoder strips), and usually as the text itself."""
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    ids = view._encoder.encode(text, add_special_tokens=False).ids
    joined = view.join(ids).decode("utf-8", errors="replace")
    decoded = view.tokenizer.decode(ids)
    assert joined in (decoded, " " + decoded)
    if "\u2581" not in text and "<0x" not in text:
        assert joined in (text, " " + text)


def test_marker_newline_and_byte_fallback_tokens_mean_their_bytes():
    byte_level = token_bytes_view(tiny.byte_bpe())
    assert byte_level.bytes_of(byte_level.tokenizer.convert_tokens_to_ids("\u0120")) == b" "
    assert byte_level.bytes_of(byte_level.tokenizer.convert_tokens_to_ids("\u010a")) == b"\n"
    sentencepiece = token_bytes_view(tiny.sp_bpe())
    assert sentencepiece.bytes_of(sentencepiece.tokenizer.convert_tokens_to_ids("<0x0A>")) == b"\n"
    assert sentencepiece.bytes_of(sentencepiece.tokenizer.convert_tokens_to_ids("\u2581")) == b" "
    # the same newline is found across the two vocabularies by its bytes
    assert byte_level.byte_ids[b"\n"] == byte_level.tokenizer.convert_tokens_to_ids("\u010a")
    assert sentencepiece.bytes_of(sentencepiece.byte_ids[b"\n"]) == b"\n"


def test_reverse_map_prefers_a_real_token_over_byte_fallback():
    view = token_bytes_view(tiny.sp_bpe())
    assert view.tokenizer.convert_ids_to_tokens(view.byte_ids[b" "]) == "\u2581"


def test_special_tokens_stand_for_no_text(any_tokenizer):
    _, tokenizer = any_tokenizer
    view = token_bytes_view(tokenizer)
    for token_id in tokenizer.all_special_ids:
        assert view.bytes_of(token_id) is None
    assert view.eos_id == tokenizer.eos_token_id
    assert view.bytes_of(view.size + 5) is None


def test_view_is_cached_per_tokenizer():
    tokenizer = tiny.byte_bpe()
    assert token_bytes_view(tokenizer) is token_bytes_view(tokenizer)
    assert token_bytes_view(tokenizer, [5]) is not token_bytes_view(tokenizer)
    assert 5 in token_bytes_view(tokenizer, [5]).eos_ids


def test_dummy_prefix_is_detected_and_used_as_the_space():
    view = token_bytes_view(tiny.unigram())
    assert view.adds_leading_space
    assert view.join(view.encode_text(" hello")) == b" hello"
    assert view.encode_text("hello") is None  # cannot start mid-word
    assert not token_bytes_view(tiny.byte_bpe()).adds_leading_space


def test_tokenizer_without_eos_is_rejected():
    tokenizer = tiny.wordpiece().__class__(tokenizer_object=tiny.wordpiece().backend_tokenizer)
    with pytest.raises(ValueError, match="no EOS"):
        TokenBytes(tokenizer)


def test_non_tokenizer_is_rejected():
    with pytest.raises(TypeError, match="expected a transformers tokenizer"):
        TokenBytes("gpt2")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", tiny.LOSSLESS)
def test_first_piece_rules(name):
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    whole = view.byte_ids[b" the"] if b" the" in view.byte_ids else None
    if whole is not None:
        assert view.first_piece(b" the") == whole
    # a bare-space first piece is skipped when more follows
    assert view.bytes_of(view.first_piece(" 東京".encode())) != b" "
    # invalid UTF-8 goes through the single-byte token
    assert view.bytes_of(view.first_piece(b"\xff\xfe")) == b"\xff"


@pytest.mark.parametrize("name", tiny.LOSSLESS)
@settings(max_examples=80)
@given(text=texts)
def test_first_piece_starts_the_candidate(name, text):
    """The first piece writes the start of the candidate (after a skipped bare space)."""
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    data = text.encode("utf-8")
    piece = view.first_piece(data)
    if not data or "\u2581" in text or piece is None:
        return  # None: the tokenizer writes it starting with <unk> or a special token
    written = view.bytes_of(piece)
    assert written and (data.startswith(written) or (data[:1] == b" " and data[1:].startswith(written)))


def test_first_piece_of_a_special_token_string_is_a_text_token():
    """A Unigram vocabulary holds "<pad>" as a piece of its own: the text " <pad>" must still be
    scored through a text token, never through the control token (found by hypothesis)."""
    view = token_bytes_view(tiny.unigram())
    assert view.tokenizer.convert_tokens_to_ids("<pad>") in view._encoder.encode(" <pad>", add_special_tokens=False).ids
    piece = view.first_piece(b" <pad>")
    assert piece is not None and view.bytes_of(piece) and b" <pad>".startswith(view.bytes_of(piece))


def test_candidate_starting_with_unknown_gets_no_piece():
    view = token_bytes_view(tiny.wordpiece())
    assert view.unk_id is not None
    assert view.first_piece("\u2603".encode()) is None  # the snowman is not in its vocabulary


def test_private_encoder_ignores_truncation_and_padding_of_the_shared_tokenizer():
    import copy

    tokenizer = copy.deepcopy(tiny.byte_bpe())
    text = "The quick brown fox jumps over the lazy dog"
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(expected) > 4
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    tokenizer.backend_tokenizer.enable_padding(length=64, pad_id=tokenizer.pad_token_id or 0)
    trapped = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert trapped[:3] == expected[:3] and len(trapped) == 64  # the trap is set: cut to 3, padded to 64
    view = TokenBytes(tokenizer)
    assert view.encode_text(text) == expected
    assert view.encode_approximately(text) == expected
