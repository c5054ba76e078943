"""The hostile-input list: each case is a one-line error (exit status 2, or 400 from the
server), or a documented behaviour, never a hang, a traceback or a silently wrong answer.

Cases covered elsewhere: an answer that drips one byte at a time (`test_remote`), cached
weights damaged with their mtime kept (`test_loading`), a seed past 64 bits on the command
line (`test_cli_errors`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from testkit import tiny
from testkit.tiny_ensemble import tiny_ensemble
from unite_logits import Ensemble, GenerationOptions, Member, UniTEProcessor
from unite_logits.apps import cli
from unite_logits.evaluation.errors import EvalUsageError
from unite_logits.processor import ProcessorInUseError

ROOT = Path(__file__).resolve().parents[1]

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("fastapi")


def one_line(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("[unite-logits] ", "Loading"))]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines


# -- the server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture()
def server(ensemble):
    from unite_logits.apps.serving import BackgroundServer, ServerSettings

    with BackgroundServer(ensemble, ServerSettings("tiny", api_key="k")) as running:
        yield running


def post(server, path, body, key="k", raw=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    content = raw if raw is not None else json.dumps(body)
    return httpx2.post(f"http://{server.host}:{server.port}{path}", content=content, headers=headers, timeout=60,
                       trust_env=False)


def get(server, path, key="k"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.get(f"http://{server.host}:{server.port}{path}", headers=headers, timeout=60, trust_env=False)


HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


def test_a_seed_past_64_bits_is_a_400_and_the_server_goes_on(server):
    response = post(server, "/v1/chat/completions", {**HELLO, "seed": 2**64})
    assert response.status_code == 400 and "seed" in response.json()["error"]["message"]
    assert post(server, "/v1/chat/completions", {**HELLO, "seed": 2**64 - 1}).status_code == 200
    assert post(server, "/v1/chat/completions", HELLO).status_code == 200
    assert get(server, "/health").json()["status"] == "ok"


def test_an_error_inside_one_request_fails_it_and_the_next_is_served(server, ensemble, monkeypatch):
    real_run = ensemble.run
    calls = []

    def fails_once(requests, **kwargs):
        calls.append(len(requests))
        if len(calls) == 1:
            raise OverflowError("a defect reached by one request")
        return real_run(requests, **kwargs)

    monkeypatch.setattr(ensemble, "run", fails_once)
    failed = post(server, "/v1/chat/completions", HELLO)
    assert failed.status_code == 500 and "a defect reached by one request" in failed.json()["error"]["message"]
    assert post(server, "/v1/chat/completions", HELLO).status_code == 200 and len(calls) == 2
    assert server.app.state.worker.alive


def test_health_reports_a_worker_that_stopped(server):
    assert get(server, "/health", key=None).status_code == 200  # /health needs no key
    server.app.state.worker.close()
    health = get(server, "/health", key=None)
    assert health.status_code == 503 and health.json()["status"] == "error"


def test_the_api_key_is_checked_before_the_body_and_guards_the_api_description(server):
    bad_json = post(server, "/v1/chat/completions", None, key=None, raw="{not json")
    assert bad_json.status_code == 401 and bad_json.json()["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/chat/completions", None, raw="{not json").status_code == 400  # with the key: a 400
    for path in ("/openapi.json", "/docs"):
        assert get(server, path, key=None).status_code == 401
        assert get(server, path).status_code == 200


@pytest.mark.parametrize("field", ["max_tokens", "n", "seed"])
def test_a_boolean_where_an_integer_belongs_is_a_400(server, field):
    response = post(server, "/v1/chat/completions", {**HELLO, field: True})
    assert response.status_code == 400 and field in response.json()["error"]["param"]


# -- the library -----------------------------------------------------------------------------
def test_weights_whose_sum_overflows_are_ratios_like_any_other(ensemble):
    huge = Ensemble(ensemble.models, weights=[1e308, 1e308], top_k=ensemble.top_k)
    equal = Ensemble(ensemble.models, weights=[1.0, 1.0], top_k=ensemble.top_k)
    options = GenerationOptions(max_new_tokens=6)
    answer = huge.generate("The quick brown fox", options)
    assert answer.completion_tokens == 6 and answer.text
    assert answer.text == equal.generate("The quick brown fox", options).text


def test_a_member_given_another_models_tokenizer_is_refused():
    model = tiny.tiny_llama(tiny.sp_bpe(), seed=1)
    assert len(tiny.sp_bpe()) > 2 * len(tiny.wordpiece())
    with pytest.raises(ValueError, match="tokenizer is not this model's own"):
        Member(model, tiny.wordpiece(), name="mismatched")  # far fewer tokens: another vocabulary
    with pytest.raises(ValueError, match="tokenizer is not this model's own"):
        Member(tiny.tiny_llama(tiny.wordpiece(), seed=1), tiny.sp_bpe())  # ids past the model's output
    assert Member(model, tiny.sp_bpe()).tokenizer is tiny.sp_bpe()
    assert Member(tiny.tiny_llama(tiny.sp_bpe(), seed=1, vocab_pad=64), tiny.sp_bpe())  # padded rows are fine


def test_one_processor_called_from_two_threads_is_refused_clearly(ensemble):
    primary, aux = ensemble.models
    member = Member.from_loaded(aux)
    inputs = primary.tokenizer("The quick brown fox", return_tensors="pt")
    scores = primary.model(**inputs).logits[:, -1, :]
    errors: list[BaseException] = []
    with UniTEProcessor(primary.tokenizer, [member], top_k=5, concurrent=False) as processor:
        original = aux.model.forward
        aux.model.forward = lambda *a, **k: (time.sleep(0.5), original(*a, **k))[1]
        try:
            first = threading.Thread(target=lambda: processor(inputs["input_ids"], scores))
            first.start()
            time.sleep(0.2)  # the first call is inside the member's slow forward pass
            try:
                processor(inputs["input_ids"], scores)
            except ProcessorInUseError as error:
                errors.append(error)
            first.join()
        finally:
            aux.model.forward = original
    assert len(errors) == 1 and "processor of its own" in str(errors[0])


# -- the command line ------------------------------------------------------------------------
def test_non_finite_scores_end_the_cli_with_one_line(monkeypatch, capsys):
    broken = tiny_ensemble()
    with torch.no_grad():
        for parameter in broken.models[1].model.parameters():
            parameter.fill_(float("nan"))  # what float16 does to Gemma 3 on a CPU
    monkeypatch.setattr(cli, "_load_ensemble", lambda args, prompt=None: broken)
    code = cli.main(["generate", "Hello", "--raw", "--max-new-tokens", "3"])
    _, err = capsys.readouterr()
    (line,) = one_line(err)
    assert code == 1 and "non-finite log-probabilities" in line and "tiny-aux" in line and "float32" in line


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "unite_logits", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_models_lists_the_catalogue_without_importing_torch():
    code = ("import sys\nfrom unite_logits.apps.cli import main\n"
            "assert main(['models']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout


def test_a_cache_variable_naming_a_file_is_one_line(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    result = _cli(["models"], {"UNITE_LOGITS_CACHE": str(not_a_folder)})
    (line,) = one_line(result.stderr)
    assert result.returncode == 2 and "is a file, not a folder" in line


# -- evaluation ------------------------------------------------------------------------------
def test_an_eval_folder_whose_meta_file_was_deleted_is_not_reused(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from testkit.eval_tiny import tiny_members, write_data
    from unite_logits.evaluation.run_task import evaluate

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    data, members = write_data(tmp_path / "data"), tiny_members()
    out = tmp_path / "out"
    evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, progress=False)
    (out / "meta.json").unlink()
    with pytest.raises(EvalUsageError, match="meta.json is gone"):
        evaluate("arc_challenge", members, out=out, data_dir=write_data(tmp_path / "other", n_arc=3), progress=False)


def test_damaged_record_files_are_rebuilt_from_the_request_cache(tmp_path, monkeypatch):
    """Records are outputs, rebuilt on every run from lm-eval's cache: a damaged line (the old
    harness read {"id": "q1"} as a record) cannot reach the summary."""
    pytest.importorskip("lm_eval")
    from testkit.eval_tiny import tiny_members, write_data
    from unite_logits.evaluation.records import read_records, write_records
    from unite_logits.evaluation.run_task import evaluate, report

    monkeypatch.setenv("UNITE_LOGITS_CACHE", str(tmp_path / "cache"))
    data, members = write_data(tmp_path / "data"), tiny_members()
    out = tmp_path / "out"
    first = evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, progress=False)
    compressed = out / "records" / "a.jsonl.gz"
    write_records(compressed, [*read_records(compressed), {"id": "q1"}])
    again = evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, progress=False)
    assert again.to_dict() == first.to_dict()
    assert all("doc_id" in record for record in read_records(compressed))
    compressed.write_bytes(compressed.read_bytes()[:-9])  # cut short: a clear error, then rebuilt by a run
    with pytest.raises(EvalUsageError, match="a.jsonl.gz is damaged"):
        report(out)
    evaluate("arc_challenge", members, out=out, data_dir=data, limit=2, progress=False)
    assert report(out).to_dict() == first.to_dict()
