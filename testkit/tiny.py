"""Tiny tokenizers and models built in-process: no downloads, deterministic, fast.

Four deliberately different tokenizers trained on the same small text:

* ``byte_bpe``: byte-level BPE (GPT-2 style byte table, merges within words), no BOS;
* ``sp_bpe``: SentencePiece-style BPE with a space marker, byte fallback and a BOS, no dummy
  prefix;
* ``unigram``: Unigram with a metaspace pre-tokenizer (dummy prefix) and byte fallback;
* ``wordpiece``: WordPiece, lossy (drops whitespace runs, unknown characters).
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Muffins and pancakes are baked in the morning.\n"
    "Question: What is 12 plus 30? Answer: 12 + 30 = 42. The answer is 42.\n"
    "Tokenizers split text into pieces; models predict the next piece. 東京 is a city, "
    "café au lait, naïve façade, emoji 🙂 and 🚀 appear too.\n"
    "def add(a, b):\n    return a + b\n\n"
    "Numbers: 1, 2, 3, 100, 2024, 3.14159. Whitespace   runs\tand\ttabs.\n"
) * 20

SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def _with_byte_fallback(tokenizer: Tokenizer) -> Tokenizer:
    """Add the 256 ``<0xNN>`` tokens to a trained model's vocabulary and turn fallback on."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    vocab = model["vocab"]
    if model["type"] == "Unigram":
        present = {piece for piece, _ in vocab}
        vocab.extend([piece, -20.0] for piece in BYTE_TOKENS if piece not in present)
    else:
        for piece in BYTE_TOKENS:
            vocab.setdefault(piece, len(vocab))
    model["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


def _wrap(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    fast.padding_side = "left"
    return fast


@lru_cache(maxsize=None)
def byte_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer)
    return _wrap(tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@lru_cache(maxsize=None)
def sp_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS)
    tok.train_from_iterator([CORPUS], trainer)
    tok = _with_byte_fallback(tok)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return _wrap(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


@lru_cache(maxsize=None)
def unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="always"), decoders.ByteFallback()])
    trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator([CORPUS], trainer)
    tok = _with_byte_fallback(tok)
    return _wrap(tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


@lru_cache(maxsize=None)
def wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIALS)
    tok.train_from_iterator([CORPUS], trainer)
    return _wrap(tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


TOKENIZERS = {"byte_bpe": byte_bpe, "sp_bpe": sp_bpe, "unigram": unigram, "wordpiece": wordpiece}
LOSSLESS = ("byte_bpe", "sp_bpe", "unigram")


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0, vocab_pad: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama over ``tokenizer``'s vocabulary (plus ``vocab_pad`` unused rows)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + vocab_pad, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_gpt2(tokenizer: PreTrainedTokenizerFast, seed: int = 1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=4096,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_gemma3(tokenizer: PreTrainedTokenizerFast, seed: int = 2, sliding_window: int = 8):
    """A random Gemma 3 text model whose sliding-window layers see only ``sliding_window`` tokens."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=sliding_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Gemma3ForCausalLM(config).eval()
