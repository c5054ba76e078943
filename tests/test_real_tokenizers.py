"""Alignment and sync properties on the three REAL tokenizers of the catalogue.

Byte-level BPE 49k (SmolLM2), SentencePiece 262k with byte fallback (Gemma 3), byte-level
BPE 152k (Qwen2.5). No forward pass: these run in seconds once the tokenizers are cached.
"""

import itertools
import random

import pytest
from hypothesis import assume, given, settings, strategies as st

from testkit.real_models import REAL_MODEL_NAMES, load_real_tokenizer
from testkit.strategies import chunked, texts
from unite_logits.core.alignment import EOS, candidate_key
from unite_logits.core.sync import TokenSync
from unite_logits.core.token_bytes import token_bytes_view

pytestmark = pytest.mark.real_models


@pytest.fixture(scope="module", params=REAL_MODEL_NAMES)
def real_view(request):
    return request.param, token_bytes_view(load_real_tokenizer(request.param))


@pytest.fixture(scope="module")
def all_views():
    return {name: token_bytes_view(load_real_tokenizer(name)) for name in REAL_MODEL_NAMES}


def test_views_agree_with_the_tokenizers_decoder_on_every_token(real_view):
    """Each token's bytes, decoded, read as the tokenizer's own decode of it after an anchor."""
    name, view = real_view
    tok = view.tokenizer
    anchor = tok("a", add_special_tokens=False)["input_ids"][0]
    base = tok.decode([anchor])
    rng = random.Random(0)
    sample = rng.sample(range(view.size), 3000)
    checked = 0
    for token_id in sample:
        data = view.bytes_of(token_id)
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a fragment of a character: the decoder would print a replacement
        assert tok.decode([anchor, token_id]) == base + text, (name, token_id)
        checked += 1
    assert checked > 2000


def test_newline_space_and_specials(real_view):
    name, view = real_view
    tok = view.tokenizer
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert view.join(newline) == b"\n"
    assert view.bytes_of(view.byte_ids[b"\n"]) == b"\n"
    for special in tok.all_special_ids:
        assert view.bytes_of(special) is None
        key = candidate_key(view, special)
        assert key is EOS or key == ("special", tok.convert_ids_to_tokens(special))
    assert candidate_key(view, view.eos_id) is EOS
    assert view.unk_id is None or view.bytes_of(view.unk_id) is None


@pytest.mark.parametrize("name", REAL_MODEL_NAMES)
@settings(max_examples=40)
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=25))
def test_streamed_sync_equals_full_encoding(name, text, cuts):
    view = token_bytes_view(load_real_tokenizer(name))
    prompt = "Question: What is 12 plus 30?\nAnswer:"
    expected = view.tokenizer(prompt + text, split_special_tokens=True)["input_ids"]
    lead = 1 if view.bytes_of(expected[0]) is None else 0
    assume(view.join(expected[lead:]) == (prompt + text).encode("utf-8"))
    sync = TokenSync.from_text(view, prompt)
    for chunk in chunked(text.encode("utf-8"), cuts):
        sync.push(chunk)
    assert sync.ready and sync.ids == expected


@pytest.mark.parametrize("source,target", list(itertools.permutations(REAL_MODEL_NAMES, 2)))
def test_every_token_maps_to_a_piece_that_writes_its_start(all_views, source, target):
    """Every text token of one vocabulary (a sample of 20k for the big ones) is scored in
    another through a token that writes the start of its bytes, never through text markers."""
    src, dst = all_views[source], all_views[target]
    ids = [i for i, data in enumerate(src.id_bytes) if data]
    if len(ids) > 20000:
        ids = random.Random(1).sample(ids, 20000)
    unmapped = 0
    for token_id in ids:
        data = src.id_bytes[token_id]
        piece = dst.first_piece(data)
        if piece is None:
            unmapped += 1
            continue
        written = dst.bytes_of(piece)
        assert written, (source, target, data)
        assert data.startswith(written) or (data[:1] == b" " and data[1:].startswith(written)), (data, written)
        # the pitfall: a marker rewritten literally would spell its glyph, e.g. 'Ä' or 'ł'
        if data.isascii():
            assert written.isascii(), (data, written)
    assert unmapped <= len(ids) * 0.001
