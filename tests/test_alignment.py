"""Union and alignment rules, by example and by property."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from testkit import tiny
from unite_logits.core.alignment import EOS, Aligned, Proposal, aligned_probabilities, build_union, candidate_key, primary_ids
from unite_logits.core.combine import combine
from unite_logits.core.token_bytes import token_bytes_view


def distinct(values) -> Aligned:
    """Aligned probabilities, each from a different token of the model."""
    return Aligned(list(values), list(range(len(values))))


def proposal(view, probs: dict[int, float], top_k=3, weight=1.0, primary=False) -> Proposal:
    """A proposal whose distribution puts ``probs`` on given ids and spreads the rest."""
    logits = torch.full((view.size,), -30.0)
    for token_id, p in probs.items():
        logits[token_id] = math.log(p)
    return Proposal.from_logprobs(view, torch.log_softmax(logits, -1), top_k, weight, primary)


@pytest.fixture(scope="module")
def views():
    return token_bytes_view(tiny.byte_bpe()), token_bytes_view(tiny.sp_bpe()), token_bytes_view(tiny.unigram())


def test_same_text_from_two_vocabularies_is_one_candidate(views):
    byte_level, sentencepiece, _ = views
    a = proposal(byte_level, {byte_level.byte_ids[b" the"]: 0.6}, primary=True)
    b = proposal(sentencepiece, {sentencepiece.byte_ids[b" the"]: 0.7})
    union = build_union([a, b])
    assert union.count(b" the") == 1


def test_end_of_sequence_matches_by_role_and_specials_do_not_leak(views):
    byte_level, sentencepiece, _ = views
    im_end = sentencepiece.tokenizer.convert_tokens_to_ids("<|im_end|>")
    a = proposal(byte_level, {byte_level.eos_id: 0.5}, primary=True)
    b = proposal(sentencepiece, {sentencepiece.eos_id: 0.4, im_end: 0.4})
    union = build_union([a, b])
    assert union.count(EOS) == 1
    assert all(not (isinstance(c, bytes) and b"im_end" in c) for c in union)
    assert primary_ids(byte_level, [EOS]) == [byte_level.eos_id]
    assert aligned_probabilities(b, [EOS]).probs[0] == pytest.approx(b.logprobs[sentencepiece.eos_id].exp().item())


def test_rule_in_vocabulary_but_not_in_top_k(views):
    byte_level, sentencepiece, _ = views
    the = sentencepiece.byte_ids[b" the"]
    b = proposal(sentencepiece, {the: 0.01, sentencepiece.byte_ids[b"a"]: 0.9}, top_k=1)
    assert aligned_probabilities(b, [b" the"]).probs[0] == pytest.approx(math.exp(b.logprobs[the].item()))


def test_rule_missing_candidate_scored_through_its_first_piece(views):
    byte_level, sentencepiece, _ = views
    text = b" pancakes!?"
    assert text not in sentencepiece.byte_ids
    piece = sentencepiece.first_piece(text)
    b = proposal(sentencepiece, {piece: 0.3, 7: 0.7})
    assert aligned_probabilities(b, [text]).probs[0] == pytest.approx(0.3, rel=1e-3)


def test_candidate_not_writable_scores_zero(views):
    wordpiece = token_bytes_view(tiny.wordpiece())
    b = proposal(wordpiece, {5: 0.9})
    assert aligned_probabilities(b, ["\u2603".encode()]).probs == [0.0]


def test_collision_merge_rule_adds_distinct_tokens_once(views):
    """Candidates the primary can only start with the same piece merge: each model adds the
    probabilities of its *distinct* tokens, so a token never counts twice."""
    byte_level, sentencepiece, _ = views
    a_id = byte_level.byte_ids[b" the"]
    union = [b" the", b" the\xf0\x9f\x99\x82", b" the\xe6\x9d\xb1"]
    emit = primary_ids(byte_level, union)
    assert emit == [a_id, a_id, a_id]
    other = byte_level.byte_ids[b"a"]
    # the primary scores all three through its one " the" token: counted once
    primary = Aligned([0.4, 0.4, 0.4, 0.2], [a_id, a_id, a_id, other])
    # an auxiliary with three distinct tokens: their probabilities add up
    auxiliary = Aligned([0.1, 0.2, 0.1, 0.6], [11, 12, 13, 14])
    emit = emit + [other]
    alone = combine([primary], [1.0], emit, [True] * 4)
    assert alone.probs == {a_id: pytest.approx(2 / 3), other: pytest.approx(1 / 3)}
    both = combine([primary, auxiliary], [1.0, 1.0], emit, [True] * 4)
    assert both.probs[a_id] == pytest.approx((2 / 3 + 0.4) / 2)
    assert both.probs[other] == pytest.approx((1 / 3 + 0.6) / 2)


# --- properties ----------------------------------------------------------------------

distributions = st.dictionaries(st.integers(0, 250), st.floats(0.001, 1.0), min_size=1, max_size=8)


@settings(max_examples=60)
@given(p0=distributions, p1=distributions, p2=distributions, k=st.integers(1, 12),
       weights=st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3).filter(lambda w: w[0] > 0))
def test_union_holds_every_top1_and_ensemble_sums_to_one(views, p0, p1, p2, k, weights):
    proposals = [proposal(v, p, top_k=k, weight=w, primary=(i == 0)) for i, (v, p, w) in
                 enumerate(zip(views, (p0, p1, p2), weights))]
    union = build_union(proposals)
    for prop in proposals:
        key = candidate_key(prop.view, prop.top_ids[0])
        if key is not None:
            assert key in union
    emit = primary_ids(views[0], union)
    aligned = [aligned_probabilities(p, union) for p in proposals]
    assert all(0.0 <= value <= 1.0 + 1e-6 for row in aligned for value in row.probs)
    result = combine(aligned, weights, emit, [True] * len(union))
    # the primary (weight > 0) gives its own top-1, always emittable and allowed, some mass
    assert result.probs
    assert sum(result.probs.values()) == pytest.approx(1.0)
    assert set(result.probs) <= {e for e in emit if e is not None}


@settings(max_examples=60)
@given(aligned=st.lists(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5), min_size=1, max_size=4),
       scale=st.floats(0.1, 10.0), data=st.data())
def test_weights_matter_only_through_their_ratios(aligned, scale, data):
    weights = data.draw(st.lists(st.floats(0.1, 3.0), min_size=len(aligned), max_size=len(aligned)))
    emit = [0, 1, 2, 3, 4]
    aligned = [distinct(a) for a in aligned]
    one = combine(aligned, weights, emit, [True] * 5)
    two = combine(aligned, [w * scale for w in weights], emit, [True] * 5)
    assert one.probs.keys() == two.probs.keys()
    for key in one.probs:
        assert one.probs[key] == pytest.approx(two.probs[key], abs=1e-9)


@settings(max_examples=60)
@given(aligned=st.lists(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5), min_size=2, max_size=4),
       masked=st.lists(st.booleans(), min_size=5, max_size=5))
def test_masked_candidates_stay_impossible_and_zero_weight_models_do_nothing(aligned, masked):
    emit = [0, 1, 2, 3, 4]
    aligned = [distinct(a) for a in aligned]
    allowed = [not m for m in masked]
    result = combine(aligned, [1.0] * len(aligned), emit, allowed)
    assert all(allowed[c] for c in result.probs)
    alone = combine(aligned[:1], [1.0], emit, allowed)
    muted = combine(aligned, [1.0] + [0.0] * (len(aligned) - 1), emit, allowed)
    assert alone.probs == pytest.approx(muted.probs)


def test_model_with_no_mass_on_the_union_abstains():
    result = combine([distinct([0.5, 0.5]), distinct([0.0, 0.0])], [1.0, 1.0], [0, 1], [True, True])
    assert result.participants == (0,)
    assert result.probs == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}


def test_equal_weights_average_renormalised_distributions():
    result = combine([distinct([0.6, 0.2]), distinct([0.1, 0.1])], [1.0, 1.0], [0, 1], [True, True])
    # model 0 renormalised: .75/.25, model 1: .5/.5
    assert result.probs[0] == pytest.approx(0.625) and result.probs[1] == pytest.approx(0.375)


def test_primary_emits_the_space_it_would_write_first(views):
    """A candidate the primary writes as a bare space then a word is emitted as the space:
    skipping it (as scoring does) would drop the space from the text."""
    byte_level = views[0]
    text = " zebra"  # the tiny byte-level tokenizer writes it as a bare space, then letters
    pieces = byte_level.encode_text(text)
    assume_space_first = byte_level.bytes_of(pieces[0]) == b" " and len(pieces) > 1
    assert assume_space_first
    (emitted,) = primary_ids(byte_level, [text.encode()])
    assert byte_level.bytes_of(emitted) == b" "
    assert byte_level.first_piece(text.encode()) == pieces[1]


def test_special_tokens_with_the_same_content_match_across_vocabularies(views):
    """<|im_end|> of two vocabularies is one candidate, scored by each model and emitted by the primary."""
    byte_level, sentencepiece, unigram = views
    ids = [view.tokenizer.convert_tokens_to_ids("<|im_end|>") for view in (byte_level, sentencepiece)]
    keys = {candidate_key(view, token) for view, token in zip((byte_level, sentencepiece), ids)}
    assert keys == {("special", "<|im_end|>")}
    a = proposal(byte_level, {byte_level.byte_ids[b" the"]: 0.6}, primary=True)
    b = proposal(sentencepiece, {ids[1]: 0.5})
    union = build_union([a, b])
    assert ("special", "<|im_end|>") in union
    assert primary_ids(byte_level, union)[union.index(("special", "<|im_end|>"))] == ids[0]
    assert aligned_probabilities(a, union).probs[union.index(("special", "<|im_end|>"))] >= 0.0
    expected = b.top_probs[b.top_ids.index(ids[1])]
    assert aligned_probabilities(b, union).probs[union.index(("special", "<|im_end|>"))] == pytest.approx(expected)
    # a special the primary lacks is not something it can emit
    assert primary_ids(byte_level, [("special", "<not-a-token>")]) == [None]
