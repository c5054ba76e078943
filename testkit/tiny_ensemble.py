"""A tiny `Ensemble` built in code: two random models, two tokenizers, two chat templates.

The primary (byte-level BPE, ChatML template) and the auxiliary (SentencePiece-style BPE,
a bracket template) format conversations differently, as real members do. Building it
takes well under a second and nothing is downloaded; the chat, serve and streaming tests
use it in place of the catalogue models.
"""

from __future__ import annotations

import copy
from pathlib import Path

from testkit import tiny

from unite_logits import Ensemble
from unite_logits.models.loading import LoadedModel

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BRACKETS = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")


def tiny_ensemble(top_k: int = 5, chat_templates: bool = True) -> Ensemble:
    """Primary ``tiny-primary`` (Llama over byte-level BPE) + ``tiny-aux`` (Llama over SentencePiece BPE)."""
    primary_tok, aux_tok = copy.deepcopy(tiny.byte_bpe()), copy.deepcopy(tiny.sp_bpe())
    if chat_templates:
        primary_tok.chat_template, aux_tok.chat_template = CHATML, BRACKETS
    models = [
        LoadedModel(tiny.tiny_llama(primary_tok, seed=0), primary_tok, "tiny-primary"),
        LoadedModel(tiny.tiny_llama(aux_tok, seed=1), aux_tok, "tiny-aux"),
    ]
    return Ensemble(models, top_k=top_k)


def save_tiny_pair(root: Path) -> tuple[str, str]:
    """The two models of `tiny_ensemble` saved as Hugging Face folders under ``root`` (``primary``,
    ``aux``, with their chat templates), for what loads models by path: the command line, lm-eval."""
    paths = []
    for name, make, seed, template in (("primary", tiny.byte_bpe, 0, CHATML), ("aux", tiny.sp_bpe, 1, BRACKETS)):
        tokenizer = copy.deepcopy(make())
        tokenizer.chat_template = template
        tiny.tiny_llama(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths[0], paths[1]
