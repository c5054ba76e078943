"""Remote members: a model behind llama.cpp's llama-server (or an OpenAI-compatible server).

Three kinds of test:

* the wire formats on literal answers (pure functions);
* the failure paths against `ScriptedServer`, a small real HTTP server on loopback that
  answers what each test scripts (bad JSON, error statuses, silence, too few candidates);
* the model itself against a REAL ``llama-server`` serving the catalogue's Gemma 3 270M
  (`gemma_server`, 1 thread, 4 slots), compared with the same GGUF loaded in transformers.
"""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from testkit import tiny
from testkit.llama_server import LlamaServer, gemma_gguf, gemma_server, llama_server_binary, require_llama_server  # noqa: F401
from testkit.scripted_server import Reply, ScriptedServer, llama_cpp_answer, vllm_answer
from unite_logits.remote import RemoteMember, RemoteMemberError, RemoteRunner
from unite_logits.remote.protocols import Candidates, MalformedAnswer, completion_request, parse_candidates
from unite_logits.remote.runner import candidates_for, dense_logprobs
from unite_logits.remote.spec import remote_member_from_spec, split_remote_spec

FAST = {"timeout": 5.0, "retries": 1}


# -- wire formats --------------------------------------------------------------------------
def test_llama_cpp_request_sends_ids_and_asks_for_one_token_with_probabilities():
    path, body = completion_request("llama.cpp", [2, 17, 5], 40)
    assert path == "/completion"
    assert body["prompt"] == [2, 17, 5] and body["n_predict"] == 1 and body["n_probs"] == 40
    assert body["cache_prompt"] is True


def test_openai_request_uses_token_id_prompt_and_logprobs():
    path, body = completion_request("openai", [2, 17], 8, model="m")
    assert path == "/v1/completions"
    assert body["prompt"] == [2, 17] and body["max_tokens"] == 1 and body["logprobs"] == 8 and body["model"] == "m"
    assert body["return_tokens_as_token_ids"] is True


def test_parses_llama_cpp_answer_and_maps_a_zero_probability_to_minus_inf():
    answer = llama_cpp_answer([(5, -0.1), (9, -2.5), (1, -3.4028234663852886e38)])
    candidates = parse_candidates("llama.cpp", answer)
    assert candidates.ids == (5, 9, 1)
    assert candidates.logprobs[:2] == (-0.1, -2.5) and candidates.logprobs[2] == -math.inf


def test_parses_vllm_legacy_answer_keyed_by_token_ids():
    candidates = parse_candidates("openai", vllm_answer([(7, -0.2), (3, -1.0)]))
    assert dict(zip(candidates.ids, candidates.logprobs)) == {7: -0.2, 3: -1.0}


def test_parses_llama_server_openai_answer_with_ids():
    answer = {"choices": [{"logprobs": {"content": [{"id": 4, "logprob": -0.3,
                                                      "top_logprobs": [{"id": 4, "logprob": -0.3}]}]}}]}
    assert parse_candidates("openai", answer).ids == (4,)


@pytest.mark.parametrize(
    ("protocol", "answer", "says"),
    [
        ("llama.cpp", {"content": "x"}, "completion_probabilities"),
        ("llama.cpp", [], "not a JSON object"),
        ("llama.cpp", {"completion_probabilities": [{"top_logprobs": [{"logprob": -1}]}]}, "no 'id'"),
        ("llama.cpp", {"completion_probabilities": [{"top_logprobs": [{"id": "7", "logprob": -1}]}]}, "not a token id"),
        ("llama.cpp", {"completion_probabilities": [{"top_logprobs": [{"id": 7, "logprob": 2.0}]}]}, "<= 0"),
        ("llama.cpp", {"completion_probabilities": [{"top_logprobs": [{"id": 7, "logprob": None}]}]}, "not a number"),
        ("openai", {"choices": [{"logprobs": None}]}, "no log-probabilities"),
        ("openai", {"choices": [{"logprobs": {"top_logprobs": [{" the": -0.1}]}}]}, "token strings"),
        ("openai", {"choices": []}, "no 0"),
    ],
)
def test_malformed_answers_say_what_is_wrong(protocol, answer, says):
    with pytest.raises(MalformedAnswer, match=says):
        parse_candidates(protocol, answer)


