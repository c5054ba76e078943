"""A served ensemble that lm-eval can score: ``echo`` with ``logprobs`` on ``/v1/completions``,
the tokenizer endpoints, and lm-eval's own ``local-completions`` against a real loopback
``unite-logits`` server, equal to the in-process ``unite`` model on the same documents."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")
httpx2 = pytest.importorskip("httpx2")

from testkit.eval_tiny import write_data  # noqa: E402
from testkit.tiny_ensemble import tiny_ensemble  # noqa: E402
from unite_logits import ScoreRequest  # noqa: E402
from unite_logits.apps.serving import BackgroundServer, ServerSettings  # noqa: E402

MODEL = "tiny-ensemble"


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture(scope="module")
def server(ensemble):
    with BackgroundServer(ensemble, ServerSettings(MODEL)) as running:
        yield running


def post(server, path, body):
    response = httpx2.post(f"http://{server.host}:{server.port}{path}", json=body, timeout=120, trust_env=False)
    return response.status_code, response.json()


def test_echo_returns_the_ensembled_log_probability_of_every_prompt_token(server, ensemble):
    tokenizer = ensemble.primary.tokenizer
    ids = tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    status, body = post(server, "/v1/completions", {"model": MODEL, "prompt": ids, "echo": True, "logprobs": 2,
                                                    "max_tokens": 1, "temperature": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None and all(len(top) <= 2 for top in logprobs["top_logprobs"][1:])
    assert "".join(logprobs["tokens"][: len(ids)]) == tokenizer.decode(ids)
    assert choice["text"].startswith(tokenizer.decode(ids))
    (expected,) = ensemble.scorer().score([ScoreRequest(ids[:1], ids[1:])], top_n=2)
    assert logprobs["token_logprobs"][1: len(ids)] == pytest.approx(expected.logprobs, abs=1e-5)
    for value, top, greedy in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:], expected.greedy):
        assert (value == max(top.values())) == greedy  # what lm-eval reads as is_greedy
    status, scored_only = post(server, "/v1/completions", {"model": MODEL, "prompt": ids, "echo": True, "logprobs": 0,
                                                           "max_tokens": 0})
    assert status == 200 and len(scored_only["choices"][0]["logprobs"]["token_logprobs"]) == len(ids)
    assert scored_only["usage"]["completion_tokens"] == 0


def test_echo_rules_are_checked(server):
    for body, needle in (({"prompt": "Hi", "max_tokens": 0}, "echo"),
                         ({"prompt": "Hi", "echo": True, "stream": True}, "stream"),
                         ({"prompt": [10**9, 5], "echo": True, "max_tokens": 0}, "vocabulary")):
        status, answer = post(server, "/v1/completions", {"model": MODEL, **body})
        assert status == 400 and needle in answer["error"]["message"], answer


def test_the_tokenizer_endpoints_are_the_primarys(server, ensemble):
    tokenizer = ensemble.primary.tokenizer
    info = httpx2.get(f"http://{server.host}:{server.port}/tokenizer_info", timeout=30, trust_env=False).json()
    assert info["eos_token"] == tokenizer.eos_token
    status, body = post(server, "/tokenize", {"prompt": "Hello there", "add_special_tokens": False})
    assert status == 200 and body["tokens"] == tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    status, body = post(server, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and body["prompt"] == "Hello there"


def _resps(results, task):
    return [[float(r[0][0]) for r in sample["resps"]] for sample in results["samples"][task]]


def test_lm_evals_local_completions_scores_the_served_ensemble_as_the_in_process_model(server, ensemble, tmp_path,
                                                                                        monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")
    import unite_logits.lm_eval as integration
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    tasks = TaskManager(include_path=str(integration.task_folder(write_data(tmp_path / "data"))), include_defaults=False)
    served = lm_eval.simple_evaluate(
        model="local-completions", tasks=["unite_arc_challenge"], limit=3, task_manager=tasks, log_samples=True,
        bootstrap_iters=0, model_args={"base_url": f"{server.url}/completions", "model": MODEL, "num_concurrent": 1,
                                       "max_retries": 1, "tokenizer_backend": "auto"})
    here = lm_eval.simple_evaluate(model=integration.UniteLM.from_ensemble(ensemble), tasks=["unite_arc_challenge"],
                                   limit=3, task_manager=tasks, log_samples=True, bootstrap_iters=0)
    got, expected = _resps(served, "unite_arc_challenge"), _resps(here, "unite_arc_challenge")
    assert len(got) == 3 and all(len(row) == 4 for row in got)
    for row, reference in zip(got, expected):
        assert all(math.isfinite(value) for value in row)
        assert row == pytest.approx(reference, abs=1e-4)
    for metric in ("acc,none", "acc_norm,none"):
        assert served["results"]["unite_arc_challenge"][metric] == here["results"]["unite_arc_challenge"][metric]


def test_lm_evals_local_completions_generates_through_the_server(server, ensemble, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")
    import unite_logits.lm_eval as integration
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "")
    tasks = TaskManager(include_path=str(integration.task_folder(write_data(tmp_path / "data"))), include_defaults=False)
    kwargs = dict(tasks=["unite_paper_arc"], limit=2, task_manager=tasks, log_samples=True, bootstrap_iters=0,
                  gen_kwargs="max_gen_toks=6")
    served = lm_eval.simple_evaluate(model="local-completions", model_args={
        "base_url": f"{server.url}/completions", "model": MODEL, "num_concurrent": 1, "max_retries": 1,
        "tokenizer_backend": "auto"}, **kwargs)
    here = lm_eval.simple_evaluate(model=integration.UniteLM.from_ensemble(ensemble), **kwargs)
    texts = [sample["filtered_resps"][0] for sample in served["samples"]["unite_paper_arc"]]
    expected = [sample["filtered_resps"][0] for sample in here["samples"]["unite_paper_arc"]]
    assert len(texts) == 2 and texts == expected
