"""The OpenAI-compatible server, driven over loopback by the official ``openai`` client.

A real uvicorn server runs in a background thread on a free 127.0.0.1 port, serving a tiny
ensemble built in code (`testkit.tiny_ensemble`); every expectation is checked against the
same ensemble run directly, in-process.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from testkit.tiny_ensemble import tiny_ensemble  # noqa: E402

from unite_logits.apps import cli  # noqa: E402
from unite_logits.apps.serving import BackgroundServer, ServerSettings  # noqa: E402
from unite_logits.ensemble.options import GenerationOptions  # noqa: E402

MODEL = "tiny-ensemble"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture(scope="module")
def server(ensemble):
    with BackgroundServer(ensemble, ServerSettings(MODEL, default_max_tokens=12)) as running:
        yield running
    assert not running._thread.is_alive()  # stopped, port released


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def alone(ensemble, prompt, chat=True, **options):
    """What the ensemble answers to ``prompt`` run directly, outside the server."""
    return ensemble.generate(prompt, GenerationOptions(**options), chat=chat)


def wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# -- the happy paths --------------------------------------------------------------------
def test_models_lists_the_ensemble(client, ensemble):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.owned_by == "unite-logits"
    assert card.model_extra["members"] == ["tiny-primary", "tiny-aux"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_is_the_ensembles_answer(client, ensemble):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    expected = alone(ensemble, HELLO, max_new_tokens=10)
    (choice,) = response.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text != ""
    assert choice.finish_reason == "length" and response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-") and response.model == MODEL
    assert response.usage.prompt_tokens == expected.prompt_tokens > 0
    assert response.usage.completion_tokens == 10 and response.usage.total_tokens == expected.prompt_tokens + 10


def test_default_max_tokens_is_the_servers(client):
    response = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert response.usage.completion_tokens == 12


def test_streamed_chat_adds_up_to_the_same_answer(client, ensemble):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))
    expected = alone(ensemble, HELLO, max_new_tokens=10)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == expected.text and len(content) > 2  # token by token, not at the end
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_raw_sse_framing(server):
    """The bytes on the wire: ``data: {json}`` events, a blank line after each, ``data: [DONE]`` last."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    body = {"model": MODEL, "prompt": "The quick brown", "max_tokens": 4, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = response.read().decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert {p["object"] for p in payloads} == {"text_completion"}
    assert set(payloads[0]["choices"][0]) == {"index", "text", "logprobs", "finish_reason"}
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_plain_and_streamed_match_the_ensemble(client, ensemble):
    prompt = "The quick brown fox"
    expected = alone(ensemble, prompt, chat=False, max_new_tokens=8)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8)
    assert response.choices[0].text == expected.text != "" and response.object == "text_completion"
    assert response.usage.prompt_tokens == expected.prompt_tokens
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == expected.text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_several_prompts_and_n(client, ensemble, monkeypatch):
    batches = []
    run_batch = ensemble.run

    def counting(requests, **kwargs):
        batches.append([request.prepared.prompt for request in requests])
        return run_batch(requests, **kwargs)

    monkeypatch.setattr(ensemble, "run", counting)
    prompts = ["The quick brown fox", "Muffins and pancakes"]
    response = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, n=2)
    assert batches == [prompts]  # one batch; greedy: each prompt is one row, its n choices share the answer
    texts = [c.text for c in sorted(response.choices, key=lambda c: c.index)]
    first, second = (alone(ensemble, p, chat=False, max_new_tokens=5).text for p in prompts)
    assert texts == [first, first, second, second]  # greedy: the n choices of one prompt agree
    assert response.usage.completion_tokens == 20


def test_logprobs_come_from_the_ensembled_distribution(client, ensemble):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, logprobs=True,
                                              top_logprobs=3)
    expected = alone(ensemble, HELLO, max_new_tokens=6, top_logprobs=3)
    got = response.choices[0].logprobs.content
    assert [t.token for t in got] == [t.token for t in expected.logprobs] and len(got) == 6
    for entry, reference in zip(got, expected.logprobs):
        assert entry.logprob == pytest.approx(reference.logprob, abs=1e-6)
        assert entry.bytes == reference.bytes
        assert [t.token for t in entry.top_logprobs] == [t.token for t in reference.top]
        assert entry.top_logprobs[0].token == entry.token  # greedy emits the ensemble's best
    legacy = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=4, logprobs=2)
    logprobs = legacy.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == legacy.choices[0].text
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(lp) for top, lp in
               zip(logprobs.top_logprobs, logprobs.token_logprobs))


