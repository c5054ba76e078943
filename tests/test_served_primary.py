"""A primary behind a server (`ServedCausalLM`): stock ``generate`` drives it, the ensemble,
streaming and the server use it unchanged; against a scripted server (every answer known) and
against real ``llama-server``s serving the catalogue's SmolLM2 and Gemma 3 (all-served ensemble)."""

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
from testkit.scripted_server import Reply, ScriptedServer, llama_cpp_answer
from unite_logits import Ensemble, GenerationOptions, LoadedModel, Member, RemoteMember, RemoteMemberError, UniTEProcessor
from unite_logits.remote.primary import ServedCausalLM

ROOT = Path(__file__).resolve().parents[1]
FAST = {"timeout": 5.0, "retries": 1}


def counting_answer(body):
    """The next token is the last one plus one (mod 50, past the specials), then two others."""
    last = body["prompt"][-1]
    best = 10 + (last + 1) % 50
    return Reply.json(llama_cpp_answer([(best, -0.1), (best + 1, -2.5), (best + 2, -3.0)]))


@pytest.fixture()
def scripted():
    with ScriptedServer(tiny.byte_bpe()) as server:
        server.completion = counting_answer
        yield server


def served(server, **options) -> ServedCausalLM:
    return ServedCausalLM(RemoteMember(server.url, server.tokenizer, name="served", **{**FAST, **options}), top_n=3)


def test_the_forward_pass_is_the_servers_top_n_and_minus_inf_elsewhere(scripted):
    model = served(scripted)
    ids = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 7]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, 1, len(scripted.tokenizer))
    assert sorted(torch.isfinite(logits[0, 0]).nonzero().flatten().tolist()) == [17, 18, 19]
    assert logits[1, 0, 18].item() == pytest.approx(-0.1)
    assert sorted(b["prompt"] for b in scripted.bodies[-2:]) == [[3, 4, 5, 7], [5, 6]]  # left padding stripped


def test_stock_generate_drives_it_greedy_and_batched(scripted):
    model = served(scripted)
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                         pad_token_id=0)
    assert out[0, 3:].tolist() == [14, 25, 36, 47]  # each the server's best after the last
    assert [len(b["prompt"]) for b in scripted.bodies] == [3, 4, 5, 6]  # whole rows: the server caches the prefix
    torch.manual_seed(0)
    sampled = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=True,
                             top_k=0, pad_token_id=0)
    assert all(t in range(10, 63) for t in sampled[0, 3:].tolist())  # draws from the top-n only


def test_an_ensemble_with_a_served_primary_generates_streams_and_serves(scripted):
    tok = scripted.tokenizer
    aux_tok = tiny.sp_bpe()
    primary = LoadedModel(served(scripted), tok, "served")
    ensemble = Ensemble([primary, LoadedModel(tiny.tiny_llama(aux_tok, seed=1), aux_tok, "aux")], top_k=3)
    pieces = []
    result = ensemble.generate("The quick brown fox", GenerationOptions(max_new_tokens=5), on_piece=pieces.append)
    assert result.completion_tokens == 5 and "".join(p.text for p in pieces) == result.text
    batch = ensemble.generate_batch(["The quick brown fox", "Numbers: 1, 2"], GenerationOptions(max_new_tokens=4))
    assert [r.completion_tokens for r in batch] == [4, 4]
    with UniTEProcessor(tok, [Member(tiny.tiny_llama(aux_tok, seed=1), aux_tok)], top_k=3) as processor:
        ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
        out = primary.model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor],
                                     max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 3


def test_a_primary_cannot_abstain_and_a_failing_server_is_one_clear_error_in_bounded_time(scripted):
    with pytest.raises(ValueError, match="cannot abstain"):
        served(scripted, on_error="abstain")
    model = served(scripted)
    scripted.completion = lambda body: Reply(200, b"{}", delay_s=3.0)  # silent past the timeout
    started = time.monotonic()
    with pytest.raises(RemoteMemberError, match="'served' at .*within the timeout of 1 s"):
        ServedCausalLM(RemoteMember(scripted.url, scripted.tokenizer, name="served", timeout=1.0, retries=0),
                       top_n=3).generate(torch.tensor([[1, 2]]), max_new_tokens=2, pad_token_id=0)
    assert time.monotonic() - started < 5
    scripted.completion = lambda body: Reply(500, b'{"error": "overloaded"}')
    with pytest.raises(RemoteMemberError, match="HTTP 500"):
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=2, pad_token_id=0)


# -- real llama-servers ----------------------------------------------------------------------
def _servers():
    from testkit.llama_server import LlamaServer, require_llama_server
    from testkit.real_models import skip_unless_installed
    from unite_logits.models.catalogue import get_entry
    from unite_logits.models.gguf_files import materialize_gguf

    binary = require_llama_server()
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        skip_unless_installed(name)
    return binary, LlamaServer, lambda name, where: materialize_gguf(get_entry(name), where)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """SmolLM2 and Gemma 3, each behind its own llama-server on 127.0.0.1 (1 thread, 4 slots)."""
    binary, LlamaServer, gguf = _servers()
    where = tmp_path_factory.mktemp("ggufs")
    with LlamaServer(binary, gguf("smollm2-135m-instruct", where), extra_args=()) as smol, \
            LlamaServer(binary, gguf("gemma3-270m", where)) as gemma:
        yield smol, gemma


QUESTION = "What is the capital of France?"