_CANDIDATE = st.tuples(st.integers(0, 40), st.floats(-50.0, 0.0) | st.just(-math.inf))


@given(rows=st.lists(st.none() | st.lists(_CANDIDATE, max_size=12), max_size=4), vocab_size=st.integers(1, 32))
def test_dense_rows_hold_each_candidates_best_value_and_minus_inf_elsewhere(rows, vocab_size):
    answers = [None if row is None else Candidates(tuple(i for i, _ in row), tuple(v for _, v in row)) for row in rows]
    out = dense_logprobs(answers, vocab_size)
    assert out.shape == (len(rows), vocab_size) and out.dtype == torch.float32
    for dense, row in zip(out, rows):
        best: dict[int, float] = {}
        for token_id, value in row or []:
            if token_id < vocab_size:
                best[token_id] = max(best.get(token_id, -math.inf), value)
        expected = torch.full((vocab_size,), -math.inf)
        for token_id, value in best.items():
            expected[token_id] = value
        torch.testing.assert_close(dense, expected)


def test_candidates_asked_for_default_to_four_times_top_k_and_never_fewer_than_top_k():
    assert candidates_for(10, None) == 40
    assert candidates_for(10, 12) == 12
    assert candidates_for(10, 3) == 10


def test_remote_member_and_its_error_are_public_and_the_error_is_a_model_error():
    import unite_logits
    from unite_logits.models.errors import ModelError

    assert unite_logits.RemoteMember is RemoteMember and unite_logits.RemoteMemberError is RemoteMemberError
    assert {"RemoteMember", "RemoteMemberError"} <= set(unite_logits.__all__)
    error = RemoteMemberError("m", "http://h:1", "down")
    assert isinstance(error, ModelError) and str(error) == "remote member 'm' at http://h:1: down"


# -- SPEC@URL ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gemma3-270m@http://127.0.0.1:8080", ("gemma3-270m", "http://127.0.0.1:8080")),
        ("gemma3-270m@127.0.0.1:8080", ("gemma3-270m", "http://127.0.0.1:8080")),
        ("./models/tok@https://user:pw@node:8000/v1", ("./models/tok", "https://user:pw@node:8000/v1")),
        ("./m@[::1]:80", ("./m", "http://[::1]:80")),
        ("gemma3-270m", None),
        ("/models/release@v2", None),
        ("localhost:8080", None),
    ],
)
def test_split_remote_spec(text, expected):
    assert split_remote_spec(text) == expected


def test_split_remote_spec_wants_a_spec_before_the_url():
    with pytest.raises(ValueError, match="before the @"):
        split_remote_spec("@http://127.0.0.1:8080")


# -- failures, against a scripted real HTTP server ----------------------------------------
@pytest.fixture()
def scripted():
    with ScriptedServer(tiny.byte_bpe()) as server:
        yield server


def _runner(server, top_k=3, **options):
    member = RemoteMember(server.url, server.tokenizer, name="tiny", **{**FAST, **options})
    return member, member.runner(top_k=top_k)


def test_runner_returns_dense_rows_with_minus_inf_outside_the_candidates(scripted):
    scripted.completion = lambda body: Reply.json(llama_cpp_answer([(5, -0.5), (2, -1.5), (9, -2.0)]))
    member, runner = _runner(scripted)
    assert isinstance(runner, RemoteRunner) and runner.vocab_size == member.vocab_size == len(scripted.tokenizer)
    out = runner.logprobs([[1, 2, 3], [4]])
    assert out.shape == (2, len(scripted.tokenizer)) and out.dtype == torch.float32
    for row in out:
        finite = torch.isfinite(row).nonzero().flatten().tolist()
        assert sorted(finite) == [2, 5, 9] and row[5].item() == pytest.approx(-0.5)
    assert [b["prompt"] for b in scripted.bodies] in ([[1, 2, 3], [4]], [[4], [1, 2, 3]])
    assert all(b["n_probs"] == candidates_for(3, None) for b in scripted.bodies)