def test_stop_strings_cut_the_answer(client, ensemble):
    full = alone(ensemble, HELLO, max_new_tokens=12).text
    stop = full[4:7]
    assert len(stop) == 3 and full.find(stop) >= 4
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, stop=[stop])
    assert response.choices[0].message.content == full[: full.find(stop)]
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens < 12


def test_seed_makes_sampling_reproducible(client):
    def sample(seed):
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=1.0,
                                              seed=seed).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1  # it does sample


def test_four_concurrent_requests_each_get_their_own_answer(client):
    """Different prompts, lengths and seeds, half streamed: each answer equals that request run alone."""
    questions = ["Hello there", "What is 12 plus 30?", "The quick brown fox", "Tokenizers split text"]

    def ask(index):
        request = {"model": MODEL, "messages": [{"role": "user", "content": questions[index]}],
                   "max_tokens": 8 + 2 * index, "temperature": 1.0, "seed": 100 + index}
        if index % 2:
            stream = client.chat.completions.create(**request, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.chat.completions.create(**request).choices[0].message.content

    expected = [ask(i) for i in range(len(questions))]
    assert len(set(expected)) == 4  # distinguishable answers
    answers: dict[int, str] = {}
    start = threading.Barrier(len(questions))

    def ask_together(index):
        start.wait()
        answers[index] = ask(index)

    threads = [threading.Thread(target=ask_together, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [answers.get(i) for i in range(len(questions))] == expected


@pytest.fixture(scope="module")
def batching_server(ensemble):
    """A server whose requests wait a whole second for others: requests sent together share a batch."""
    with BackgroundServer(ensemble, ServerSettings(MODEL, default_max_tokens=12, batch_wait_s=1.0)) as running:
        yield running


def run_together(calls):
    """Start ``calls`` at the same moment from their own threads; their results in order."""
    results: dict[int, object] = {}
    start = threading.Barrier(len(calls))

    def call(index):
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [results.get(i) for i in range(len(calls))]


def batch_of(worker, request_id):
    (finished,) = [f for f in worker.finished if f.request_id == request_id]
    return finished.batch_requests, finished.batch_rows


def test_four_concurrent_greedy_requests_share_one_batch_and_each_is_its_answer_alone(batching_server, ensemble):
    """Chat and completions, plain and streamed, different lengths, stop strings and log-probs:
    one batch of four rows, and every answer equal to that request run alone."""
    client = openai.OpenAI(base_url=batching_server.url, api_key="-", max_retries=0, timeout=120)
    cases = [
        (HELLO, {"max_tokens": 10}),
        ([{"role": "user", "content": "What is 12 plus 30?"}], {"max_tokens": 4, "logprobs": True, "top_logprobs": 2}),
        ("The quick brown fox", {"max_tokens": 12, "stop": ["e"]}),
        ("Tokenizers split text", {"max_tokens": 7}),
    ]

    def ask(prompt, extra, stream):
        if isinstance(prompt, str):
            if stream:
                chunks = list(client.completions.create(model=MODEL, prompt=prompt, stream=True, **extra))
                return chunks[0].id, "".join(c.choices[0].text for c in chunks if c.choices), None
            response = client.completions.create(model=MODEL, prompt=prompt, **extra)
            return response.id, response.choices[0].text, None
        if stream:
            chunks = list(client.chat.completions.create(model=MODEL, messages=prompt, stream=True, **extra))
            return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), None
        response = client.chat.completions.create(model=MODEL, messages=prompt, **extra)
        logprobs = response.choices[0].logprobs
        return response.id, response.choices[0].message.content, logprobs and [t.logprob for t in logprobs.content]

    answers = run_together([lambda i=i: ask(*cases[i], stream=i >= 2) for i in range(len(cases))])
    worker = batching_server.app.state.worker
    assert all(answer is not None for answer in answers)
    assert [batch_of(worker, answer[0]) for answer in answers] == [(4, 4)] * 4
    for (prompt, extra), (_, text, logprobs) in zip(cases, answers):
        expected = alone(ensemble, prompt, chat=not isinstance(prompt, str), max_new_tokens=extra["max_tokens"],
                         stop=tuple(extra.get("stop", ())), top_logprobs=extra.get("top_logprobs"))
        assert text == expected.text
        if logprobs is not None:
            assert logprobs == pytest.approx([t.logprob for t in expected.logprobs], abs=1e-4)
    assert len({text for _, text, _ in answers}) == 4 and all(text for _, text, _ in answers)


def test_seeded_and_differently_sampled_requests_get_batches_of_their_own(batching_server):
    client = openai.OpenAI(base_url=batching_server.url, api_key="-", max_retries=0, timeout=120)

    def ask(**extra):
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, **extra).id

    ids = run_together([lambda: ask(), lambda: ask(), lambda: ask(temperature=0.7), lambda: ask(temperature=0.7, seed=3),
                        lambda: ask(temperature=0.9)])
    worker = batching_server.app.state.worker
    assert [batch_of(worker, request_id)[0] for request_id in ids] == [2, 2, 1, 1, 1]


def test_a_client_leaving_mid_stream_leaves_its_batch_mates_alone(batching_server, ensemble):
    client = openai.OpenAI(base_url=batching_server.url, api_key="-", max_retries=0, timeout=120)
    worker = batching_server.app.state.worker

    def leave_early():
        stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3000, stream=True)
        first = next(iter(stream))
        for _ in range(3):
            next(iter(stream))
        stream.close()
        return first.id

    def stay():
        response = client.completions.create(model=MODEL, prompt="Muffins and pancakes", max_tokens=40)
        return response.id, response.choices[0].text

    left_id, (stayed_id, text) = run_together([leave_early, stay])
    assert wait_for(lambda: any(f.request_id == left_id for f in worker.finished))
    (left,) = [f for f in worker.finished if f.request_id == left_id]
    assert left.finish_reasons == ("cancelled",) and left.completion_tokens < 40
    assert batch_of(worker, left_id)[0] == batch_of(worker, stayed_id)[0] == 2  # they did share a batch
    assert text == alone(ensemble, "Muffins and pancakes", chat=False, max_new_tokens=40).text


