"""The incremental tail-window sync must equal a full re-encode of the text."""

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from testkit import tiny
from testkit.strategies import chunked, texts
from unite_logits.core.member import LocalRunner
from unite_logits.core.rows import AuxiliaryRows
from unite_logits.core.sync import TokenSync
from unite_logits.core.token_bytes import token_bytes_view

PROMPTS = ["Question: What is", "The quick", "東京", "a"]


def stream(view, prompt, text, cuts):
    sync = TokenSync.from_text(view, prompt)
    for chunk in chunked(text.encode("utf-8"), cuts):
        sync.push(chunk)
    return sync


@pytest.mark.parametrize("name", tiny.LOSSLESS)
@settings(max_examples=60)
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=30), prompt=st.sampled_from(PROMPTS))
def test_streamed_ids_equal_full_encoding(name, text, cuts, prompt):
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    expected = view.tokenizer(prompt + text, split_special_tokens=True)["input_ids"]
    # only texts this tokenizer can write exactly (a metaspace tokenizer reads "\u2581" as a space)
    lead = 1 if view.bytes_of(expected[0]) is None else 0  # a BOS
    assume(view.join(expected[lead:]).lstrip(b" ") == (prompt + text).encode("utf-8").lstrip(b" "))
    sync = stream(view, prompt, text, cuts)
    assert sync.ready
    # model-written text that looks like a special token stays text
    assert sync.ids == expected


@settings(max_examples=30)
@given(words=st.lists(st.sampled_from(["the", "quick", "fox", "café", "42", "muffins", "東京"]), max_size=12))
def test_lossy_tokenizer_gets_its_own_spelling_of_whole_words(words):
    """A lossy tokenizer (WordPiece) cannot write text exactly; fed word by word it still
    ends with its own encoding of the text."""
    view = token_bytes_view(tiny.wordpiece())
    sync = TokenSync.from_text(view, "The quick")
    for word in words:
        sync.push((" " + word).encode("utf-8"))
    expected = view.tokenizer("The quick" + "".join(" " + w for w in words))["input_ids"]
    assert sync.ids == expected


@pytest.mark.parametrize("name", tiny.LOSSLESS)
@given(data=st.binary(max_size=24))
def test_random_bytes_never_freeze_and_never_become_replacement_characters(name, data):
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    sync = TokenSync.from_text(view, "x")
    for byte in data:
        sync.push(bytes([byte]))
    assert len(sync.pending) <= 3
    written = view.join(sync.ids)
    assert "\ufffd".encode() not in written or "\ufffd".encode() in data
    # every byte that was released is in the auxiliary's text, in order (a tokenizer with a
    # dummy prefix may add spaces after a barrier: compare without them)
    released = data[: len(data) - len(sync.pending)]
    if view.adds_leading_space:
        written, released = written.replace(b" ", b""), released.replace(b" ", b"")
    assert written.endswith(released)


def test_partial_character_makes_the_auxiliary_abstain_until_complete():
    view = token_bytes_view(tiny.sp_bpe())
    sync = TokenSync.from_text(view, "I like")
    before = list(sync.ids)
    emoji = " 🙂".encode()
    sync.push(emoji[:2])
    assert not sync.ready
    assert view.join(sync.ids).endswith(b" ")
    sync.push(emoji[2:])
    assert sync.ready
    assert sync.ids == view.tokenizer("I like 🙂")["input_ids"]
    assert sync.ids[: len(before) - 1] == before[:-1]


def test_prompt_given_as_ids_is_never_retokenized():
    view = token_bytes_view(tiny.byte_bpe())
    prompt_ids = view.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    sync = TokenSync.from_ids(view, prompt_ids)
    sync.push(b"Hello there")
    assert sync.ids[: len(prompt_ids)] == prompt_ids
    assert view.join(sync.ids[len(prompt_ids) :]) == b"Hello there"


def test_window_work_does_not_grow_with_text_length(monkeypatch):
    """Per-token encode input stays short however long the text already is."""
    view = token_bytes_view(tiny.byte_bpe())
    sync = TokenSync.from_text(view, "Start")
    seen: list[int] = []
    original = view.encode_text

    def spy(text):
        seen.append(len(text))
        return original(text)

    monkeypatch.setattr(view, "encode_text", spy)
    for _ in range(300):
        sync.push(b" the quick brown fox")
    assert max(seen[-200:]) < 80
    assert sync.ids == view.tokenizer("Start" + " the quick brown fox" * 300)["input_ids"]


@pytest.mark.parametrize("name", ["sp_bpe", "unigram"])
@settings(max_examples=15)
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=20))
def test_cached_distribution_equals_fresh_forward(name, text, cuts):
    """After streaming with cache rollbacks, the cached next-token distribution is exact."""
    tokenizer = tiny.TOKENIZERS[name]()
    view = token_bytes_view(tokenizer)
    model = tiny.tiny_llama(tokenizer, seed=5)
    member = AuxiliaryRows(LocalRunner(model, view.size, "aux"), [TokenSync.from_text(view, "The quick")])
    for chunk in chunked(text.encode("utf-8"), cuts):
        member.push_token(0, 0, chunk)
        if member.votes(0):
            member.refresh()
    member.refresh()
    row = member.rows[0]
    ids = torch.tensor([row.sync.ids])
    fresh = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    assert row.fed == row.sync.ids
    torch.testing.assert_close(member.logprobs[0], fresh, atol=1e-4, rtol=1e-4)


def test_sliding_window_model_rolls_back_past_its_window():
    """Rollback deep into a text longer than a sliding window keeps the exact distribution."""
    tokenizer = tiny.sp_bpe()
    view = token_bytes_view(tokenizer)
    model = tiny.tiny_gemma3(tokenizer, sliding_window=8)
    runner = LocalRunner(model, view.size, "aux")
    member = AuxiliaryRows(runner, [TokenSync.from_text(view, "The quick brown fox jumps over the lazy dog")])
    for word in [" Muff", "ins", " and", " pan", "cakes", " are", " baked", " in", " the", " morn", "ing", "."] * 3:
        member.push_token(0, 0, word.encode())
        member.refresh()
    row = member.rows[0]
    assert len(row.fed) > 3 * 8
    fresh = torch.log_softmax(model(input_ids=torch.tensor([row.sync.ids])).logits[0, -1].float(), -1)
    torch.testing.assert_close(member.logprobs[0], fresh, atol=1e-4, rtol=1e-4)
    # and a rollback several tokens deep, then forward again
    member.cache.drop(0, 5)
    del row.fed[-5:]
    row.sync.changed_from = len(row.fed)
    member.refresh()
    torch.testing.assert_close(member.logprobs[0], fresh, atol=1e-4, rtol=1e-4)
    assert runner.refills == 0


@pytest.mark.parametrize("name", ["sp_bpe", "unigram", "byte_bpe"])
@settings(max_examples=25)
@given(before=texts, ahead=texts, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_rollback_returns_to_the_checkpoint_exactly(name, before, ahead, cuts):
    """Pushing text ahead of time and rolling it back leaves the sync as if never pushed."""
    view = token_bytes_view(tiny.TOKENIZERS[name]())
    sync = TokenSync.from_text(view, "The quick")
    for chunk in chunked(before.encode("utf-8"), cuts):
        sync.push(chunk)
    state = (list(sync.ids), sync.pending, sync.frozen, sync.changed_from)
    sync.checkpoint()
    for chunk in chunked(ahead.encode("utf-8"), cuts):
        sync.push(chunk)
    sync.rollback()
    assert (sync.ids, sync.pending, sync.frozen, sync.changed_from) == state