@pytest.mark.real_models
def test_an_all_served_ensemble_answers_and_mostly_matches_the_local_one(pair):
    from testkit.real_models import load_real

    smol, gemma = pair
    remote = Ensemble.load([f"smollm2-135m-instruct@{smol.url}", f"gemma3-270m@{gemma.url}"], top_k=10)
    assert isinstance(remote.primary.model, ServedCausalLM)
    answer = remote.generate(QUESTION, GenerationOptions(max_new_tokens=16), chat=True)
    assert "Paris" in answer.text
    local = Ensemble([load_real("smollm2-135m-instruct"), load_real("gemma3-270m")], top_k=10)
    prompts = [QUESTION, "Name a primary colour.", "What is 2 plus 3?", "Which animal says moo?"]
    same = [remote.generate(p, GenerationOptions(max_new_tokens=8), chat=True).text ==
            local.generate(p, GenerationOptions(max_new_tokens=8), chat=True).text for p in prompts]
    assert sum(same) >= 2, same  # Q4 weights on the servers, fp32 here: near-ties may flip


@pytest.mark.real_models
def test_the_command_line_with_every_member_served(pair):
    smol, gemma = pair
    result = subprocess.run(
        [sys.executable, "-m", "unite_logits", "generate", QUESTION, "--primary", f"smollm2-135m-instruct@{smol.url}",
         "--aux", f"gemma3-270m@{gemma.url}", "--max-new-tokens", "16", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert "Paris" in report["text"] and report["models"][0] == f"smollm2-135m-instruct@{smol.url}"


@pytest.mark.real_models
def test_serve_and_chat_with_an_all_served_ensemble(pair):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    import io

    from unite_logits.apps.chat import run_chat
    from unite_logits.apps.serving import BackgroundServer, ServerSettings

    smol, gemma = pair
    ensemble = Ensemble.load([f"smollm2-135m-instruct@{smol.url}", f"gemma3-270m@{gemma.url}"], top_k=10)
    with BackgroundServer(ensemble, ServerSettings("served")) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)
        reply = client.chat.completions.create(model="served", messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=16)
        assert "Paris" in reply.choices[0].message.content
    out = io.StringIO()
    assert run_chat(ensemble, GenerationOptions(max_new_tokens=12), stdin=io.StringIO(QUESTION + "\n"), out=out,
                    interactive=False) == 0
    assert "Paris" in out.getvalue()


@pytest.mark.real_models
@pytest.mark.parametrize("killed", ["primary", "auxiliary"])
def test_killing_either_server_midway_is_one_clear_error_in_bounded_time(tmp_path, killed):
    binary, LlamaServer, gguf = _servers()
    with LlamaServer(binary, gguf("smollm2-135m-instruct", tmp_path), extra_args=()) as smol, \
            LlamaServer(binary, gguf("gemma3-270m", tmp_path)) as gemma:
        ensemble = Ensemble.load([f"smollm2-135m-instruct@{smol.url}", f"gemma3-270m@{gemma.url}"], top_k=10)
        victim = smol if killed == "primary" else gemma
        pieces = []

        def kill_after_a_few(piece):
            pieces.append(piece)
            if len(pieces) == 3:
                threading.Thread(target=victim.kill).start()

        started = time.monotonic()
        with pytest.raises(RemoteMemberError) as caught:
            ensemble.generate("Once upon a time", GenerationOptions(max_new_tokens=200), on_piece=kill_after_a_few)
        elapsed = time.monotonic() - started
        assert len(pieces) >= 3 and victim.url in str(caught.value) and elapsed < 60


def test_beam_search_runs_over_the_servers_top_n(scripted):
    model = served(scripted)
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, num_beams=2,
                         num_return_sequences=2, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 6)
    assert out[0, 3:].tolist() == [14, 25, 36]  # the best beam: the server's best each step
    for row in out.tolist():  # every token one of the three the server listed after the one before it
        assert all(10 + (a + 1) % 50 <= b <= 12 + (a + 1) % 50 for a, b in zip(row[2:], row[3:]))


# -- draft-and-verify with served models --------------------------------------------------
def _both_paths(ensemble, prompts, tokens=6):
    texts = []
    for speculative in (False, True):
        ensemble.speculative = speculative
        texts.append([r.text for r in ensemble.generate_batch(prompts, GenerationOptions(max_new_tokens=tokens))])
    return texts


def test_a_served_primary_drafts_through_its_server_with_the_per_token_output(scripted):
    aux_tok = tiny.sp_bpe()
    ensemble = Ensemble([LoadedModel(served(scripted), scripted.tokenizer, "served"),
                         LoadedModel(tiny.tiny_llama(aux_tok, seed=1), aux_tok, "aux")], top_k=3)
    per_token, speculative = _both_paths(ensemble, ["The quick brown fox", "Numbers: 1, 2"])
    assert per_token == speculative
    stats = ensemble.last_speculation
    assert stats is not None and stats.rounds >= 1 and stats.drafted > 0  # drafted through the server


def test_a_served_member_verifies_one_position_per_request(scripted):
    """llama.cpp's server gives no log-probabilities along a prompt: a draft is read one position
    per request (the per-token fallback), with the same output."""
    tok = tiny.byte_bpe()
    member = RemoteMember(scripted.url, scripted.tokenizer, name="served", **FAST)
    ensemble = Ensemble([LoadedModel(tiny.tiny_llama(tok, seed=2), tok, "local"), member], top_k=3, num_draft_tokens=3)
    scripted.bodies.clear()
    per_token, speculative = _both_paths(ensemble, ["The quick brown fox"], tokens=8)
    assert per_token == speculative
    stats = ensemble.last_speculation
    assert stats is not None and stats.member_passes == stats.rounds  # one read per round ...
    sent = len(scripted.bodies)
    assert sent > stats.rounds  # ... of several requests, one per position
