"""`generate_streamed`: pieces add up to the answer, stop strings cut it, cancel ends it, log-probs are the ensemble's."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from tiny_ensemble import tiny_ensemble

from unite_logits.token_stream import GenerationOptions, generate_streamed

MESSAGES = [{"role": "user", "content": "What is 12 plus 30?"}]


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


def test_pieces_add_up_to_the_same_text_as_generate(ensemble):
    pieces = []
    result = generate_streamed(ensemble, MESSAGES, chat=True, options=GenerationOptions(max_new_tokens=16),
                               on_piece=pieces.append)
    plain = ensemble.generate(MESSAGES, max_new_tokens=16)
    assert result.text == plain.text and len(result.text) > 5
    assert "".join(p.text for p in pieces) == result.text
    assert len(pieces) > 3  # streamed, not handed over at the end
    assert result.completion_tokens == plain.new_tokens == 16 and result.finish_reason == "length"
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
    from unite_logits.api import encode_prompt

    ids = torch.tensor([encode_prompt(ensemble.primary, MESSAGES, chat=True)])
    out = ensemble.primary.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor],
                                          do_sample=False, max_new_tokens=8, output_scores=True,
                                          return_dict_in_generate=True,
                                          pad_token_id=ensemble.primary.tokenizer.pad_token_id)
    first = torch.log_softmax(out.scores[0][0], dim=-1)
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