@pytest.mark.parametrize("max_batch", [1, 4])
def test_batches_respect_max_batch_and_the_primarys_context_window(ensemble, max_batch):
    """The batching rule alone: jobs admitted in order, then grouped (nothing is generated)."""
    from unite_logits.apps.serving.worker import GenerationWorker, Job

    worker = GenerationWorker(ensemble, max_batch=max_batch, batch_wait_s=0)
    window = ensemble.primary.model.config.max_position_embeddings
    events = []
    long_prompt = "word " * 60

    def job(name, prompt="Hello", max_tokens=4, n=1, **options):
        return Job(name, [prompt] * n, False, GenerationOptions(max_new_tokens=max_tokens, **options),
                   lambda *event: events.append(event))

    jobs = [job("a"), job("b", n=2), job("c", temperature=0.5), job("d", long_prompt),
            job("e", max_tokens=window - 10), job("f")]
    try:
        for each in jobs:
            worker._take(each)
        batches = []
        while worker._waiting:
            batches.append([admitted.job.request_id for admitted in worker._next_batch()])
    finally:
        worker.close()
    assert not events  # admitted, none rejected
    if max_batch == 1:  # b's two greedy copies of one prompt are one row, so b fits a batch of 1
        assert batches == [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]
    else:  # c samples; e's new tokens do not fit the window after d's long prompt; f fills the 4th row
        assert batches == [["a", "b", "d", "f"], ["c"], ["e"]]


def test_a_client_leaving_mid_stream_stops_its_generation(client, server):
    worker = server.app.state.worker
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3000, stream=True)
    received = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 4:
            break
    request_id = received[0].id
    stream.close()
    assert wait_for(lambda: any(f.request_id == request_id for f in worker.finished))
    (finished,) = [f for f in worker.finished if f.request_id == request_id]
    assert finished.finish_reasons == ("cancelled",)
    assert finished.completion_tokens < 3000
    # and the server carries on
    assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).usage.completion_tokens == 2


def test_a_client_leaving_a_plain_request_stops_its_generation(server):
    worker = server.app.state.worker
    before = {f.request_id for f in worker.finished}
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 3000}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    time.sleep(1.0)  # generating
    connection.close()  # gone without reading the answer
    assert wait_for(lambda: {f.request_id for f in worker.finished} - before)
    (finished,) = [f for f in worker.finished if f.request_id not in before]
    assert finished.finish_reasons == ("cancelled",) and finished.completion_tokens < 3000


