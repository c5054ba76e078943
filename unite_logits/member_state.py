"""An auxiliary model's KV cache kept in step with its token ids, one batch row at a time.

Each row owns a `MemberRow`: its `TokenSync` (what the
ids should be) and a KV cache over the ids already fed (what the model has seen). A refresh
rolls the cache back to the longest common prefix of the two and feeds only the rest, so a
step costs one forward pass over the one or few tokens that changed.

Caches have the layers ``generate`` would give the model, with sliding-window layers that
keep a margin of older states (`unite_logits.kv_cache`): a sliding-window model attends over
its window only, as it does alone, and the usual rollback of a few tokens stays exact. A
rollback deeper than what the cache holds refills it from the ids (rare; counted in
`MemberRunner.refills`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .kv_cache import DEFAULT_MARGIN, can_drop, rollback_cache
from .sync import IdSync, TokenSync

Sync = IdSync | TokenSync

__all__ = ["MemberRunner", "MemberRow"]


class MemberRunner:
    """Runs one auxiliary model: forward passes over new tokens with a cache.

    Args:
        model: the auxiliary causal LM.
        vocab_size: ids at or past this (padding rows of the embedding) never count.
        cache_margin: states kept past a sliding window, so rollbacks this deep stay cheap.
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int, cache_margin: int = DEFAULT_MARGIN) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = vocab_size
        self.cache_margin = cache_margin
        parameters = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self.forward_passes = 0
        self.refills = 0

    def new_cache(self) -> DynamicCache:
        return rollback_cache(self.model.config, self.cache_margin)

    @torch.no_grad()
    def forward(self, ids: Sequence[int], cache: DynamicCache) -> torch.Tensor:
        """Feed ``ids`` after what ``cache`` holds; next-token log-probabilities (fp32, 1-D)."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        outputs = self.model(
            input_ids=input_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: cache},
        )
        self.forward_passes += 1
        logits = outputs.logits[0, -1, : self.vocab_size].float()
        return torch.log_softmax(logits, dim=-1)


class MemberRow:
    """One auxiliary's state for one batch row: ids, cache and latest distribution."""

    def __init__(self, sync: Sync, cache: DynamicCache, fed: list[int], logprobs: torch.Tensor) -> None:
        self.sync = sync
        self.cache = cache
        self.fed = fed
        self.logprobs = logprobs

    @classmethod
    def prefill(cls, runner: MemberRunner, sync: Sync) -> "MemberRow":
        if not sync.ids:
            raise ValueError(
                "an auxiliary's prompt is empty after tokenization; give a non-empty prompt or a "
                "tokenizer that adds a BOS token"
            )
        cache = runner.new_cache()
        logprobs = runner.forward(sync.ids, cache)
        sync.take_changed_from()
        return cls(sync, cache, list(sync.ids), logprobs)

    def fork(self) -> "MemberRow":
        """An independent copy (a beam that split, or rows with the same prompt)."""
        return MemberRow(copy.deepcopy(self.sync), copy.deepcopy(self.cache), list(self.fed), self.logprobs)

    @property
    def ready(self) -> bool:
        return self.sync.ready

    def push_token(self, token_id: int, data: bytes | None) -> None:
        self.sync.push_token(token_id, data)

    def refresh(self, runner: MemberRunner) -> None:
        """Bring the cache and distribution up to date with the ids (no-op if they are)."""
        ids = self.sync.ids
        common = self.sync.take_changed_from()
        common = min(common, len(self.fed))
        limit = min(len(ids), len(self.fed))
        while common < limit and ids[common] == self.fed[common]:
            common += 1
        if common == len(ids) == len(self.fed):
            return
        if common == len(ids):
            common -= 1
        drop = len(self.fed) - common
        if drop and not can_drop(self.cache, drop):
            self.cache, common, drop = runner.new_cache(), 0, 0
            runner.refills += 1
        if drop:
            self.cache.crop(-drop)
        self.logprobs = runner.forward(ids[common:], self.cache)
        del self.fed[common:]
        self.fed.extend(ids[common:])
