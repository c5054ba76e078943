"""UniTEProcessor end to end inside model.generate, on tiny in-process models."""

import pytest
import torch
from transformers import LogitsProcessorList

from testkit import tiny
from unite_logits import Member, UniTEProcessor

PROMPTS = ["The quick brown fox", "Question: What is 12 plus 30?"]


@pytest.fixture(scope="module")
def auxiliaries():
    sp, uni = tiny.sp_bpe(), tiny.unigram()
    return [(tiny.tiny_llama(sp, seed=3), sp), (tiny.tiny_gpt2(uni, seed=4), uni)]


def generate(model, tokenizer, prompts, processor=None, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("max_new_tokens", 24)
    processors = [processor] if processor is not None else []
    out = model.generate(**enc, logits_processor=processors, **kwargs)
    return out[:, enc["input_ids"].shape[1]:]


def test_without_auxiliaries_output_equals_plain_generate(primary):
    model, tok = primary
    assert torch.equal(generate(model, tok, PROMPTS, UniTEProcessor(tok, [], top_k=4)), generate(model, tok, PROMPTS))


def test_auxiliary_identical_to_primary_gives_plain_greedy_output(primary):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(model, tok)], top_k=5)
    assert torch.equal(generate(model, tok, PROMPTS, proc), generate(model, tok, PROMPTS))


def test_zero_weight_auxiliary_changes_nothing(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t, weight=0.0) for m, t in auxiliaries], top_k=5)
    assert torch.equal(generate(model, tok, PROMPTS, proc), generate(model, tok, PROMPTS))


def test_ensemble_changes_the_output_and_follows_the_trace(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t, name=f"aux{i}") for i, (m, t) in enumerate(auxiliaries)],
                          top_k=5, trace=True)
    out = generate(model, tok, PROMPTS[:1], proc, max_new_tokens=16)
    assert not torch.equal(out, generate(model, tok, PROMPTS[:1], max_new_tokens=16))
    records = [r for r in proc.trace if r.row == 0]
    assert [r.step for r in records] == list(range(len(records)))
    for record, token in zip(records, out[0].tolist()):
        assert set(record.top1) == {"primary", "aux0", "aux1"} - set(record.abstained)
        assert 0 < record.prob <= 1
        assert record.union_size >= 1
        if token != tok.eos_token_id:
            written = proc.primary_view.bytes_of(token).decode("utf-8", errors="backslashreplace")
            assert record.winner == written


def test_each_batch_row_equals_generating_it_alone(primary, auxiliaries):
    model, tok = primary
    members = [Member(m, t) for m, t in auxiliaries]
    batch = generate(model, tok, PROMPTS, UniTEProcessor(tok, members, top_k=5), max_new_tokens=12)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, tok, [prompt], UniTEProcessor(tok, members, top_k=5), max_new_tokens=12)
        got = batch[row][batch[row] != tok.pad_token_id]
        want = alone[0][alone[0] != tok.pad_token_id]
        assert torch.equal(got, want)


def test_a_new_generate_call_starts_fresh(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=5)
    first = generate(model, tok, [PROMPTS[1]], proc, max_new_tokens=10)
    generate(model, tok, [PROMPTS[0]], proc, max_new_tokens=10)
    again = generate(model, tok, [PROMPTS[1]], proc, max_new_tokens=10)
    assert torch.equal(first, again)
    fresh = generate(model, tok, [PROMPTS[1]], UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=5),
                     max_new_tokens=10)
    assert torch.equal(first, fresh)


def test_auxiliary_state_tracks_the_generated_text(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=5)
    out = generate(model, tok, [PROMPTS[0]], proc, max_new_tokens=20)
    text = tok.decode(out[0], skip_special_tokens=True)
    syncs = proc.rows.generation.syncs_of(0)
    assert syncs is not None, "the row must still be generating for this check"
    checked = 0
    for sync in syncs:
        if sync.ready:
            # all but the last emitted token has been fed (the last is fed on the next step)
            fed_text = sync.view.tokenizer.decode(sync.ids, skip_special_tokens=True)
            assert (PROMPTS[0] + text).startswith(fed_text.lstrip())
            checked += 1
    assert checked >= 1


class _EndRowZero:
    """A processor placed before ours that makes row 0 end at its first step."""

    def __init__(self, eos: int) -> None:
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[0, :] = float("-inf")
        scores[0, self.eos] = 0.0
        return scores