def test_ids_past_the_tokenizer_vocabulary_never_count(scripted):
    size = len(scripted.tokenizer)
    scripted.completion = lambda body: Reply.json(llama_cpp_answer([(size + 3, -0.1), (1, -1.0), (2, -2.0)]))
    _, runner = _runner(scripted, top_k=2)
    row = runner.logprobs([[1]])[0]
    assert torch.isfinite(row).nonzero().flatten().tolist() == [1, 2]


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(200, b"{not json"), "not JSON"),
        (Reply(500, b'{"error": "kaboom"}'), "HTTP 500: .*kaboom"),
        (Reply.json({"completion_probabilities": []}), "malformed answer"),
        (Reply.json(llama_cpp_answer([(1, -0.1)])), "1 candidates, fewer than top_k=3"),
    ],
)
def test_bad_answers_raise_one_clear_error_naming_member_and_url(scripted, reply, says):
    scripted.completion = lambda body: reply
    _, runner = _runner(scripted)
    with pytest.raises(RemoteMemberError, match=says) as caught:
        runner.logprobs([[1, 2]])
    assert "'tiny'" in str(caught.value) and scripted.url in str(caught.value)


def test_a_503_is_retried_with_backoff_then_answered(scripted):
    replies = iter([Reply(503, b"loading model"), Reply(503, b"loading model")])
    good = Reply.json(llama_cpp_answer([(5, -0.5), (2, -1.5), (9, -2.0)]))
    scripted.completion = lambda body: next(replies, good)
    _, runner = _runner(scripted, retries=2)
    assert torch.isfinite(runner.logprobs([[1]])).sum() == 3
    assert len(scripted.bodies) == 3


def test_a_503_past_the_retries_is_the_clear_error(scripted):
    scripted.completion = lambda body: Reply(503, b"loading model")
    _, runner = _runner(scripted, retries=1)
    with pytest.raises(RemoteMemberError, match="HTTP 503: loading model"):
        runner.logprobs([[1]])
    assert len(scripted.bodies) == 2


def test_silence_past_the_timeout_is_an_error_not_a_hang(scripted):
    scripted.completion = lambda body: Reply(200, b"{}", delay_s=3.0)
    _, runner = _runner(scripted, timeout=0.5)
    with pytest.raises(RemoteMemberError, match="within the timeout of 0.5 s"):
        runner.logprobs([[1]])


def test_an_answer_dripping_one_byte_at_a_time_is_bounded_by_the_timeout(scripted):
    """Headers at once, then one byte every 0.3 s: each read is quick, the answer is not."""
    import time

    body = json.dumps(llama_cpp_answer([(5, -0.5), (2, -1.5), (9, -2.0)])).encode()
    scripted.completion = lambda request: Reply(200, body, drip_s=0.3)
    _, runner = _runner(scripted, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RemoteMemberError, match="still arriving after 1 s"):
        runner.logprobs([[1]])
    elapsed = time.monotonic() - started
    assert len(body) * 0.3 > 10 and elapsed < 3.0  # the whole answer would take > 10 s


def test_abstain_mode_gives_all_minus_inf_and_a_warning(scripted, caplog):
    scripted.completion = lambda body: Reply(500, b"overloaded")
    _, runner = _runner(scripted, on_error="abstain")
    with caplog.at_level(logging.WARNING, logger="unite_logits.remote.runner"):
        out = runner.logprobs([[1], [2, 3]])
    assert torch.isinf(out).all() and (out < 0).all()
    assert runner.abstentions == 2
    assert any("abstains" in r.getMessage() and "HTTP 500" in r.getMessage() for r in caplog.records)


def test_openai_protocol_reads_vllm_style_answers(scripted):
    scripted.llama_cpp = False
    scripted.completion = lambda body: Reply.json(vllm_answer([(3, -0.7), (8, -1.1)]))
    member, runner = _runner(scripted, top_k=2)
    assert member.protocol == "openai" and member.server.model == "scripted"
    row = runner.logprobs([[5, 6]])[0]
    assert row[3].item() == pytest.approx(-0.7) and row[8].item() == pytest.approx(-1.1)
    assert scripted.bodies[-1]["model"] == "scripted" and scripted.bodies[-1]["logprobs"] == candidates_for(2, None)


def test_rows_longer_than_the_servers_context_fail_before_sending(scripted):
    scripted.n_ctx = 8
    _, runner = _runner(scripted)
    assert runner.limit == 7
    with pytest.raises(RemoteMemberError, match="past the server's context of 8"):
        runner.logprobs([list(range(1, 9))])
    assert scripted.bodies == []


