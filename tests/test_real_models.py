"""The real catalogue models load from the cache and generate deterministically.

Slow (a minute per model the first time, seconds once converted); run with ``-m real_models``.
"""

from __future__ import annotations

import pytest
import torch
from testkit.real_models import REAL_MODEL_NAMES, load_real, load_real_tokenizer, real_model  # noqa: F401

from unite_logits.ensemble.ensemble import Ensemble
from unite_logits.ensemble.options import GenerationOptions
from unite_logits.ensemble.prompts import encode_prompt
from unite_logits.core.chat import plain_text
from unite_logits.models.store import read_marker
from unite_logits.models.catalogue import get_entry
from unite_logits.models.loading import cached_dir, source_for_entry

pytestmark = pytest.mark.real_models

PROMPT = "The capital of France is Paris. The capital of Italy is"
# What the converted tokenizers are (measured; see the conversion report).
HAS_CHAT_TEMPLATE = {"smollm2-135m-instruct": True, "gemma3-270m": False, "qwen2.5-coder-0.5b-instruct": True}
ADDS_BOS = {"smollm2-135m-instruct": False, "gemma3-270m": True, "qwen2.5-coder-0.5b-instruct": False}
EOS_TOKENS = {
    "smollm2-135m-instruct": ["<|im_end|>"],
    "gemma3-270m": ["<eos>", "<end_of_turn>"],
    "qwen2.5-coder-0.5b-instruct": ["<|im_end|>", "<|endoftext|>"],
}


def _greedy(loaded, ids, n=6):
    model, tokenizer = loaded
    input_ids = torch.tensor([ids])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=loaded.eos_token_ids[0],
    )
    return out[0, input_ids.shape[1] :].tolist()


def test_loads_fp32_from_a_verified_cache(real_model):
    folder = cached_dir(source_for_entry(get_entry(real_model.name)))
    assert folder is not None
    marker = read_marker(folder)
    assert marker["sha256"] == get_entry(real_model.name).sha256
    assert marker["max_logit_drift"] <= 1e-4
    assert marker["n_params"] == get_entry(real_model.name).n_params
    assert {p.dtype for p in real_model.model.parameters()} == {torch.float32}
    assert not hasattr(real_model.model.config, "quantization_config")


def test_greedy_generation_is_deterministic_and_sensible(real_model):
    ids = real_model.tokenizer(PROMPT)["input_ids"]
    first = _greedy(real_model, ids)
    assert first == _greedy(real_model, ids)
    assert len(first) == 6
    assert real_model.tokenizer.decode(first).startswith(" Rome")  # all three models know it


def test_tokenizer_facts(real_model):
    tokenizer = real_model.tokenizer
    assert bool(tokenizer.chat_template) == HAS_CHAT_TEMPLATE[real_model.name]
    ids = tokenizer("Hello")["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) == ADDS_BOS[real_model.name]
    assert real_model.eos_token_ids == tokenizer.convert_tokens_to_ids(EOS_TOKENS[real_model.name])
    assert real_model.eos_token_ids[0] == tokenizer.eos_token_id


def test_chat_prompt_uses_the_models_own_template(real_model):
    if not HAS_CHAT_TEMPLATE[real_model.name]:
        with pytest.warns(UserWarning, match="no chat template"):
            ids = encode_prompt(real_model, "Hi", chat=True)
        assert ids == real_model.tokenizer(plain_text([{"role": "user", "content": "Hi"}]))["input_ids"]
        return
    ids = encode_prompt(real_model, [{"role": "user", "content": "Hi"}], chat=True)
    text = real_model.tokenizer.decode(ids)
    assert text.rstrip().endswith("assistant") and "Hi" in text


def test_model_alone_through_the_api(real_model):
    result = Ensemble([real_model]).generate_alone(0, PROMPT, GenerationOptions(max_new_tokens=4))
    assert result.completion_tokens == 4 and result.seconds > 0
    assert result.text == real_model.tokenizer.decode(_greedy(real_model, real_model.tokenizer(PROMPT)["input_ids"], 4), skip_special_tokens=True)


@pytest.mark.parametrize("name", REAL_MODEL_NAMES)
def test_load_real_tokenizer_matches_the_model(name):
    assert load_real_tokenizer(name).get_vocab() == load_real(name).tokenizer.get_vocab()


@pytest.mark.parametrize("chat", [False, True])
def test_ensemble_of_two_real_models_is_deterministic(chat):
    pytest.importorskip("unite_logits.processor", reason="the core processor is not merged yet")
    ensemble = Ensemble([load_real("smollm2-135m-instruct"), load_real("gemma3-270m")], top_k=5)
    with pytest.warns(UserWarning, match="gemma3-270m has no chat template") if chat else _no_warning():
        first = ensemble.generate(PROMPT, GenerationOptions(max_new_tokens=6), chat=chat)
    second = ensemble.generate(PROMPT, GenerationOptions(max_new_tokens=6), chat=chat)
    assert 1 <= first.completion_tokens <= 6
    assert (first.text, first.completion_tokens) == (second.text, second.completion_tokens)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_a_local_member_with_another_models_tokenizer_is_refused():
    """SmolLM2's 49,152-token tokenizer on Gemma 3's 262,144 output rows (the hostile-input list)."""
    from unite_logits import Member

    gemma, smol = load_real("gemma3-270m"), load_real("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="49,152 tokens but the model's output has 262,144 rows"):
        Member(gemma.model, smol.tokenizer, name="gemma with smol's tokenizer")
    with pytest.raises(ValueError, match="not this model's own"):
        Member(smol.model, gemma.tokenizer)
    assert Member.from_loaded(gemma).name == "gemma3-270m"


def test_float16_gemma_on_the_cpu_is_one_line_from_the_cli(capsys):
    """Gemma 3's float16 logits are NaN on this CPU: the command says so in one line, exit 1."""
    from unite_logits.apps import cli

    load_real("gemma3-270m")  # converted (and its package installed), so only the dtype differs
    code = cli.main(["generate", "Hello", "--raw", "--dtype", "float16", "--max-new-tokens", "2", "--no-stream"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("[unite-logits]", "Loading"))]
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "non-finite log-probabilities" in lines[0] and "float32" in lines[0]