def test_n_streamed_choices_arrive_by_index(client):
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "n": 2, "temperature": 1.0, "seed": 5}
    plain = client.chat.completions.create(**request)
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in sorted(plain.choices, key=lambda c: c.index)]
    assert texts[0] != texts[1] and finishes == {0: "length", 1: "length"}


# -- draft-and-verify's work, per request ---------------------------------------------------
SPECULATION_KEYS = {"rounds", "drafted", "accepted", "ensembled"}


def test_usage_reports_the_requests_own_draft_and_verify_work(client, ensemble):
    """A request alone in its batch: its usage says what draft-and-verify did for it (the
    counts the ensemble recorded for that generation: the draft lengths follow measured times,
    so another run may count otherwise), plain and streamed (``include_usage``)."""
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    recorded = ensemble.last_speculation  # nothing ran since
    speculation = response.usage.model_extra["speculation"]
    assert set(speculation) == SPECULATION_KEYS and speculation["drafted"] > 0
    assert speculation == {key: getattr(recorded, key) for key in SPECULATION_KEYS}
    assert speculation["accepted"] + speculation["ensembled"] == response.usage.completion_tokens == 10
    assert speculation["accepted"] <= speculation["drafted"] and speculation["rounds"] >= speculation["ensembled"]
    chunks = list(client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))
    recorded = ensemble.last_speculation
    assert chunks[-1].usage.model_extra["speculation"] == {key: getattr(recorded, key) for key in SPECULATION_KEYS}
    assert recorded.accepted + recorded.ensembled == chunks[-1].usage.completion_tokens == 8


def test_requests_sharing_a_batch_each_get_their_own_rows_share(batching_server, ensemble):
    """Rows of one batch are counted apart: each request's tokens are its own (accepted plus
    ensembled = its completion tokens), and the requests' shares add up to the batch's."""
    client = openai.OpenAI(base_url=batching_server.url, api_key="-", max_retries=0, timeout=120)

    def ask(prompt, tokens):
        return client.completions.create(model=MODEL, prompt=prompt, max_tokens=tokens)

    responses = run_together([lambda: ask("The quick brown fox", 9), lambda: ask("Muffins and pancakes", 5)])
    worker = batching_server.app.state.worker
    assert [batch_of(worker, r.id)[0] for r in responses] == [2, 2]
    shares = [r.usage.model_extra["speculation"] for r in responses]
    for response, share in zip(responses, shares):
        assert response.choices[0].finish_reason == "length"
        assert share["accepted"] + share["ensembled"] == response.usage.completion_tokens
    batch = ensemble.last_speculation  # the batch's, as nothing ran since
    assert sum(s["drafted"] for s in shares) == batch.drafted and sum(s["accepted"] for s in shares) == batch.accepted
    assert max(s["rounds"] for s in shares) == batch.rounds and shares[0]["rounds"] > shares[1]["rounds"]


def test_no_speculation_in_usage_when_decoding_token_by_token():
    ensemble = tiny_ensemble()
    ensemble.speculative = False
    with BackgroundServer(ensemble, ServerSettings(MODEL)) as running:
        client = openai.OpenAI(base_url=running.url, api_key="-", max_retries=0, timeout=120)
        response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
        assert response.usage.completion_tokens == 3 and "speculation" not in (response.usage.model_extra or {})
        assert client.models.retrieve(MODEL).model_extra["speculative"] is False


def test_the_model_card_shows_the_ensembles_spec_and_a_served_members_weight_as_given():
    """The card's members, weights and top-k are the spec's: a served member's own weight gave way."""
    from testkit import tiny
    from testkit.scripted_server import ScriptedServer
    from unite_logits import Ensemble, RemoteMember

    primary = tiny_ensemble().models[0]
    with ScriptedServer(tiny.sp_bpe()) as served:
        member = RemoteMember(served.url, served.tokenizer, name="served", weight=3.0, timeout=5.0)
        ensemble = Ensemble([primary, member], weights=[1.0, 0.25], top_k=4, confidence_gate=0.9)
        with BackgroundServer(ensemble, ServerSettings(MODEL)) as running:
            client = openai.OpenAI(base_url=running.url, api_key="-", max_retries=0, timeout=60)
            card = client.models.retrieve(MODEL).model_extra
        member.close()
    assert card["members"] == ["tiny-primary", "served"] and card["weights"] == [1.0, 0.25]
    assert (card["top_k"], card["combine"], card["confidence_gate"], card["speculative"]) == (4, "mean", 0.9, True)


