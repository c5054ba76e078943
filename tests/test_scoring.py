"""Ensembled scoring: one model scores as itself, a batch row as alone, scoring equals forced
generation, the ensemble's greedy output is greedy at every token, and HFLM's numbers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessor

from testkit import tiny
from testkit.strategies import texts
from unite_logits import Ensemble, LoadedModel, Member, ScoreRequest, UniTEProcessor
from unite_logits.core.forced import ForcedText, forced_logprobs
from unite_logits.core.scoring import ScoringModel, score_requests
from unite_logits.core.token_bytes import token_bytes_view
from unite_logits.ensemble.scoring import encode_pair, rolling_windows

TOKENIZERS = {"byte_bpe": tiny.byte_bpe, "sp_bpe": tiny.sp_bpe, "unigram": tiny.unigram}
MAKERS = {"llama": tiny.tiny_llama, "gpt2": tiny.tiny_gpt2,
          "gemma3": lambda tok, seed: tiny.tiny_gemma3(tok, seed=seed, sliding_window=5)}


def scoring_model(kind: str, tokenizer: str, seed: int, weight: float = 1.0) -> ScoringModel:
    tok = TOKENIZERS[tokenizer]()
    return ScoringModel(MAKERS[kind](tok, seed=seed), token_bytes_view(tok), weight, f"{kind}-{tokenizer}")


PRIMARY = scoring_model("llama", "byte_bpe", 0)
MEMBERS = [scoring_model("gemma3", "sp_bpe", 3), scoring_model("gpt2", "unigram", 4)]
CONTEXTS = ["The quick brown fox", "Question: What is 12 plus 30? Answer:", "naïve café", "東京 is a city,", "def add(a, b):\n"]
continuations = texts.filter(lambda text: bool(text.strip()))


def request(context: str, continuation: str) -> ScoreRequest:
    return ScoreRequest(*encode_pair(PRIMARY.view.tokenizer, context, continuation))


# -- the forward pass with branches -------------------------------------------------------
@pytest.mark.parametrize("kind", list(MAKERS))
def test_branches_read_each_prefix_exactly_as_its_own_forward_pass(kind):
    model = MAKERS[kind](tiny.sp_bpe(), seed=1)
    size = len(tiny.sp_bpe())
    generator = torch.Generator().manual_seed(0)
    texts_, readings = [], []
    for length in (9, 13):
        trunk = torch.randint(5, size, (length,), generator=generator).tolist()
        text, wanted = ForcedText(trunk), [trunk[:4], trunk[:3] + [7, 8], trunk[: length - 2] + [9], trunk]
        for reading in wanted:
            text.add_reading(reading)
        texts_.append(text)
        readings.append(wanted)
    assert [len(text.branches) for text in texts_] == [2, 2]
    for text, wanted, rows in zip(texts_, readings, forced_logprobs(model, texts_, size)):
        for reading, row in zip(wanted, rows):
            with torch.no_grad():
                alone = torch.log_softmax(model(input_ids=torch.tensor([reading])).logits[0, -1].float(), -1)
            assert torch.allclose(row, alone, atol=1e-5)


# -- one model -----------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(context=st.sampled_from(CONTEXTS), continuation=continuations)
def test_one_model_scores_its_own_log_probabilities(context, continuation):
    scoring = request(context, continuation)
    (scored,) = score_requests(PRIMARY, [], [scoring], top_k=5)
    ids = scoring.context + scoring.continuation
    with torch.no_grad():
        logprobs = torch.log_softmax(PRIMARY.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    start = len(scoring.context) - 1
    expected = [float(logprobs[start + t, token]) for t, token in enumerate(scoring.continuation)]
    greedy = [int(logprobs[start + t].argmax()) == token for t, token in enumerate(scoring.continuation)]
    assert scored.logprobs == pytest.approx(expected, abs=1e-4)
    assert scored.greedy == greedy


# -- batches ---------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(CONTEXTS), continuations), min_size=2, max_size=4))
def test_every_request_of_a_batch_scores_as_it_does_alone(pairs):
    requests = [request(c, x) for c, x in pairs]
    batch = score_requests(PRIMARY, MEMBERS, requests, top_k=4)
    for scoring, got in zip(requests, batch):
        (alone,) = score_requests(PRIMARY, MEMBERS, [scoring], top_k=4)
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert got.greedy == alone.greedy


# -- scoring is forced generation ----------------------------------------------------------
class ForceAlong(LogitsProcessor):
    """Records the scores the ensemble gives, then forces the next token of ``ids``."""

    def __init__(self, prompt_length: int, ids: list[int]) -> None:
        self.prompt_length, self.ids, self.seen = prompt_length, ids, []

    def __call__(self, input_ids, scores):
        self.seen.append(scores[0].clone())
        out = torch.full_like(scores, -math.inf)
        out[0, self.ids[input_ids.shape[1] - self.prompt_length]] = 0.0
        return out


def forced_generation(scoring: ScoreRequest, members: list[ScoringModel], top_k: int,
                      gate: float | None = None) -> list[torch.Tensor]:
    """The processor's scores at each continuation token when generation is forced along it."""
    tok = PRIMARY.view.tokenizer
    force = ForceAlong(len(scoring.context), scoring.continuation)
    with UniTEProcessor(tok, [Member(m.model, m.view.tokenizer) for m in members], top_k=top_k,
                        concurrent=False, confidence_gate=gate) as processor:
        ids = torch.tensor([scoring.context])
        PRIMARY.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor, force],
                               max_new_tokens=len(scoring.continuation),
                               do_sample=False, pad_token_id=tok.pad_token_id)
    return force.seen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(context=st.sampled_from(CONTEXTS), continuation=continuations, top_k=st.sampled_from([3, 10**6]))
