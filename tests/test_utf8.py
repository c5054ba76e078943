from hypothesis import given, strategies as st

from unite_logits.core.utf8 import split_utf8


@given(st.binary(max_size=40))
def test_pieces_and_pending_rebuild_the_input(data):
    split = split_utf8(data)
    rebuilt = b"".join(p.encode("utf-8") if isinstance(p, str) else bytes([p]) for p in split.pieces)
    assert rebuilt + split.pending == data


@given(st.binary(max_size=40))
def test_pending_is_a_short_fragment_that_can_still_complete(data):
    pending = split_utf8(data).pending
    assert len(pending) <= 3
    if pending:
        assert 0xC2 <= pending[0] <= 0xF4
        completions = [pending + bytes([0x80 + i]) * (4 - len(pending)) for i in range(64)]
        assert any(_decodes_prefix(c, len(pending)) for c in completions)


def _decodes_prefix(candidate: bytes, keep: int) -> bool:
    for end in range(keep + 1, len(candidate) + 1):
        try:
            candidate[:end].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


@given(st.text(max_size=30))
def test_valid_text_passes_through_whole(text):
    split = split_utf8(text.encode("utf-8"))
    assert "".join(p for p in split.pieces if isinstance(p, str)) == text
    assert split.pending == b""
    assert all(isinstance(p, str) for p in split.pieces)


def test_a_split_character_is_held_back_then_released():
    data = "é🙂".encode("utf-8")
    assert split_utf8(data[:1]).pending == data[:1]
    assert split_utf8(data[:4]).pieces == ("é",) and split_utf8(data[:4]).pending == data[2:4]
    assert split_utf8(b"\xff").pieces == (0xFF,)
    assert split_utf8(b"\xe4\xbdx").pieces == (0xE4, 0xBD, "x")
