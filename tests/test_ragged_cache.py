"""The batched auxiliary cache: every row exact after any ragged feeds, drops and reorders."""

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from testkit import tiny
from unite_logits.core.ragged_cache import RaggedKVCache, UnsupportedModelError

WINDOW = 6


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.sp_bpe()


@pytest.fixture(scope="module")
def models(tokenizer):
    return {
        "llama": tiny.tiny_llama(tokenizer, seed=3),
        "gpt2": tiny.tiny_gpt2(tokenizer, seed=4),
        "gemma3": tiny.tiny_gemma3(tokenizer, seed=2, sliding_window=WINDOW),
    }


def fresh(model, ids, vocab):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1, :vocab].float(), -1)


def run_and_check(model, vocab, rows, ops, margin):
    """Apply ``ops`` (per step: per row (drop, feed count), then an optional reorder) and check
    every fed row against a fresh forward pass. Returns the cache and the rows' ids."""
    rnd = random.Random(len(ops) * 7919 + rows)
    cache = RaggedKVCache(model, rows, vocab, margin=margin)
    seqs = [[rnd.randrange(10, vocab) for _ in range(1 + rnd.randrange(6))] for _ in range(rows)]
    out = cache.feed(seqs)
    checked = 0
    for row in range(rows):
        torch.testing.assert_close(out[row], fresh(model, seqs[row], vocab), atol=1e-5, rtol=1e-5)
    for step, (changes, reorder) in enumerate(ops):
        chunks = []
        for row in range(cache.rows):
            drop, feed = changes[row % len(changes)]
            if drop and drop < len(seqs[row]) and cache.can_drop(row, drop):
                cache.drop(row, drop)
                del seqs[row][-drop:]
            new = [rnd.randrange(10, vocab) for _ in range(feed)]
            if not new and int(cache.lengths[row]) != len(seqs[row]):
                new = [rnd.randrange(10, vocab)]  # a row that dropped must feed to get its distribution
            seqs[row] += new
            chunks.append(new)
        if any(chunks):
            out = cache.feed(chunks)
            for row, chunk in enumerate(chunks):
                if chunk:
                    torch.testing.assert_close(out[row], fresh(model, seqs[row], vocab), atol=1e-5, rtol=1e-5)
                    checked += 1
        if reorder is not None:
            index = [reorder[i % len(reorder)] % cache.rows for i in range(cache.rows)]
            cache.select_rows(torch.tensor(index))
            seqs = [list(seqs[i]) for i in index]
        assert cache.lengths.tolist() == [len(s) for s in seqs]
    return cache, seqs, checked


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3"])
@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 4),
    ops=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=4),
            st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
        ),
        min_size=1, max_size=14,
    ),
    margin=st.integers(1, 4),
)
def test_every_row_equals_a_fresh_forward_pass(models, tokenizer, name, rows, ops, margin):
    """Random ragged feeds (0-3 tokens per row), drops, duplications and reorders: exact."""
    cache, _, checked = run_and_check(models[name], len(tokenizer), rows, ops, margin)
    assert checked + rows >= rows  # the prefill of every row was checked at least


def test_sliding_layers_stay_window_sized_and_holes_are_compacted(models, tokenizer):
    """A long ragged run: sliding columns stay bounded, full-attention holes do not pile up."""
    ops = [([(0, 1), (1, 3), (0, 0)], None)] * 120
    cache, seqs, checked = run_and_check(models["gemma3"], len(tokenizer), 3, ops, margin=2)
    assert checked > 200
    columns = {group.window: group.columns for group in cache._groups.values()}
    assert max(len(s) for s in seqs) > 200
    assert columns[WINDOW] <= 2 * (WINDOW + 2 * 2 + 3) + 32
    # full attention keeps every token of the longest row, and holes at most as many again
    assert columns[None] <= 2 * max(len(s) for s in seqs) + 3


def test_a_drop_past_what_a_sliding_layer_holds_is_refused(models, tokenizer):
    model = models["gemma3"]
    cache = RaggedKVCache(model, 1, len(tokenizer), margin=1)
    for _ in range(40):
        cache.feed([[12]])
    assert cache.can_drop(0, 1)
    assert not cache.can_drop(0, 30)
    with pytest.raises(ValueError, match="cannot drop 30 tokens"):
        cache.drop(0, 30)


def test_a_cleared_row_refills_exactly(models, tokenizer):
    model, vocab = models["gemma3"], len(tokenizer)
    cache = RaggedKVCache(model, 2, vocab, margin=1)
    ids = [[11 + i % 50 for i in range(30)], [20, 21, 22]]
    cache.feed(ids)
    cache.clear(0)
    out = cache.feed([ids[0], [23]])
    ids[1].append(23)
    for row in range(2):
        torch.testing.assert_close(out[row], fresh(model, ids[row], vocab), atol=1e-5, rtol=1e-5)


def test_unsupported_attention_is_refused_before_any_work(tokenizer):
    model = tiny.tiny_llama(tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="attn_implementation='sdpa'"):
        RaggedKVCache(model, 1, len(tokenizer))


def test_margin_must_be_positive(models, tokenizer):
    with pytest.raises(ValueError, match="`margin` has to be a positive integer, but is 0"):
        RaggedKVCache(models["llama"], 1, len(tokenizer), margin=0)