def test_finished_rows_cost_no_auxiliary_forward_passes(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=5)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    steps = 10
    model.generate(**enc, logits_processor=LogitsProcessorList([_EndRowZero(tok.eos_token_id), proc]),
                   do_sample=False, max_new_tokens=steps, min_new_tokens=steps)
    assert proc.rows.generation.finished == [True, False]
    # per auxiliary: one batched prefill, then one pass per step (greedy guesses are right, and
    # the last one runs after the last step), over row 1 alone once row 0 ended
    for runner in proc.runners:
        assert runner.forward_passes <= 1 + steps
        assert runner.caches[0].rows == 1


def test_masked_candidates_stay_impossible(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=50)
    enc = tok([PROMPTS[0]], return_tensors="pt")
    out = model.generate(**enc, logits_processor=[proc], min_new_tokens=8, max_new_tokens=8, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    for step_scores in out.scores:
        assert step_scores[0, tok.eos_token_id] == float("-inf")


def test_returned_scores_are_log_probabilities_over_the_union(primary, auxiliaries):
    """At the union: log(probs * mass), so they sum to the union's mass (<= 1) and softmax to
    UniTE's distribution; with no auxiliary they are the primary's own log-probabilities."""
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=3)
    enc = tok([PROMPTS[0]], return_tensors="pt")
    out = model.generate(**enc, logits_processor=[proc], max_new_tokens=6, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    for step, step_scores in enumerate(out.scores):
        finite = torch.isfinite(step_scores[0])
        assert 1 <= int(finite.sum()) <= 3 * 3
        assert 0 < step_scores[0][finite].exp().sum().item() <= 1.0 + 1e-6
        assert int(step_scores[0].argmax()) == int(out.sequences[0, enc["input_ids"].shape[1] + step])
    with torch.no_grad():
        logits = model(**enc).logits[:, -1, :]
    alone = UniTEProcessor(tok, [], top_k=3)(enc["input_ids"], logits.clone())[0]
    own = torch.log_softmax(logits[0].float(), -1)
    finite = torch.isfinite(alone)
    assert int(finite.sum()) == 3 and torch.allclose(alone[finite], own[finite], atol=1e-5)


def test_padded_vocabulary_ids_never_win(auxiliaries):
    tok = tiny.byte_bpe()
    model = tiny.tiny_llama(tok, seed=0, vocab_pad=64)
    with torch.no_grad():
        model.lm_head.weight[len(tok):] = 10.0  # make the padding rows score highest
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=5)
    out = generate(model, tok, PROMPTS, proc, max_new_tokens=8)
    assert int(out.max()) < len(tok)


def test_sampling_draws_from_the_ensembled_distribution(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=4)
    enc = tok([PROMPTS[1]], return_tensors="pt")
    with torch.no_grad():
        scores = model(**enc).logits[:, -1, :]
    expected = torch.softmax(proc(enc["input_ids"], scores)[0], dim=-1)  # the sampler renormalises
    support = torch.isfinite(proc(enc["input_ids"], scores)[0])
    n = 600
    torch.manual_seed(0)
    out = model.generate(**enc.__class__({k: v.repeat(n, 1) for k, v in enc.items()}), logits_processor=[proc],
                         do_sample=True, top_k=0, max_new_tokens=1)
    first = out[:, -1]
    assert bool(support[first].all())  # every draw is a union member
    counts = torch.bincount(first, minlength=expected.shape[0]).float() / n
    ids = support.nonzero().flatten()
    # each frequency within 4.5 standard errors of the ensembled probability
    tolerance = 4.5 * (expected[ids] * (1 - expected[ids]) / n).sqrt() + 1e-3
    assert bool(((counts[ids] - expected[ids]).abs() <= tolerance).all())


def test_beam_search_keeps_each_beams_auxiliary_state(primary):
    """With an auxiliary identical to the primary, beam search must match the primary alone
    under the same top-k: if beams were mixed up, the auxiliary's distribution for a beam
    would differ from the primary's and the beams would change."""
    model, tok = primary
    kwargs = dict(num_beams=3, num_return_sequences=3, max_new_tokens=10, do_sample=False)
    alone = generate(model, tok, [PROMPTS[0]], UniTEProcessor(tok, [], top_k=8), **kwargs)
    paired = generate(model, tok, [PROMPTS[0]], UniTEProcessor(tok, [Member(model, tok)], top_k=8), **kwargs)
    assert torch.equal(alone, paired)


def test_beam_search_with_other_tokenizers_keeps_each_beams_text(primary, auxiliaries):
    model, tok = primary
    proc = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=6)
    enc = tok([PROMPTS[0]], return_tensors="pt")
    out = model.generate(**enc, logits_processor=[proc], num_beams=3, num_return_sequences=3, max_new_tokens=8,
                         do_sample=False)
    assert out.shape[0] == 3
    # every live beam's auxiliaries hold exactly that beam's text
    checked = 0
    for row, ids in enumerate(proc.rows.generation.last_ids.tolist()):
        text = proc.primary_view.join(ids[enc["input_ids"].shape[1]:]).decode("utf-8", errors="ignore")
        for sync in proc.rows.generation.syncs_of(row) or []:
            if sync.ready:
                aux_text = sync.view.join(sync.ids).decode("utf-8", errors="ignore")
                assert aux_text.endswith(text)
                checked += 1
    assert checked >= 2