def test_scoring_gives_the_probabilities_the_processor_assigns_when_forced(context, continuation, top_k):
    """Wherever the target's candidate is among the union generation builds (``proposed``), the
    numbers agree; with the whole vocabulary as top-k that is every position, whatever the
    tokenizations. Elsewhere generation gives -inf and scoring a finite value."""
    scoring = request(context, continuation)
    (scored,) = score_requests(PRIMARY, MEMBERS, [scoring], top_k=top_k)
    seen = forced_generation(scoring, MEMBERS, top_k)
    assert len(seen) == len(scoring.continuation)
    for token, got, proposed, scores in zip(scoring.continuation, scored.logprobs, scored.proposed, seen):
        assert math.isfinite(got)  # scoring adds the target to the union
        if proposed:
            assert got == pytest.approx(float(scores[token]), abs=1e-4)
    if top_k > 1000:
        assert all(scored.proposed)


def test_where_a_members_reading_of_a_prefix_leaves_its_reading_of_the_text_it_reads_a_branch():
    """The primary writes "42" then "."; the member's tokenizer writes "42." as one token, so its
    reading of the prefix ending in "42" is not a prefix of its reading of the whole. Scoring
    reads that prefix on a branch and still equals forced generation there."""
    from unite_logits.core.scoring import _member_readings

    member = MEMBERS[0]
    scoring = request("Question: What is 12 plus 30? Answer:", " 12 + 30 = 42. The answer is 42.")
    texts_, _ = _member_readings(member, 0, PRIMARY.view, [scoring])
    assert texts_[0].branches, "the member's readings of this text should part from the whole at some prefix"
    (scored,) = score_requests(PRIMARY, [member], [scoring], top_k=10**6)
    seen = forced_generation(scoring, [member], 10**6)
    assert scored.logprobs == pytest.approx([float(s[t]) for s, t in zip(seen, scoring.continuation)], abs=1e-4)


