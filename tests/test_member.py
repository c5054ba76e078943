"""`Member`: validated before any generation, and built from a loaded model in one way."""

from __future__ import annotations

import pytest
import torch

from testkit import tiny
from unite_logits import Member
from unite_logits.models.loading import LoadedModel


def test_a_model_on_the_meta_device_is_refused_up_front() -> None:
    tokenizer = tiny.byte_bpe()
    with torch.device("meta"):
        model = tiny.tiny_llama(tokenizer)
    assert next(model.parameters()).device.type == "meta"
    with pytest.raises(ValueError, match="'meta' device"):
        Member(model, tokenizer)


def test_from_loaded_carries_name_eos_ids_and_weight() -> None:
    tokenizer = tiny.byte_bpe()
    model = tiny.tiny_llama(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    member = Member.from_loaded(LoadedModel(model, tokenizer, "tiny-a"), weight=0.5)
    assert (member.name, member.weight) == ("tiny-a", 0.5)
    assert set(member.eos_token_ids) == {tokenizer.eos_token_id, 7}