@pytest.mark.parametrize(
    ("served_size", "says"),
    [
        (-1, f"the served model has {len(tiny.byte_bpe())} tokens but the tokenizer {len(tiny.sp_bpe())}"),
        (None, "tokenizes a probe text differently"),
    ],
)
def test_construction_against_a_mismatched_tokenizer_fails_clearly(served_size, says):
    assert len(tiny.byte_bpe()) < len(tiny.sp_bpe())  # the size check applies
    with ScriptedServer(tiny.byte_bpe(), n_vocab=served_size) as server:
        with pytest.raises(RemoteMemberError, match=says) as caught:
            RemoteMember(server.url, tiny.sp_bpe(), name="wrong", **FAST)
    assert server.url in str(caught.value) and "'wrong'" in str(caught.value)
    assert server.bodies == []  # nothing was ever asked of the model


def test_the_vocabulary_check_can_be_left_out():
    with ScriptedServer(tiny.byte_bpe()) as server:
        member = RemoteMember(server.url, tiny.sp_bpe(), check_vocabulary=False, **FAST)
        assert member.protocol == "llama.cpp" and member.vocab_size == len(tiny.sp_bpe())
        member.close()


def test_construction_against_a_dead_url_fails_clearly():
    from testkit.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteMemberError, match="cannot reach the server") as caught:
        RemoteMember(url, tiny.byte_bpe(), name="nobody", timeout=2.0, retries=1)
    assert url in str(caught.value) and "'nobody'" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"url": "127.0.0.1:8080"}, "http:// or https://"),
        ({"url": "http://"}, "no valid host"),
        ({"url": "http://bad host:80"}, "no valid host"),
        ({"url": "http://127.0.0.1:99999"}, "not a valid URL"),
        ({"weight": -1}, "non-negative"),
        ({"timeout": 0}, "positive number of seconds"),
        ({"retries": -1}, "non-negative integer"),
        ({"protocol": "grpc"}, "one of llama.cpp, openai"),
        ({"on_error": "ignore"}, "'raise' or 'abstain'"),
        ({"top_n": 0}, "positive integer"),
    ],
)
def test_bad_arguments_fail_before_any_request(options, says):
    arguments = {"url": "http://127.0.0.1:9", "tokenizer": tiny.byte_bpe(), **options}
    with pytest.raises((ValueError, TypeError), match=says):
        RemoteMember(**arguments)


def test_spec_at_url_builds_a_member_with_the_folders_tokenizer(tmp_path, scripted):
    scripted.tokenizer.save_pretrained(tmp_path / "tok")
    member = remote_member_from_spec(f"{tmp_path / 'tok'}@{scripted.url}", weight=0.5, **FAST)
    assert member.url == scripted.url and member.weight == 0.5 and member.name == f"tok@{scripted.url}"
    assert member.tokenizer.get_vocab() == scripted.tokenizer.get_vocab()
    assert member.eos_token_ids == [scripted.tokenizer.eos_token_id]


def test_spec_at_url_refuses_a_local_spec():
    with pytest.raises(ValueError, match="is not SPEC@URL"):
        remote_member_from_spec("gemma3-270m")


# -- a real llama-server serving Gemma 3 270M ---------------------------------------------
# Marked real_models: they need the catalogue's Gemma (its GGUF and converted tokenizer).
def test_llama_server_is_installed_where_ci_runs():
    """CI must run the llama-server tests, never skip them."""
    if os.environ.get("CI", "").lower() not in ("true", "1"):
        pytest.skip("only CI (CI=true) has to have llama-server; here the tests skip without it")
    assert llama_server_binary() is not None, f"llama-server missing on CI; install it with: {scripts_hint()}"


def scripts_hint() -> str:
    from testkit.llama_server import INSTALL_HINT

    return INSTALL_HINT


