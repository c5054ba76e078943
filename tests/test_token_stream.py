"""`generate_streamed`: pieces add up to the answer, stop strings cut it, cancel ends it, log-probs are the ensemble's."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit.tiny_ensemble import tiny_ensemble

from unite_logits.ensemble.options import GenerationOptions
from unite_logits.ensemble.streaming import GenerationRequest as StreamRequest

MESSAGES = [{"role": "user", "content": "What is 12 plus 30?"}]


def generate_streamed(ensemble, prompt, *, chat, options, on_piece=None, cancel=None):
    return ensemble.generate(prompt, options, chat=chat, on_piece=on_piece, cancel=cancel)


def generate_streamed_batch(ensemble, requests):
    return ensemble.run(requests)


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


def test_pieces_add_up_to_the_same_text_as_generate(ensemble):
    pieces = []
    result = generate_streamed(ensemble, MESSAGES, chat=True, options=GenerationOptions(max_new_tokens=16),
                               on_piece=pieces.append)
    plain = ensemble.generate(MESSAGES, GenerationOptions(max_new_tokens=16))
    assert result.text == plain.text and len(result.text) > 5
    assert "".join(p.text for p in pieces) == result.text
    assert len(pieces) > 3  # streamed, not handed over at the end
    assert result.completion_tokens == plain.completion_tokens == 16 and result.finish_reason == "length"
    assert result.prompt_tokens > 5


def test_stop_string_cuts_the_text_and_ends_generation(ensemble):
    full = generate_streamed(ensemble, MESSAGES, chat=True, options=GenerationOptions(max_new_tokens=16)).text
    stop = full[6:9]
    assert stop and full.find(stop) >= 6
    pieces = []
    result = generate_streamed(ensemble, MESSAGES, chat=True, options=GenerationOptions(max_new_tokens=16, stop=(stop, "never")),
                               on_piece=pieces.append)
    assert result.text == full[: full.find(stop)]
    assert "".join(p.text for p in pieces) == result.text  # the stop string's beginning was never sent
    assert result.finish_reason == "stop" and result.completion_tokens < 16


def test_cancel_ends_after_the_current_step(ensemble):
    cancel = threading.Event()
    seen = []

    def on_piece(piece):
        seen.append(piece)
        cancel.set()

    result = generate_streamed(ensemble, MESSAGES, chat=True, options=GenerationOptions(max_new_tokens=32),
                               on_piece=on_piece, cancel=cancel)
    assert result.finish_reason == "cancelled"
    assert seen and result.completion_tokens <= 3


def test_logprobs_are_the_ensembled_distribution(ensemble):
    options = GenerationOptions(max_new_tokens=8, top_logprobs=5)
    result = generate_streamed(ensemble, MESSAGES, chat=True, options=options)
    assert len(result.logprobs) == 8
    # Greedy emits the ensemble's best candidate, so each chosen token is the top-1 entry.
    for entry in result.logprobs:
        assert entry.top and entry.top[0].token == entry.token
        assert entry.top[0].logprob == pytest.approx(entry.logprob)
        assert all(a.logprob >= b.logprob for a, b in zip(entry.top, entry.top[1:]))
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    # The same scores as the processor's own: output_scores of a plain ensembled generate.
    processor = ensemble.processor(MESSAGES, chat=True)
    from unite_logits.ensemble.prompts import encode_prompt

    ids = torch.tensor([encode_prompt(ensemble.primary, MESSAGES, chat=True)])
    out = ensemble.primary.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor],
                                          do_sample=False, max_new_tokens=8, output_scores=True,
                                          return_dict_in_generate=True,
                                          pad_token_id=ensemble.primary.tokenizer.pad_token_id)
    first = out.scores[0][0].float()  # the ensemble's log-probabilities, reported as the processor gives them
    assert math.isclose(result.logprobs[0].logprob, float(first.max()), rel_tol=1e-5, abs_tol=1e-6)
    finite = int(torch.isfinite(first).sum())
    assert len(result.logprobs[0].top) == min(5, finite)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
     ({"stop": ("",)}, "stop"), ({"top_logprobs": 21}, "top_logprobs")],
)
def test_bad_options_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GenerationOptions(**kwargs)


def test_temperature_zero_is_greedy_and_positive_samples():
    assert GenerationOptions(temperature=0.0).generate_kwargs() == {"max_new_tokens": 64, "do_sample": False}
    assert GenerationOptions(temperature=0.7, top_p=0.9).generate_kwargs() == {
        "max_new_tokens": 64, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


# -- batches: every row is the request alone -------------------------------------------
PROMPTS = ["The quick brown fox", "naïve façade 🚀", "def add(a, b):\n", "Numbers: 1, 2, 3",
           [{"role": "user", "content": "Hello there"}], MESSAGES,
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "東京はどこ?"}]]


def streamed_batch(ensemble, rows, cancels=None):
    """``rows`` of (prompt, options) as one batch: results, and the pieces each row streamed."""
    pieces = [[] for _ in rows]
    requests = [
        StreamRequest(ensemble.prepare(prompt, max_new_tokens=options.max_new_tokens), options, pieces[i].append,
                      (cancels or {}).get(i))
        for i, (prompt, options) in enumerate(rows)
    ]
    return generate_streamed_batch(ensemble, requests), pieces


def check_row_equals_alone(ensemble, prompt, options, got, pieces):
    alone = generate_streamed(ensemble, prompt, chat=not isinstance(prompt, str), options=options)
    assert got.text == alone.text and "".join(p.text for p in pieces) == got.text
    assert (got.finish_reason, got.completion_tokens, got.prompt_tokens) == (
        alone.finish_reason, alone.completion_tokens, alone.prompt_tokens)
    assert [t.token for t in got.logprobs] == [t.token for t in alone.logprobs]
    for entry, reference in zip(got.logprobs, alone.logprobs):
        assert entry.logprob == pytest.approx(reference.logprob, abs=1e-4)
        assert [t.token for t in entry.top] == [t.token for t in reference.top]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(
    st.tuples(st.sampled_from(PROMPTS), st.integers(1, 10), st.sampled_from([(), ("e",), ("the", " a")]),
              st.sampled_from([None, 0, 3])),
    min_size=2, max_size=4))
def test_every_row_of_a_streamed_batch_equals_that_request_alone(ensemble, rows):
    batch = [(prompt, GenerationOptions(max_new_tokens=new, stop=stop, top_logprobs=top))
             for prompt, new, stop, top in rows]
    results, pieces = streamed_batch(ensemble, batch)
    for (prompt, options), got, streamed in zip(batch, results, pieces):
        check_row_equals_alone(ensemble, prompt, options, got, streamed)


def test_rows_end_on_their_own_and_a_cancelled_row_leaves_the_others_alone(ensemble):
    cancel = threading.Event()
    rows = [("The quick brown fox", GenerationOptions(max_new_tokens=3)),
            (MESSAGES, GenerationOptions(max_new_tokens=12)),
            ("Numbers: 1, 2, 3", GenerationOptions(max_new_tokens=12))]
    steps = []
    options = rows[2][1]

    def cancel_after_two(piece):
        steps.append(piece)
        if len(steps) == 2:
            cancel.set()

    requests = [StreamRequest(ensemble.prepare(p, max_new_tokens=o.max_new_tokens), o) for p, o in rows[:2]]
    requests.append(StreamRequest(ensemble.prepare(rows[2][0], max_new_tokens=12), options, cancel_after_two, cancel))
    short, long, cancelled = generate_streamed_batch(ensemble, requests)
    assert (short.finish_reason, short.completion_tokens) == ("length", 3)
    assert (long.finish_reason, long.completion_tokens) == ("length", 12)
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 12
    for (prompt, options), got in zip(rows[:2], (short, long)):
        check_row_equals_alone(ensemble, prompt, options, got, [got])


def test_requests_that_decode_differently_cannot_share_a_batch(ensemble):
    prepared = ensemble.prepare("The quick brown fox", max_new_tokens=4)
    with pytest.raises(ValueError, match="decode alike"):
        generate_streamed_batch(ensemble, [StreamRequest(prepared, GenerationOptions(max_new_tokens=4)),
                                           StreamRequest(prepared, GenerationOptions(max_new_tokens=4, temperature=0.5))])


def ensemble_with_primary(kind):
    """A byte-BPE Llama auxiliary under a primary of another kind: absolute positions (GPT-2)
    or sliding-window attention shorter than the prompts (Gemma 3), both left-padded."""
    import copy

    from testkit import tiny

    from unite_logits import Ensemble
    from unite_logits.models.loading import LoadedModel

    primary_tok = copy.deepcopy(tiny.unigram() if kind == "gpt2" else tiny.sp_bpe())
    primary = tiny.tiny_gpt2(primary_tok) if kind == "gpt2" else tiny.tiny_gemma3(primary_tok, sliding_window=4)
    aux_tok = copy.deepcopy(tiny.byte_bpe())
    return Ensemble([LoadedModel(primary, primary_tok, f"tiny-{kind}"),
                     LoadedModel(tiny.tiny_llama(aux_tok, seed=1), aux_tok, "tiny-llama")], top_k=5)


PRIMARIES = {"llama": tiny_ensemble(), "gpt2": ensemble_with_primary("gpt2"), "gemma3": ensemble_with_primary("gemma3")}


@pytest.mark.parametrize("kind", PRIMARIES)
@settings(max_examples=10, deadline=None)
@given(prompts=st.lists(st.sampled_from([p for p in PROMPTS if isinstance(p, str)]), min_size=2, max_size=4),
       new=st.integers(1, 12))
def test_generate_batch_rows_are_generate_alone(kind, prompts, new):
    ensemble = PRIMARIES[kind]
    batch = ensemble.generate_batch(prompts, GenerationOptions(max_new_tokens=new))
    for prompt, row in zip(prompts, batch):
        single = ensemble.generate(prompt, GenerationOptions(max_new_tokens=new))
        assert (row.text, row.completion_tokens, row.prompt_tokens) == (single.text, single.completion_tokens, single.prompt_tokens)


def test_prepare_refuses_what_generation_would_before_any_work(ensemble):
    from unite_logits.ensemble.prompts import PromptError, PromptTooLongError

    small = tiny_ensemble()
    small.models[1].model.config.max_position_embeddings = 8  # the auxiliary's window
    with pytest.raises(PromptTooLongError, match="tiny-aux.*context window of 8"):
        small.prepare("one two three four five six seven eight nine ten")
    with pytest.raises(PromptError, match="empty"):
        small.prepare("   ")
    window = small.primary.model.config.max_position_embeddings
    with pytest.raises(PromptTooLongError, match="tiny-primary"):
        small.prepare("Hello", max_new_tokens=window)
    prepared = ensemble.prepare(MESSAGES)
    assert prepared.chat and prepared.member_ids[0] is not None  # each member's own template
    assert ensemble.models[1].tokenizer.decode(prepared.member_ids[0]).endswith("[ASSISTANT] ")