# -- bad requests -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "param", "needle"),
    [
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": "hello"}, "messages", ""),
        ({"messages": [{"role": "user"}]}, None, ""),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, None, ""),
        ({"model": "gpt-9"}, "model", "does not exist"),
        ({"max_tokens": 0}, None, "only makes sense with echo"),
        ({"max_tokens": "many"}, "max_tokens", ""),
        ({"temperature": 3}, "temperature", ""),
        ({"top_p": 0}, "top_p", ""),
        ({"n": 100}, "n", ""),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"top_logprobs": 2}, None, "needs logprobs"),
        ({"presence_penalty": 0.5}, None, "not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, None, "tools"),
    ],
)
def test_bad_chat_requests_get_400_with_an_openai_error_body(client, overrides, param, needle):
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **overrides}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert needle in error["message"]
    if param is not None:
        assert error["param"] == param
    assert client.models.list().data[0].id == MODEL  # still up


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_past_the_context_window_is_400_before_anything_streams(client, stream):
    messages = [{"role": "user", "content": "pancakes " * 5000}]  # the tiny primary has 4096 positions
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=stream)
    assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as caught:  # a short prompt, but too many tokens asked for
        client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5000)
    assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["param"] == "prompt"


@pytest.mark.parametrize("body", [b'{"model": "tiny-ensemble", "prompt": "\\ud800 lone surrogate"}', b"{not json", b'{"model": "tiny-ensemble"}', b"[]"])
def test_malformed_bodies_get_400(server, body):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    assert response.status == 400 and set(payload["error"]) == {"message", "type", "param", "code"}


def test_bad_completion_requests(client):
    for request in ({"prompt": "  "}, {"prompt": []}, {"prompt": "x", "echo": True, "stream": True}, {"prompt": "x", "logprobs": 6},
                    {"prompt": ["a", "b", "c"], "n": 3}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=MODEL, max_tokens=2, **request)


def test_a_conversation_a_members_template_refuses_is_400():
    ensemble = tiny_ensemble()
    ensemble.models[1].tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + ensemble.models[1].tokenizer.chat_template)
    with BackgroundServer(ensemble, ServerSettings(MODEL)) as strict:
        client = openai.OpenAI(base_url=strict.url, api_key="-", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, max_tokens=2, stream=True,
                                           messages=[{"role": "system", "content": "Be brief."}, *HELLO])
        assert "tiny-aux" in caught.value.body["message"] and "System role not supported" in caught.value.body["message"]
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).usage.completion_tokens == 2


# -- API key ------------------------------------------------------------------------------
def test_api_key_is_required_when_set(ensemble):
    with BackgroundServer(ensemble, ServerSettings(MODEL, api_key="sekret")) as keyed:
        for wrong in ("nope", ""):
            bad = openai.OpenAI(base_url=keyed.url, api_key=wrong or "-", max_retries=0)
            with pytest.raises(openai.AuthenticationError) as caught:
                bad.models.list()
            assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=keyed.url, api_key="sekret", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).usage.completion_tokens == 2
        connection = http.client.HTTPConnection(keyed.host, keyed.port, timeout=30)
        connection.request("GET", "/v1/models")  # no Authorization header at all
        assert connection.getresponse().status == 401