@pytest.mark.parametrize("gate", [1e-9, 0.00302, 0.00308])
def test_scoring_applies_the_confidence_gate_as_generation_does(gate):
    """Positions where the primary is sure enough are the primary's alone in scoring too, so a
    score is still what forced generation with the same gate assigns."""
    scoring = request("The quick brown fox", " jumps over the lazy dog. Muffins and pancakes.")
    (scored,) = score_requests(PRIMARY, MEMBERS, [scoring], top_k=10**6, confidence_gate=gate)
    seen = forced_generation(scoring, MEMBERS, 10**6, gate)
    assert scored.logprobs == pytest.approx([float(s[t]) for s, t in zip(seen, scoring.continuation)], abs=1e-4)
    (alone,) = score_requests(PRIMARY, [], [scoring], top_k=10**6)
    (exact,) = score_requests(PRIMARY, MEMBERS, [scoring], top_k=10**6)
    same_as_alone = [a == pytest.approx(g, abs=1e-6) for a, g in zip(alone.logprobs, scored.logprobs)]
    same_as_exact = [e == pytest.approx(g, abs=1e-6) for e, g in zip(exact.logprobs, scored.logprobs)]
    if gate == 1e-9:
        assert all(same_as_alone)
    else:  # some positions gated, some ensembled: the test needs both
        assert any(same_as_alone) and not all(same_as_alone) and any(same_as_exact)


# -- greedy ---------------------------------------------------------------------------------
def tiny_ensemble_of(primary: ScoringModel, members: list[ScoringModel], top_k: int) -> Ensemble:
    models = [LoadedModel(m.model, m.view.tokenizer, m.name) for m in (primary, *members)]
    return Ensemble(models, top_k=top_k)


@pytest.mark.parametrize("context", CONTEXTS[:3])
def test_the_ensembles_greedy_output_scored_is_greedy_at_every_token(context):
    ensemble = tiny_ensemble_of(PRIMARY, MEMBERS, top_k=4)
    prepared = ensemble.prepare(context)
    primary = ensemble.primary
    with ensemble.processor() as processor:
        ids = torch.tensor([prepared.primary_ids])
        out = primary.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor],
                                     max_new_tokens=12, do_sample=False, pad_token_id=primary.tokenizer.pad_token_id)
    generated = [t for t in out[0, ids.shape[1]:].tolist() if t not in primary.eos_token_ids]
    assert generated
    (scored,) = ensemble.scorer().score([ScoreRequest(prepared.primary_ids, generated)])
    assert all(scored.greedy) and scored.is_greedy


# -- refusals and texts ----------------------------------------------------------------------
def test_a_text_past_a_members_window_is_refused_before_any_work(monkeypatch):
    small = scoring_model("llama", "sp_bpe", 7)
    monkeypatch.setattr(small.model.config, "max_position_embeddings", 8)
    with pytest.raises(ValueError, match=r"member 'llama-sp_bpe'.*past its context window of 8"):
        score_requests(PRIMARY, [small], [request("The quick brown fox jumps over", " the lazy dog")], top_k=3)
    with pytest.raises(ValueError, match="empty"):
        score_requests(PRIMARY, [], [ScoreRequest([1], [])], top_k=3)


def test_rolling_windows_cover_every_token_once():
    tok = PRIMARY.view.tokenizer
    text = "The quick brown fox jumps over the lazy dog. " * 6
    tokens = tok.encode(text)
    windows = rolling_windows(tok, text, 16)
    assert [t for _, continuation in windows for t in continuation] == tokens
    assert all(len(c) + len(x) - 1 <= 16 for c, x in windows)
    ensemble = tiny_ensemble_of(PRIMARY, MEMBERS, top_k=4)
    scorer = ensemble.scorer(batch_size=3)
    scorer.max_length = 16
    (total,) = scorer.score_rolling([text])
    assert total == pytest.approx(sum(s.logprob for s in scorer.score([ScoreRequest(c, x) for c, x in windows])))