PROMPTS = (
    "The capital of France is",
    "Question: What is 12 plus 30?\nAnswer:",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village by the sea, there lived",
    "The mitochondria is the powerhouse of the",
    "import numpy as np\nx = np.arange(10)\nprint(x.",
    "To be, or not to be, that is the",
    "Water boils at 100 degrees Celsius, which is",
    "In 1969, Neil Armstrong became the first person to",
    "The quick brown fox jumps over the lazy",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "SELECT name, age FROM users WHERE age >",
)
POSITIONS = 6
"""Next-token distributions compared per prompt: after each of its last POSITIONS prefixes."""


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from testkit.real_models import load_real_tokenizer

    return load_real_tokenizer("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_member(gemma_server, gemma_tokenizer):
    member = RemoteMember(gemma_server.url, gemma_tokenizer, name="gemma-served", timeout=60.0)
    yield member
    member.close()


def _prefixes(tokenizer) -> list[list[int]]:
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id  # the member's ids carry BOS; the server adds none
        rows += [ids[:end] for end in range(len(ids) - POSITIONS + 1, len(ids) + 1)]
    return rows


@pytest.mark.real_models
def test_construction_reads_the_servers_facts(gemma_member, gemma_server, gemma_tokenizer):
    assert gemma_member.protocol == "llama.cpp"
    assert gemma_member.server.n_vocab == len(gemma_tokenizer)
    assert gemma_member.server.slots == gemma_server.slots == gemma_member.concurrency
    assert gemma_member.server.n_ctx == gemma_server.ctx_per_slot


@pytest.mark.real_models
def test_served_member_agrees_with_the_same_model_in_transformers(gemma_member):
    """Q4_K_M in llama.cpp vs the same weights dequantized to fp32 in transformers.

    The weights are identical (transformers dequantizes the Q4_K_M GGUF); what differs is
    llama.cpp's arithmetic (activations quantized to 8 bits for its k-quant dot products)
    against fp32 torch. Measured on 72 next-token distributions (12 prompts x their last 6
    prefixes): top-1 agreement 70/72 to 72/72 between runs (the server's sums depend a
    little on which rows it batches together, and near-ties flip), top-10 sets overlap
    0.95 on average, the top-1 log-probability differs by 0.03 nats (median, max 0.28) and
    the worst of the top-10 by 0.25 nats (median; rare tail tokens up to 1.6).
    """
    from testkit.real_models import load_real

    model, tokenizer = load_real("gemma3-270m")
    rows = _prefixes(tokenizer)
    served = gemma_member.runner(top_k=10).logprobs(rows)
    local_rows = []
    with torch.no_grad():  # one forward per prompt: position j's logits see only ids[:j + 1]
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            local_rows.append(torch.log_softmax(model(torch.tensor([ids])).logits[0, -POSITIONS:].float(), -1))
    local = torch.cat(local_rows)
    assert local.shape == served.shape == (len(PROMPTS) * POSITIONS, len(tokenizer))
    local_top, served_top = local.topk(10).indices, served.topk(10).indices
    agreement = (local_top[:, 0] == served_top[:, 0]).float().mean().item()
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(local_top, served_top)) / local_top.numel()
    top1_gap = (served.gather(1, local_top[:, :1]) - local.gather(1, local_top[:, :1])).abs().flatten()
    top10_gap = (served.gather(1, local_top) - local.gather(1, local_top)).abs().amax(1)
    print(f"top-1 agreement {agreement:.3f}, top-10 overlap {overlap:.3f}, top-1 gap median "
          f"{top1_gap.median():.3f} max {top1_gap.max():.3f}, top-10 worst gap median {top10_gap.median():.3f}")
    assert agreement >= 0.9
    assert overlap >= 0.9
    assert top1_gap.median() < 0.1 and top1_gap.max() < 0.5
    assert top10_gap.median() < 0.5


