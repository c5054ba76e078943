"""Rollback caches: exact after any drop they allow, bounded in size, refilled when too deep."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformers.cache_utils import DynamicLayer

import tiny
from unite_logits.kv_cache import RollbackSlidingWindowLayer, can_drop, rollback_cache
from unite_logits.member_state import MemberRow, MemberRunner
from unite_logits.sync import IdSync, TokenSync
from unite_logits.token_bytes import token_bytes_view

WINDOW = 6


@pytest.fixture(scope="module")
def sliding_model():
    tokenizer = tiny.sp_bpe()
    return tiny.tiny_gemma3(tokenizer, sliding_window=WINDOW), tokenizer


def fresh_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def sliding_layers(cache):
    return [layer for layer in cache.layers if isinstance(layer, RollbackSlidingWindowLayer)]


def test_full_attention_models_get_plain_layers():
    cache = rollback_cache(tiny.tiny_llama(tiny.byte_bpe()).config)
    assert cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers)


def test_sliding_window_layers_are_replaced_with_their_window(sliding_model):
    model, _ = sliding_model
    cache = rollback_cache(model.config, margin=3)
    layers = sliding_layers(cache)
    assert len(layers) == 2 and {layer.sliding_window for layer in layers} == {WINDOW}
    assert all(layer.margin == 3 for layer in layers)


def test_margin_must_be_positive():
    with pytest.raises(ValueError, match="`margin` has to be a positive integer, but is 0"):
        RollbackSlidingWindowLayer(8, margin=0)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 4)), min_size=1, max_size=25),
    margin=st.integers(1, 4),
)
def test_every_allowed_drop_keeps_the_cache_exact_and_bounded(sliding_model, steps, margin):
    """Random drop/feed sequences: logits equal a fresh forward pass; storage stays bounded."""
    model, tokenizer = sliding_model
    runner = MemberRunner(model, len(tokenizer), cache_margin=margin)
    ids = [1, 5, 9, 14]
    cache = runner.new_cache()
    logprobs = runner.forward(ids, cache)
    for drop, feed in steps:
        drop = min(drop, len(ids) - 1)
        if drop and not can_drop(cache, drop):
            continue
        if drop:
            cache.crop(-drop)
            del ids[-drop:]
        new = [(7 * len(ids) + 3 * i) % 40 + 4 for i in range(feed)]
        ids.extend(new)
        logprobs = runner.forward(new, cache)
        assert all(layer.keys.shape[-2] <= WINDOW - 1 + 2 * margin + feed for layer in sliding_layers(cache))
    torch.testing.assert_close(logprobs, fresh_logprobs(model, ids), atol=1e-4, rtol=1e-4)


def test_drops_within_the_margin_are_always_allowed(sliding_model):
    model, tokenizer = sliding_model
    runner = MemberRunner(model, len(tokenizer), cache_margin=3)
    cache = runner.new_cache()
    runner.forward([4, 5, 6], cache)
    for token in range(7, 40):
        runner.forward([token], cache)
        assert can_drop(cache, 3)
    assert not can_drop(cache, 3 + 2 * 3 + 1)


def test_a_drop_deeper_than_the_cache_holds_is_refused(sliding_model):
    model, tokenizer = sliding_model
    runner = MemberRunner(model, len(tokenizer), cache_margin=2)
    cache = runner.new_cache()
    runner.forward(list(range(4, 40)), cache)
    assert not can_drop(cache, 10)
    with pytest.raises(ValueError, match="cannot drop 10 tokens"):
        cache.crop(-10)


def test_a_rollback_deeper_than_the_cache_holds_refills_it_exactly(sliding_model):
    """The sync may rewrite many tokens at once (a full re-encode): the row refills its cache."""
    model, tokenizer = sliding_model
    runner = MemberRunner(model, len(tokenizer), cache_margin=2)
    row = MemberRow.prefill(runner, IdSync(list(range(4, 30))))
    for token in range(30, 36):
        row.push_token(token, None)
        row.refresh(runner)
    assert runner.refills == 0
    del row.sync.ids[-12:]
    row.sync.ids.extend([5, 6, 7])
    row.sync.changed_from = len(row.sync.ids) - 3
    row.refresh(runner)
    assert runner.refills == 1
    assert row.fed == row.sync.ids
    torch.testing.assert_close(row.logprobs, fresh_logprobs(model, row.sync.ids), atol=1e-4, rtol=1e-4)


def test_streaming_text_keeps_a_sliding_model_within_its_window(sliding_model):
    """A long generated text costs a sliding-window layer its window, not the whole text."""
    model, tokenizer = sliding_model
    view = token_bytes_view(tokenizer)
    runner = MemberRunner(model, view.size, cache_margin=3)
    row = MemberRow.prefill(runner, TokenSync.from_text(view, "The quick brown fox"))
    for word in [" Muff", "ins", " and", " pan", "cakes", " are", " baked", " in", " the", " morn", "ing", "."] * 4:
        row.push_token(0, word.encode())
        row.refresh(runner)
    assert len(row.fed) > 5 * WINDOW
    assert all(layer.keys.shape[-2] <= WINDOW - 1 + 2 * 3 for layer in sliding_layers(row.cache))
    assert runner.refills == 0
    torch.testing.assert_close(row.logprobs, fresh_logprobs(model, row.sync.ids), atol=1e-4, rtol=1e-4)