def test_stopping_the_server_ends_open_streams_with_an_error(ensemble):
    keyed = BackgroundServer(ensemble, ServerSettings(MODEL)).start()
    client = openai.OpenAI(base_url=keyed.url, api_key="-", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3000, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    started = time.monotonic()
    stopper = threading.Thread(target=keyed.stop)
    stopper.start()
    with pytest.raises(openai.APIError, match="shutting down"):
        for _ in chunks:
            pass
    stopper.join(60)
    assert not stopper.is_alive() and time.monotonic() - started < 10
    (finished,) = keyed.app.state.worker.finished
    assert finished.finish_reasons == ("cancelled",) and finished.completion_tokens < 3000


# -- the command line ---------------------------------------------------------------------
def test_serve_reports_a_taken_port_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_ensemble", lambda args: pytest.fail("loaded models before checking the port"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = cli.main(["serve", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and len(err.strip().splitlines()) == 1 and "cannot listen" in err


def test_serve_batching_options_reach_the_worker(monkeypatch, ensemble):
    import unite_logits.apps.serving as serving
    from unite_logits.apps.serving.worker import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH, GenerationWorker

    seen = []
    monkeypatch.setattr(cli, "_load_ensemble", lambda args: ensemble)
    monkeypatch.setattr(serving, "serve", lambda ensemble, settings, **kwargs: seen.append(settings))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert cli.main(["serve", "--port", port]) == 0
    assert (seen[-1].max_batch, seen[-1].batch_wait_s) == (DEFAULT_MAX_BATCH, DEFAULT_BATCH_WAIT_S)
    assert cli.main(["serve", "--port", port, "--max-batch", "1", "--batch-wait-ms", "0"]) == 0
    assert (seen[-1].max_batch, seen[-1].batch_wait_s) == (1, 0.0)
    for bad in (["--max-batch", "0"], ["--batch-wait-ms", "-1"]):
        assert cli.main(["serve", "--port", port, *bad]) == cli.EXIT_USAGE
    assert len(seen) == 2
    with pytest.raises(ValueError, match="max_batch"):
        GenerationWorker(ensemble, max_batch=0)


def test_serve_with_an_ensemble_file_serves_that_ensemble_with_its_defaults(monkeypatch, tmp_path):
    """``serve --ensemble FILE``: the file's models and settings, its ``max_new_tokens`` as the
    ``max_tokens`` of a request that gives none, unless ``--max-tokens`` says otherwise."""
    import unite_logits.apps.serving as serving
    from testkit.tiny_ensemble import save_tiny_pair
    from unite_logits.ensemble.spec import EnsembleFile, EnsembleSpec, write_ensemble_file

    folders = save_tiny_pair(tmp_path)
    spec = EnsembleSpec(folders, [1.0, 0.5], top_k=3)
    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(spec, decoding={"max_new_tokens": 21}))
    seen = []
    monkeypatch.setattr(serving, "serve", lambda ensemble, settings, **kwargs: seen.append((ensemble, settings)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert cli.main(["serve", "--port", port, "--ensemble", str(path)]) == 0
    assert cli.main(["serve", "--port", port, "--ensemble", str(path), "--max-tokens", "7", "--no-speculative"]) == 0
    assert cli.main(["serve", "--port", port, "--primary", folders[0], "--aux", folders[1]]) == 0
    (first, first_settings), (second, second_settings), (_, flags_settings) = seen
    assert first.spec == spec and first.speculative and not second.speculative
    assert (first_settings.default_max_tokens, second_settings.default_max_tokens) == (21, 7)
    assert flags_settings.default_max_tokens == 256  # no file: the server's own default
    with BackgroundServer(first, first_settings) as running:
        client = openai.OpenAI(base_url=running.url, api_key="-", max_retries=0, timeout=60)
        card = client.models.retrieve(first_settings.model_name).model_extra
    assert (card["members"], card["weights"], card["top_k"]) == (list(folders), [1.0, 0.5], 3)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.real_models
def test_the_serve_command_on_the_real_models(tmp_path):
    from testkit.real_models import skip_unless_installed

    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        skip_unless_installed(name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITE_LOGITS_API_KEY": "k"}
    child = subprocess.Popen([sys.executable, "-m", "unite_logits", "serve", "--port", str(port),
                              "--batch-wait-ms", "1000"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    model = "smollm2-135m-instruct+gemma3-270m"
    questions = ["What is the capital of France?", "What is 12 plus 30?", "Name a fruit."]
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=300)

        def up():
            try:
                return bool(client.models.list().data)
            except openai.APIConnectionError:
                return child.poll() is None and False

        def ask(question):
            return client.chat.completions.create(model=model, max_tokens=16,
                                                  messages=[{"role": "user", "content": question}]).choices[0]

        assert wait_for(up, seconds=600), child.stdout.read().decode() if child.poll() is not None else "no start"
        assert client.models.list().data[0].id == model
        together = run_together([lambda q=q: ask(q) for q in questions])
        alone_answers = [ask(q) for q in questions]
        assert "Paris" in together[0].message.content
        # Batched rows are the answers alone, up to a near tie flipped by batched arithmetic.
        same = [a.message.content == b.message.content for a, b in zip(together, alone_answers)]
        assert sum(same) >= 2, (together, alone_answers)
    finally:
        child.terminate()
        child.wait(60)
    log = child.stdout.read().decode()
    assert "batch of 3 requests, 3 rows" in log, log[-2000:]