def test_auxiliary_in_another_dtype(primary, auxiliaries):
    model, tok = primary
    (aux, aux_tok), _ = auxiliaries
    aux64 = tiny.tiny_llama(aux_tok, seed=3).to(torch.float64)
    out64 = generate(model, tok, PROMPTS, UniTEProcessor(tok, [Member(aux64, aux_tok)], top_k=5), max_new_tokens=8)
    out32 = generate(model, tok, PROMPTS, UniTEProcessor(tok, [Member(aux, aux_tok)], top_k=5), max_new_tokens=8)
    assert torch.equal(out64, out32)


def test_member_prompt_override_is_used(primary, auxiliaries):
    model, tok = primary
    (aux, aux_tok), _ = auxiliaries
    override = aux_tok("System: be brief.\nThe quick brown fox")["input_ids"]
    proc = UniTEProcessor(tok, [Member(aux, aux_tok)], top_k=5, member_prompts=[override])
    generate(model, tok, [PROMPTS[0]], proc, max_new_tokens=4)
    assert proc.rows.generation.syncs_of(0)[0].ids[: len(override)] == override


# --- validation: clear errors before any generation ----------------------------------

@pytest.mark.parametrize("top_k", [0, -1, 2.5, True])
def test_bad_top_k(primary, top_k):
    with pytest.raises(ValueError, match="`top_k` has to be a positive integer"):
        UniTEProcessor(primary[1], [], top_k=top_k)


def test_bad_weights(primary, auxiliaries):
    model, tok = primary
    aux, aux_tok = auxiliaries[0]
    with pytest.raises(ValueError, match="finite non-negative"):
        Member(aux, aux_tok, weight=-1)
    with pytest.raises(ValueError, match="finite non-negative"):
        Member(aux, aux_tok, weight=float("nan"))
    with pytest.raises(ValueError, match="sum to 0"):
        UniTEProcessor(tok, [Member(aux, aux_tok, weight=0)], primary_weight=0)


def test_member_must_be_a_causal_lm(auxiliaries):
    from transformers import BertConfig, BertModel
    aux_tok = auxiliaries[0][1]
    with pytest.raises(TypeError, match="causal language model"):
        Member(BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=8)), aux_tok)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        Member("gpt2", aux_tok)  # type: ignore[arg-type]


def test_member_tokenizer_without_eos(auxiliaries):
    aux = auxiliaries[0][0]
    no_eos = tiny.wordpiece().__class__(tokenizer_object=tiny.wordpiece().backend_tokenizer)
    aux.generation_config.eos_token_id = None
    try:
        with pytest.raises(ValueError, match="no EOS"):
            Member(aux, no_eos)
    finally:
        aux.generation_config.eos_token_id = tiny.sp_bpe().eos_token_id


def test_members_must_be_member_objects(primary, auxiliaries):
    with pytest.raises(TypeError, match=r"members\[0\]"):
        UniTEProcessor(primary[1], [auxiliaries[0]])


def test_non_tensor_input(primary):
    proc = UniTEProcessor(primary[1], [])
    with pytest.raises(TypeError, match="torch tensors"):
        proc([[1, 2]], torch.zeros(1, 5))
    with pytest.raises(ValueError, match="shape"):
        proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 5))


def test_top_k_larger_than_any_vocabulary(primary, auxiliaries):
    model, tok = primary
    huge = UniTEProcessor(tok, [], top_k=10**6)
    assert torch.equal(generate(model, tok, PROMPTS, huge, max_new_tokens=6), generate(model, tok, PROMPTS, max_new_tokens=6))
    both = UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries], top_k=10**6)
    enc = tok([PROMPTS[0]], return_tensors="pt")
    with torch.no_grad():
        scores = model(**enc).logits[:, -1, :]
    out = both(enc["input_ids"], scores)
    assert out[0].exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_primary_generation_config_defaults_are_respected(primary, auxiliaries):
    model, tok = primary
    saved = model.generation_config.max_new_tokens
    model.generation_config.max_new_tokens = 5
    try:
        enc = tok([PROMPTS[0]], return_tensors="pt")
        out = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [Member(m, t) for m, t in auxiliaries])],
                             do_sample=False, min_new_tokens=5)
        assert out.shape[1] - enc["input_ids"].shape[1] == 5
    finally:
        model.generation_config.max_new_tokens = saved