def test_scores_through_the_ensemble_match_the_core():
    ensemble = tiny_ensemble_of(PRIMARY, MEMBERS, top_k=4)
    pairs = [(c, " and then") for c in CONTEXTS]
    got = ensemble.score(pairs, batch_size=2)
    expected = score_requests(PRIMARY, MEMBERS, [request(c, x) for c, x in pairs], top_k=4)
    for a, b in zip(got, expected):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


# -- lm-eval's hf model ----------------------------------------------------------------------
def test_one_model_reproduces_lm_evals_hf_model(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = tiny.sp_bpe()  # adds a BOS, like Gemma
    model = tiny.tiny_llama(tok, seed=8)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    hf = HFLM(pretrained=str(tmp_path / "model"), dtype="float32", batch_size=3, device="cpu")
    pairs = [("The quick brown fox", " jumps"), ("Question: What is 12 plus 30? Answer: ", "42."), ("", "Hello 東京 🙂")]
    reference = hf.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    ours = Ensemble([LoadedModel(model, tok, "tiny")]).score(pairs, batch_size=2)
    for (logprob, greedy), scored in zip(reference, ours):
        assert scored.logprob == pytest.approx(logprob, abs=1e-4) and scored.is_greedy == greedy
    text = "Muffins and pancakes are baked in the morning. " * 5
    (rolling,) = hf.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert Ensemble([LoadedModel(model, tok, "tiny")]).score_rolling([text])[0] == pytest.approx(rolling, abs=1e-4)


# -- several weightings for one scoring pass --------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(context=st.sampled_from(CONTEXTS), continuation=continuations,
       vectors=st.lists(st.tuples(st.sampled_from([0.25, 0.5, 1.0, 2.0]), st.sampled_from([0.25, 1.0, 3.0])),
                        min_size=1, max_size=4))
def test_a_weight_sweep_scores_as_each_weighting_alone(context, continuation, vectors):
    """One pass, several weightings: each equals scoring with those weights by itself."""
    from unite_logits.core.scoring import score_requests_sweep

    scoring = request(context, continuation)
    full = [[1.0, a, b] for a, b in vectors]
    swept = score_requests_sweep(PRIMARY, MEMBERS, [scoring], 4, full)
    for vector, (result,) in zip(full, swept):
        weighted = [ScoringModel(m.model, m.view, w, m.name) for m, w in zip([PRIMARY, *MEMBERS], vector)]
        (alone,) = score_requests(weighted[0], weighted[1:], [scoring], top_k=4)
        assert result.logprobs == pytest.approx(alone.logprobs, abs=1e-12) and result.greedy == alone.greedy


def test_a_sweep_covers_member_sets_too_but_never_a_member_that_does_not_run():
    """A vector that drops a member scores as the ensemble without it (same forward passes)."""
    from unite_logits.core.scoring import score_requests_sweep

    scoring = request("The quick brown fox", " jumps over the lazy dog")
    dropped, kept = score_requests_sweep(PRIMARY, MEMBERS, [scoring], 4, [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    (without,) = score_requests(PRIMARY, [MEMBERS[0].__class__(MEMBERS[1].model, MEMBERS[1].view, 0.5, "m")],
                                [scoring], top_k=4)
    (everyone,) = score_requests(PRIMARY, MEMBERS, [scoring], top_k=4)
    assert dropped[0].logprobs == pytest.approx(without.logprobs, abs=1e-12)
    assert kept[0].logprobs == pytest.approx(everyone.logprobs, abs=1e-12)
    muted = [PRIMARY, ScoringModel(MEMBERS[0].model, MEMBERS[0].view, 0.0, "muted"), MEMBERS[1]]
    with pytest.raises(ValueError, match="none for a model of weight 0"):
        score_requests_sweep(muted[0], muted[1:], [scoring], 4, [[1.0, 1.0, 1.0]])