@pytest.mark.real_models
def test_a_batch_gives_what_each_row_gives_alone(gemma_member, gemma_tokenizer):
    """Rows sent together come back each with its own answer, the same as sent one at a time.

    Compared at a decoding step (each slot holds its row's prefix and evaluates one new
    token), as in a generation. The first call of a row
    evaluates its whole prompt through llama.cpp's batched prompt path, whose sums differ
    from the one-token path by up to ~0.2 nats (measured), so prefill and step are not compared.
    """
    rows = [gemma_tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    runner = gemma_member.runner(top_k=10)
    prefill = runner.logprobs(rows)
    step = [ids + [int(top)] for ids, top in zip(rows, prefill.argmax(-1))]
    together = runner.logprobs(step)
    alone = torch.cat([runner.logprobs([ids]) for ids in step])
    assert runner.requests == 3 * len(rows)
    assert len(set(together.argmax(-1).tolist())) > 1  # different rows, different answers
    # Each row's answer is its own: same best token, same candidates. A row sent again may land
    # in another slot whose cached prefix differs, and then goes through the prompt path (up to
    # 0.39 nats apart seen), which can swap candidates at the edge of the top-n.
    assert together.argmax(-1).tolist() == alone.argmax(-1).tolist()
    both = torch.isfinite(together) & torch.isfinite(alone)
    overlap = both.sum(-1).float() / torch.isfinite(together).sum(-1).float()
    assert bool((overlap >= 0.8).all()), overlap
    assert float((together[both] - alone[both]).abs().max()) < 0.5  # as served vs transformers below


@pytest.mark.real_models
def test_openai_endpoint_of_llama_server_gives_the_same_candidates(gemma_server, gemma_tokenizer, gemma_member):
    rows = [gemma_tokenizer(p)["input_ids"] for p in PROMPTS[4:7]]
    completion = gemma_member.runner(top_k=10)
    completion.logprobs(rows)  # prefill, so that both answers below come from the one-token path
    openai = RemoteMember(gemma_server.url, gemma_tokenizer, protocol="openai", timeout=60.0)
    try:
        assert openai.protocol == "openai"
        via_openai = openai.runner(top_k=10).logprobs(rows)
    finally:
        openai.close()
    via_completion = completion.logprobs(rows)
    assert torch.isfinite(via_openai).sum() == len(rows) * candidates_for(10, None)
    torch.testing.assert_close(via_openai, via_completion, atol=1e-4, rtol=0)


@pytest.mark.real_models
def test_the_server_reuses_a_rows_prefix(gemma_server, gemma_tokenizer):
    """--swa-full keeps Gemma's whole prefix, so the next step evaluates only the new token."""
    import httpx2

    ids = gemma_tokenizer(PROMPTS[3] * 20)["input_ids"]
    ask = {"n_predict": 1, "n_probs": 1, "cache_prompt": True, "id_slot": 0}
    httpx2.post(f"{gemma_server.url}/completion", json={**ask, "prompt": ids[:-1]}, timeout=120, trust_env=False)
    answer = httpx2.post(f"{gemma_server.url}/completion", json={**ask, "prompt": ids}, timeout=120,
                         trust_env=False).json()
    assert answer["tokens_cached"] >= len(ids) - 2
    assert answer["timings"]["prompt_n"] <= 2


@pytest.mark.real_models
def test_spec_at_url_with_a_catalogue_name(gemma_server, gemma_tokenizer):
    member = remote_member_from_spec(f"gemma3-270m@{gemma_server.url}", timeout=60.0)
    try:
        assert member.name == f"gemma3-270m@{gemma_server.url}"
        assert member.tokenizer.get_vocab() == gemma_tokenizer.get_vocab()
        end_of_turn = gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert gemma_tokenizer.eos_token_id in member.eos_token_ids and end_of_turn in member.eos_token_ids
    finally:
        member.close()


@pytest.mark.real_models
def test_killing_the_server_mid_use_gives_the_clear_error_or_abstains(tmp_path, gemma_tokenizer, caplog):
    binary = require_llama_server()
    with LlamaServer(binary, gemma_gguf(tmp_path), slots=1) as server:
        strict = RemoteMember(server.url, gemma_tokenizer, name="strict", timeout=10.0, retries=1)
        lenient = RemoteMember(server.url, gemma_tokenizer, name="lenient", timeout=10.0, retries=1,
                               on_error="abstain")
        ids = gemma_tokenizer(PROMPTS[0])["input_ids"]
        strict_runner, lenient_runner = strict.runner(top_k=10), lenient.runner(top_k=10)
        assert torch.isfinite(strict_runner.logprobs([ids])).sum() == candidates_for(10, None)
        assert torch.isfinite(lenient_runner.logprobs([ids])).sum() == candidates_for(10, None)
        server.kill()
        with pytest.raises(RemoteMemberError, match="cannot reach the server") as caught:
            strict_runner.logprobs([ids + [ids[-1]]])
        assert server.url in str(caught.value) and "'strict'" in str(caught.value)
        with caplog.at_level(logging.WARNING, logger="unite_logits.remote.runner"):
            out = lenient_runner.logprobs([ids + [ids[-1]], ids])
        assert torch.isneginf(out).all() and lenient_runner.abstentions == 2
        assert sum("'lenient'" in r.getMessage() and "abstains" in r.getMessage() for r in caplog.records) == 2


# -- the row store's cache view (what the processor's AuxiliaryRows calls) ----------------
def test_row_cache_sends_each_fed_rows_full_ids_and_edits_only_its_lists(scripted):
    from unite_logits.core.reading import ReadTree

    scripted.completion = lambda body: Reply.json(llama_cpp_answer([(5, -0.5), (2, -1.5), (9, -2.0)]))
    _, runner = _runner(scripted)
    cache = runner.new_cache(2)
    out = cache.feed([[1, 2], [3]])
    assert sorted(b["prompt"] for b in scripted.bodies) == [[1, 2], [3]] and torch.isfinite(out).sum() == 6
    scripted.bodies.clear()
    out = cache.feed([[4], []])  # only row 0 moves on
    assert [b["prompt"] for b in scripted.bodies] == [[1, 2, 4]]
    assert torch.isfinite(out[0]).sum() == 3 and torch.isneginf(out[1]).all()
    cache.drop(0, 2)
    cache.select_rows(torch.tensor([1, 0, 0]))
    assert cache.ids == [[3], [1], [1]]
    assert not cache.can_drop(2, 2) and runner.forward_passes == cache.forward_passes == 2
    # a tree: one request per query (this server has no log-probabilities along a prompt)
    scripted.bodies.clear()
    out = cache.read([ReadTree(1, [6, 7], branches=[(1, [8])], queries=[(-1, 0), (0, 0), (-1, 1)]), None, None])
    assert sorted(b["prompt"] for b in scripted.bodies) == [[3, 6], [3, 6, 7], [3, 8]]
    assert out[0].shape == (3, len(scripted.tokenizer)) and out[1] is None and cache.ids == [[3, 6, 7], [1], [1]]


def test_the_row_store_runs_a_remote_member_through_its_row_cache(scripted):
    """The processor's own AuxiliaryRows drives a RemoteRunner as it drives a local one."""
    from unite_logits.core.rows import AuxiliaryRows
    from unite_logits.core.sync import IdSync

    scripted.completion = lambda body: Reply.json(llama_cpp_answer([(5, -0.5), (2, -1.5), (len(body["prompt"]), -2.0)]))
    _, runner = _runner(scripted)
    rows = AuxiliaryRows(runner, [IdSync([1, 2, 3]), IdSync([1, 2, 3]), IdSync([4])])
    assert sorted(b["prompt"] for b in scripted.bodies) == [[1, 2, 3], [4]]  # a prompt given twice is sent once
    assert rows.logprobs.shape == (3, len(scripted.tokenizer)) and rows.logprobs[1, 3] == -2.0
    scripted.bodies.clear()
    rows.push_token(0, 7, None)
    rows.push_token(2, 8, None)
    rows.refresh()
    assert sorted(b["prompt"] for b in scripted.bodies) == [[1, 2, 3, 7], [4, 8]]
    assert rows.logprobs[0, 4] == -2.0 and rows.logprobs[1, 3] == -2.0 and rows.logprobs[2, 2] == -1.5
    rows.select([2, 0])
    scripted.bodies.clear()
    rows.push_token(1, 9, None)
    rows.refresh()
    assert [b["prompt"] for b in scripted.bodies] == [[1, 2, 3, 7, 9]]


@pytest.mark.real_models
def test_remote_rows_follow_the_local_rows_of_the_same_model(gemma_member):
    """Greedy steps through the row store: the served Gemma picks what the local Gemma picks."""
    from testkit.real_models import load_real

    from unite_logits.core.member import LocalRunner
    from unite_logits.core.rows import AuxiliaryRows
    from unite_logits.core.sync import IdSync

    model, tokenizer = load_real("gemma3-270m")
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    local = AuxiliaryRows(LocalRunner(model, len(tokenizer), "local"), [IdSync(p) for p in prompts])
    remote = AuxiliaryRows(gemma_member.runner(top_k=10), [IdSync(p) for p in prompts])
    agree, steps = 0, 8
    for step in range(steps):
        if step:
            for row, token in enumerate(local.logprobs.argmax(-1).tolist()):  # both follow the local text
                local.push_token(row, token, None)
                remote.push_token(row, token, None)
            local.refresh()
            remote.refresh()
        agree += int((local.logprobs.argmax(-1) == remote.logprobs.argmax(-1)).sum())
    print(f"row store: served top-1 == local top-1 in {agree}/{steps * len(prompts)} row-steps")
    assert remote.runner.requests == steps * len(prompts)
    assert agree >= steps * len(prompts) - 2  # Q4 vs fp32: a near-tie may flip (see the agreement test)


# -- a served member inside the ensemble (UniTEProcessor in generate, the CLI) ---------------
def _smollm2():
    from testkit.real_models import load_real

    return load_real("smollm2-135m-instruct")


def _greedy(model, tok, prompt, processors, new_tokens=12):
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, logits_processor=processors, do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=tok.eos_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.real_models
def test_an_ensemble_with_the_served_member_follows_the_ensemble_with_the_local_one(gemma_member):
    """SmolLM2 + served Gemma (Q4) against SmolLM2 + the same Gemma in transformers (fp32)."""
    from testkit.real_models import load_real

    from unite_logits import Member, UniTEProcessor

    primary, tok = _smollm2()
    gemma, gemma_tok = load_real("gemma3-270m")
    same, prefix_lengths = 0, []
    prompts = PROMPTS[:3]
    for prompt in prompts:
        with UniTEProcessor(tok, [gemma_member], top_k=10) as served, \
                UniTEProcessor(tok, [Member(gemma, gemma_tok, name="gemma-local")], top_k=10) as local:
            a, b = _greedy(primary, tok, prompt, [served]), _greedy(primary, tok, prompt, [local])
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        prefix_lengths.append(common)
        same += a == b
    print(f"served vs local member: {same}/{len(prompts)} identical, agreeing prefixes {prefix_lengths} of 12")
    assert sum(length >= 6 for length in prefix_lengths) >= 2


@pytest.mark.real_models
@pytest.mark.parametrize("on_error", ["raise", "abstain"])
def test_killing_the_server_mid_generation(tmp_path, gemma_tokenizer, on_error, caplog):
    """The clear error naming member and URL, or (abstain) the generation goes on without it."""
    from unite_logits import UniTEProcessor

    primary, tok = _smollm2()
    with LlamaServer(require_llama_server(), gemma_gguf(tmp_path), slots=1) as server:
        member = RemoteMember(server.url, gemma_tokenizer, name="gemma", timeout=10.0, retries=1, on_error=on_error)
        calls = []

        def kill_at_third_step(input_ids, scores):
            calls.append(1)
            if len(calls) == 3:
                server.kill()
            return scores

        proc = UniTEProcessor(tok, [member], top_k=10, trace=True)
        try:
            if on_error == "raise":
                with pytest.raises(RemoteMemberError, match="remote member 'gemma' at http://127.0.0.1") as caught:
                    _greedy(primary, tok, PROMPTS[0], [proc, kill_at_third_step])
                assert "cannot reach the server" in str(caught.value)
            else:
                with caplog.at_level(logging.WARNING, logger="unite_logits.remote.runner"):
                    out = _greedy(primary, tok, PROMPTS[0], [proc, kill_at_third_step])
                assert len(out) == 12
                assert "gemma" not in proc.trace[0].abstained and "gemma" in proc.trace[-1].abstained
        finally:
            proc.close()
            member.close()


@pytest.mark.real_models
def test_cli_generate_with_a_served_auxiliary(gemma_server, capsys):
    import json

    from unite_logits.apps.cli import main

    code = main(["generate", "What is 12 plus 30?", "--aux", f"gemma3-270m@{gemma_server.url}",
                 "--max-new-tokens", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["models"][1] == f"gemma3-270m@{gemma_server.url}" and out["new_tokens"] >= 1


@pytest.mark.parametrize("option", ["--primary", "--aux"])
def test_cli_a_dead_server_is_one_line_naming_it(capsys, option):
    from unite_logits.apps.cli import main

    assert main(["generate", "hi", option, "gemma3-270m@http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("unite-logits: error: remote member 'gemma3-270m@http://127.0.0.1:9'")
    assert "cannot reach the server" in err[-1]
    assert not any("Traceback" in line for line in err)
