"""A primary behind a server: a transformers causal LM whose forward pass asks the server.

`ServedCausalLM` stands where the primary's model stands, so stock ``model.generate``, the
`UniTEProcessor`, pipelines, streaming, stop strings and `Ensemble` work unchanged with the
primary served by llama.cpp's ``llama-server`` or an OpenAI-compatible server. Each forward
pass sends every row's ids (its left padding stripped) to the server at once, through the
same `RemoteRunner` as a served auxiliary, and returns as logits the server's top-n
log-probabilities for the next token and ``-inf`` for every other id: the server's prefix
cache plays the part of a KV cache (``use_cache`` is off, so ``generate`` passes whole rows).

What that means for decoding: greedy search is the server's greedy choice (or, ensembled,
UniTE's); sampling draws from the top-n only (as top-k sampling with k = n would); beam
search runs over the top-n. The primary's probabilities outside its top-n are unknown, so
the primary's share of the union's mass is that of its top-n. A served primary cannot
abstain: a server that fails raises `RemoteMemberError` (naming member and URL) within its
timeout, and the generation stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..core.checks import check_top_k
from .member import RemoteMember

__all__ = ["ServedConfig", "ServedCausalLM", "DEFAULT_TOP_N", "top_n_for"]

DEFAULT_TOP_N = 40
"""Candidates the server lists per step (llama.cpp's ``n_probs`` takes any; vLLM caps them at 20
by default: start it with ``--max-logprobs``)."""


def top_n_for(top_k: int) -> int:
    """Candidates a served primary asks for in an ensemble of ``top_k``: ``4 * top_k``, at least
    `DEFAULT_TOP_N` (the union's candidates from other models must find the primary's value)."""
    return max(4 * check_top_k(top_k), DEFAULT_TOP_N)


class ServedConfig(PretrainedConfig):
    """What transformers needs to know of a served model: its vocabulary and context window."""

    model_type = "unite-served"

    def __init__(self, vocab_size: int = 0, max_position_embeddings: int | None = None, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


class ServedCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM served elsewhere, driven by stock ``generate``.

    Args:
        member: the `RemoteMember` of the server (its tokenizer, URL, timeout, retries).
        top_n: next-token candidates asked for per step (default `DEFAULT_TOP_N`; at least the
            ensemble's ``top_k``).

    Cost per step: one request per row, all rows at once (up to the server's slots); the
    server evaluates only what is new since a row's previous request.
    """

    config_class = ServedConfig
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, member: RemoteMember, top_n: int = DEFAULT_TOP_N) -> None:
        tokenizer: PreTrainedTokenizerBase = member.tokenizer
        eos = [int(i) for i in dict.fromkeys([*(member.eos_token_ids or ()), tokenizer.eos_token_id]) if i is not None]
        n_ctx = member.server.n_ctx
        config = ServedConfig(vocab_size=len(tokenizer), max_position_embeddings=n_ctx,
                              eos_token_id=eos[0] if len(eos) == 1 else eos, bos_token_id=tokenizer.bos_token_id,
                              pad_token_id=tokenizer.pad_token_id, name_or_path=str(member.name))
        super().__init__(config)
        if member.on_error != "raise":
            raise ValueError(f"a served primary cannot abstain: {member.name!r} needs on_error='raise'")
        self.member = member
        self.top_n = check_top_k(top_n)
        self.runner = member.runner(top_k=self.top_n)
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # gives the model a device and dtype
        self.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                                  bos_token_id=tokenizer.bos_token_id, use_cache=False)

    @classmethod
    def can_generate(cls) -> bool:
        return True

    @torch.no_grad()
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                **_: Any) -> CausalLMOutputWithPast:
        """``(rows, 1, vocab)`` logits: the server's next-token log-probabilities for each row's
        ids (left padding, where ``attention_mask`` is 0, left out), ``-inf`` elsewhere.

        Raises:
            RemoteMemberError: the server failed, was too slow, or answered badly.
        """
        if input_ids is None:
            raise ValueError("a served model reads token ids (`input_ids`), not embeddings")
        if attention_mask is None:
            rows = input_ids.tolist()
        else:
            keep = attention_mask.bool()
            rows = [row[mask].tolist() for row, mask in zip(input_ids, keep)]
        logprobs = self.runner.logprobs(rows)
        return CausalLMOutputWithPast(logits=logprobs[:, None, :].to(input_ids.device))

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """Whole rows every step (no KV cache here: the server keeps one)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def close(self) -> None:
        """End the runner's threads and the member's connections."""
        self.runner.close()
        self.member.close()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """No weights to initialise."""


def is_served(model: Any) -> bool:
    """Whether ``model`` runs behind a server."""
    return isinstance(model, ServedCausalLM)


class ServedPrimaryRows:
    """A served primary's rows for draft-and-verify (`unite_logits.speculative`): each row's
    ids here, the KV cache on the server; feeding a token asks for the row's next distribution.

    Cost per feed: one request per fed row, all at once; the server's prefix cache makes each
    cost the tokens new since the row's previous request (a rollback only shortens the ids).
    """

    def __init__(self, model: ServedCausalLM, rows: int) -> None:
        self.runner = model.runner
        self.ids: list[list[int]] = [[] for _ in range(rows)]

    def feed(self, chunks: Sequence[Sequence[int]], raw: bool = True) -> torch.Tensor:
        """Append each chunk to its row; ``(rows, vocab)`` log-probabilities (``-inf`` outside
        the server's top-n; zeros for rows that fed nothing). ``raw`` is accepted for the
        interface: a server gives log-probabilities, which is what the per-token path sees too."""
        fed = [row for row, chunk in enumerate(chunks) if len(chunk)]
        out = torch.zeros(len(chunks), self.runner.vocab_size)
        for row in fed:
            self.ids[row].extend(int(token) for token in chunks[row])
        if fed:
            out[fed] = self.runner.logprobs([self.ids[row] for row in fed])
        return out

    def drop(self, row: int, tokens: int) -> None:
        del self.ids[row][len(self.ids[row]) - tokens :]

    def select_rows(self, index: torch.Tensor) -> None:
        self.ids = [list(self.ids[parent]) for parent in index.tolist()]
