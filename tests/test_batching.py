"""Batched auxiliaries: a row in a batch is the row alone; forks share what does not change."""

import logging

import pytest
import torch
from hypothesis import given, settings, strategies as st

from testkit import tiny
from unite_logits import Member, UniTEProcessor
from unite_logits import NonFiniteScoresError

PROMPT_PIECES = ["The quick brown fox", " 東京 is a city", " café au lait 🙂", "Question: What is 12 plus 30?",
                 " naïve façade", "def add(a, b):\n", " 🚀", "Numbers: 1, 2, 3"]
prompts = st.lists(st.sampled_from(PROMPT_PIECES), min_size=1, max_size=3).map("".join)


def run(model, tok, texts, proc, **kwargs):
    enc = tok(texts, return_tensors="pt", padding=True)
    kwargs.setdefault("do_sample", False)
    out = model.generate(**enc, logits_processor=[proc] if proc else [], **kwargs)
    return [row[row != tok.pad_token_id].tolist() for row in out[:, enc["input_ids"].shape[1]:]]


@settings(max_examples=6, deadline=None)
@given(texts=st.lists(prompts, min_size=2, max_size=4), new=st.integers(4, 14))
def test_every_row_of_a_batch_equals_that_row_alone(primary, members, texts, new):
    """Rows of different lengths, unicode/emoji/CJK, rows that end early, syncs that roll back."""
    model, tok = primary
    batch = run(model, tok, texts, UniTEProcessor(tok, members, top_k=5), max_new_tokens=new)
    for text, got in zip(texts, batch):
        assert got == run(model, tok, [text], UniTEProcessor(tok, members, top_k=5), max_new_tokens=new)[0]


def test_rows_that_finish_early_leave_the_batched_caches(primary, members):
    model, tok = primary
    proc = UniTEProcessor(tok, members, top_k=5)
    enc = tok(["The quick brown fox", "Numbers: 1, 2"], return_tensors="pt", padding=True)

    def end_row_zero(input_ids, scores):
        scores = scores.clone()
        if input_ids.shape[1] >= enc["input_ids"].shape[1] + 2:
            scores[0, :] = float("-inf")
            scores[0, tok.eos_token_id] = 0.0
        return scores

    model.generate(**enc, logits_processor=[end_row_zero, proc], do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert proc.rows.generation.finished == [True, False]
    assert all(runner.caches[0].rows == 1 for runner in proc.runners)


def test_beam_forks_share_the_tokenizer_view(primary, members):
    model, tok = primary
    proc = UniTEProcessor(tok, members, top_k=5)
    run(model, tok, ["The quick brown fox"], proc, num_beams=4, num_return_sequences=4, max_new_tokens=6)
    for member, view in zip(proc.rows.generation.members, proc.member_views):
        assert len(member) == 4
        assert all(row.sync.view is view for row in member.rows)
        assert len({id(row.sync.ids) for row in member.rows}) == 4  # ids are each beam's own


def test_weight_zero_member_is_exactly_absent_when_sampling(primary, members):
    """No forward pass, no vote: sampled output equals the processor without the member."""
    model, tok = primary
    absent = Member(members[1].model, members[1].tokenizer, weight=0.0)
    outputs = []
    for proc in (UniTEProcessor(tok, [members[0], absent], top_k=5), UniTEProcessor(tok, [members[0]], top_k=5)):
        torch.manual_seed(7)
        outputs.append(run(model, tok, ["The quick brown fox", "Numbers"], proc, do_sample=True, max_new_tokens=12))
        if len(proc.members) == 2:
            assert len(proc.runners) == 1
    assert outputs[0] == outputs[1]


def test_identical_member_votes_for_special_tokens():
    """A member with the primary's own vocabulary votes for <unk> like for any token."""
    tok = tiny.sp_bpe()
    model = tiny.tiny_llama(tok, seed=11)
    with torch.no_grad():
        model.lm_head.weight[tok.unk_token_id] *= 40  # make <unk> the top token at some steps
    plain = run(model, tok, ["The quick brown fox"], None, max_new_tokens=12)[0]
    assert tok.unk_token_id in plain, "the test needs <unk> to win somewhere"
    proc = UniTEProcessor(tok, [Member(model, tok)], top_k=5)
    assert run(model, tok, ["The quick brown fox"], proc, max_new_tokens=12)[0] == plain


def short_context_member(members, limit):
    member = members[1]
    model = tiny.tiny_gpt2(member.tokenizer, seed=4)
    model.config.n_positions = limit
    return Member(model, member.tokenizer, name="short")


def test_prompt_past_a_members_context_window_is_refused(primary, members):
    model, tok = primary
    proc = UniTEProcessor(tok, [short_context_member(members, 8)], top_k=5)
    with pytest.raises(ValueError, match=r"member 'short': the prompt of row 0 has \d+ tokens, past its context window of 8"):
        run(model, tok, ["The quick brown fox jumps over the lazy dog. Muffins and pancakes"], proc, max_new_tokens=4)


def test_member_abstains_once_generation_crosses_its_window(primary, members, caplog):
    model, tok = primary
    proc = UniTEProcessor(tok, [short_context_member(members, 20)], top_k=5, trace=True)
    with caplog.at_level(logging.WARNING, logger="unite_logits.core.member_rows"):
        out = run(model, tok, ["The quick brown"], proc, max_new_tokens=24, min_new_tokens=24)
    assert len(out[0]) == 24
    assert any("past its context window of 20" in message for message in caplog.messages)
    assert "short" not in proc.trace[0].abstained and "short" in proc.trace[-1].abstained


def test_non_finite_member_is_named(primary, members):
    model, tok = primary
    broken = tiny.tiny_gpt2(members[1].tokenizer, seed=4)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    proc = UniTEProcessor(tok, [Member(broken, members[1].tokenizer, name="broken")], top_k=5)
    with pytest.raises(NonFiniteScoresError, match="model 'broken' gave non-finite log-probabilities"):
        run(model, tok, ["The quick brown fox"], proc, max_new_tokens=4)


@pytest.mark.parametrize("ids_dtype, scores_dtype, message", [
    (torch.float32, torch.float32, "`input_ids` has to hold integer token ids"),
    (torch.long, torch.long, "`scores` has to be a floating-point tensor"),
])
def test_wrong_dtypes_are_refused(primary, ids_dtype, scores_dtype, message):
    _, tok = primary
    proc = UniTEProcessor(tok, [], top_k=5)
    with pytest.raises(TypeError, match=message):
        proc(torch.ones(1, 3, dtype=ids_dtype), torch.zeros(1, len(tok), dtype=scores_dtype))
