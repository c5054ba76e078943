"""The default ensemble (SmolLM2-135M-Instruct + Gemma 3 270M) on the real models."""

import pytest
import torch

from testkit.real_models import load_real
from unite_logits import Member, UniTEProcessor
from unite_logits.core.member import LocalRunner
from unite_logits.core.rows import AuxiliaryRows
from unite_logits.core.sync import TokenSync
from unite_logits.core.token_bytes import token_bytes_view

pytestmark = pytest.mark.real_models

PROMPTS = ["Question: What is 12 plus 30?\nAnswer:", "The capital of France is"]


@pytest.fixture(scope="module")
def pair():
    primary, primary_tok = load_real("smollm2-135m-instruct")
    aux, aux_tok = load_real("gemma3-270m")
    return primary, primary_tok, aux, aux_tok


def run(primary, tok, processor, prompt, n=12):
    enc = tok(prompt, return_tensors="pt")
    out = primary.generate(**enc, logits_processor=[processor] if processor else [], do_sample=False,
                           max_new_tokens=n)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_zero_weight_auxiliary_reproduces_the_primary_token_for_token(pair):
    primary, tok, aux, aux_tok = pair
    for prompt in PROMPTS:
        muted = UniTEProcessor(tok, [Member(aux, aux_tok, weight=0.0)], top_k=10)
        assert run(primary, tok, muted, prompt) == run(primary, tok, None, prompt)


def test_default_ensemble_is_deterministic_and_writes_clean_text(pair):
    primary, tok, aux, aux_tok = pair
    proc = UniTEProcessor(tok, [Member(aux, aux_tok)], top_k=10, trace=True)
    first = run(primary, tok, proc, PROMPTS[0], n=16)
    assert run(primary, tok, proc, PROMPTS[0], n=16) == first
    text = tok.decode(first, skip_special_tokens=True)
    # the pitfall of marker rewriting: byte-table glyphs must never appear as text
    assert not any(glyph in text for glyph in ("Ġ", "Ċ", "▁", "Ä", "ł", "\ufffd")), text
    assert any("gemma" in r.top1 or len(r.top1) == 2 for r in proc.trace)


def test_gemma_rollback_on_a_prompt_longer_than_its_sliding_window(pair):
    """Gemma 3 has 512-token sliding-window layers: rollbacks past the window must stay exact."""
    _, _, aux, aux_tok = pair
    view = token_bytes_view(aux_tok)
    runner = LocalRunner(aux, view.size, "gemma")
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 70
    member = AuxiliaryRows(runner, [TokenSync.from_text(view, long_prompt)])
    row = member.rows[0]
    assert len(row.fed) > 600
    for piece in [" Muff", "ins", " are", " baked", " in", " the", " morn", "ing", "."]:
        member.push_token(0, 0, piece.encode())
        member.refresh()
    with torch.no_grad():
        fresh = torch.log_softmax(aux(input_ids=torch.tensor([row.sync.ids])).logits[0, -1].float(), -1)
    torch.testing.assert_close(member.logprobs[0], fresh, atol=2e-3, rtol=1e-3)
    # rollbacks took no refill, and the sliding-window layers hold their window, not the text
    assert runner.refills == 0
    sliding = [group for group in member.cache._groups.values() if group.window is not None]
    assert sliding and all(
        group.columns <= group.window - 1 + 2 * member.cache.margin + 16 < len(row.fed) for group in sliding
    )
