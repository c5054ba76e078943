"""The ensemble wherever a single model works: pipelines, chat, streaming, stopping."""

import copy
import threading

import pytest
import torch
from transformers import TextIteratorStreamer, pipeline

from testkit import tiny
from unite_logits import Member, UniTEProcessor
from unite_logits.core.chat import chat_prompt_ids

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BRACKETS = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 30?"}]


@pytest.fixture(scope="module")
def primary():
    tok = copy.deepcopy(tiny.byte_bpe())
    tok.chat_template = CHATML
    return tiny.tiny_llama(tok, seed=0), tok


@pytest.fixture(scope="module")
def member():
    tok = copy.deepcopy(tiny.sp_bpe())
    tok.chat_template = BRACKETS
    return Member(tiny.tiny_llama(tok, seed=3), tok, name="sp")


def test_pipeline_single_prompt_and_batch(primary, member):
    model, tok = primary
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    prompts = ["The quick brown fox", "Question: What is 12 plus 30?", "Muffins"]
    kwargs = dict(max_new_tokens=10, do_sample=False, return_full_text=False)
    single = generator(prompts[0], logits_processor=[UniTEProcessor(tok, [member], top_k=5)], **kwargs)
    batch = generator(prompts, logits_processor=[UniTEProcessor(tok, [member], top_k=5)], batch_size=3, **kwargs)
    assert single[0]["generated_text"] == batch[0][0]["generated_text"]
    for prompt, result in zip(prompts, batch):
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=5)], max_new_tokens=10,
                             do_sample=False)
        assert result[0]["generated_text"] == tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    plain = generator(prompts[0], **kwargs)
    assert plain[0]["generated_text"] != single[0]["generated_text"]


def test_chat_each_model_uses_its_own_template(primary, member):
    model, tok = primary
    proc = UniTEProcessor.from_messages(MESSAGES, tok, [member], top_k=5)
    generator = pipeline("text-generation", model=model, tokenizer=tok)
    generator(MESSAGES, logits_processor=[proc], max_new_tokens=6, do_sample=False)
    fed = proc.rows.generation.syncs_of(0)[0].ids
    expected = chat_prompt_ids(member.tokenizer, MESSAGES)
    assert fed[: len(expected)] == expected
    assert member.tokenizer.decode(expected).startswith("<s>[SYSTEM] Be brief.")
    assert "[ASSISTANT]" in member.tokenizer.decode(expected)


def test_chat_without_template_falls_back_to_plain_text_with_a_warning(primary):
    model, tok = primary
    bare = Member(tiny.tiny_gpt2(tiny.unigram(), seed=2), tiny.unigram())
    with pytest.warns(UserWarning, match="no chat template"):
        proc = UniTEProcessor.from_messages(MESSAGES, tok, [bare])
    assert bare.tokenizer.decode(proc.member_prompts[0]).strip().startswith("Be brief.")


def test_bad_messages_are_rejected(primary, member):
    with pytest.raises(TypeError, match="messages"):
        UniTEProcessor.from_messages("hello", primary[1], [member])
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        UniTEProcessor.from_messages([{"role": "user"}], primary[1], [member])


def test_streamer_yields_the_ensembled_text(primary, member):
    model, tok = primary
    enc = tok("The quick brown fox", return_tensors="pt")
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    result = {}

    def run():
        result["out"] = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=5)],
                                       max_new_tokens=12, do_sample=False, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) >= 1
    assert "".join(pieces) == tok.decode(result["out"][0, enc["input_ids"].shape[1]:])


def test_stop_strings_and_eos_lists_stop_like_a_single_model(primary, member):
    model, tok = primary
    enc = tok("The quick brown fox", return_tensors="pt")
    base = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=5)], max_new_tokens=16,
                          do_sample=False)[0, enc["input_ids"].shape[1]:]
    text = tok.decode(base)
    stop = text[4:7]
    assert stop
    stopped = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=5)], max_new_tokens=16,
                             do_sample=False, stop_strings=[stop], tokenizer=tok)[0, enc["input_ids"].shape[1]:]
    stopped_text = tok.decode(stopped)
    assert stop in stopped_text and text.startswith(stopped_text)
    # an eos list: the third generated token declared an end-of-sequence id ends the row there
    third = int(base[2])
    ended = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=5, primary_eos_token_ids=[third])],
                           max_new_tokens=16, do_sample=False, eos_token_id=[tok.eos_token_id, third],
                           pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:]
    assert ended.tolist()[:3] == base.tolist()[:3] and all(t == tok.pad_token_id for t in ended.tolist()[3:])


def test_min_new_tokens_keeps_eos_out(primary, member):
    model, tok = primary
    enc = tok("The quick brown fox", return_tensors="pt")
    out = model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=50)], min_new_tokens=12,
                         max_new_tokens=12, do_sample=False)
    assert tok.eos_token_id not in out[0, enc["input_ids"].shape[1]:].tolist()


def test_sampling_knobs_compose_and_are_reproducible_with_a_seed(primary, member):
    model, tok = primary
    enc = tok("The quick brown fox", return_tensors="pt")

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(**enc, logits_processor=[UniTEProcessor(tok, [member], top_k=8)], do_sample=True,
                              temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_new_tokens=10)

    assert torch.equal(sample(1), sample(1))
    draws = {tuple(sample(s)[0].tolist()) for s in range(6)}
    assert len(draws) > 1
