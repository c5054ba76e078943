"""Draft-and-verify on the real pair (SmolLM2-135M-Instruct + Gemma 3 270M, float32): the same
text as the per-token path over 20 chat prompts, in batches of 4."""

from __future__ import annotations

import pytest

from testkit.real_models import load_real
from unite_logits import Ensemble, GenerationOptions

pytestmark = pytest.mark.real_models

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis briefly.",
    "List three prime numbers.", "How do I boil an egg?", "What is 12 plus 30?", "Name a famous painter.",
    "Why is the sky blue?", "Translate 'good morning' into Spanish.", "Give me a tip for learning to code.",
    "What does a cat eat?", "Describe a rainy day in one sentence.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?", "Suggest a name for a dog.", "What is machine learning?",
    "How many legs does a spider have?", "Write a short poem about autumn.", "What is the largest ocean?",
    "Tell me a fun fact about space.",
]


def test_draft_and_verify_writes_the_per_token_text_on_the_real_pair():
    """Float32 can flip a near-tie between a one-token and a many-token forward pass; on these 20
    prompts it did not (docs/speculative.md gives the count), so the texts must be equal."""
    ensemble = Ensemble([load_real("smollm2-135m-instruct"), load_real("gemma3-270m")], top_k=10)
    options = GenerationOptions(max_new_tokens=32)
    texts = {}
    for speculative in (False, True):
        ensemble.speculative = speculative
        texts[speculative] = [r.text for i in range(0, len(PROMPTS), 4)
                              for r in ensemble.generate_batch(PROMPTS[i:i + 4], options, chat=True)]
        if speculative:
            stats = ensemble.last_speculation
            assert stats is not None and stats.accepted > 0 and stats.member_passes < stats.emitted / 4
    differing = [p for p, a, b in zip(PROMPTS, texts[False], texts[True]) if a != b]
    assert not differing, differing
