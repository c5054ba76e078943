"""KV caches that can drop their newest tokens, for auxiliaries that re-tokenize their tail.

An auxiliary's ids change at their end (a word re-tokenized as it grows), so its cache must
drop its last few tokens cheaply. Full-attention layers keep every state and can drop any
number. A sliding-window layer (Gemma 3's 512-token layers) should keep only its window,
or every step attends over, and copies, the whole context; but a layer that kept only its
window cannot go back past it.

`RollbackSlidingWindowLayer` keeps its window plus a margin of older states (between
``margin`` and ``2 * margin`` of them), so dropping up to ``margin`` tokens is always exact
and costs no forward pass. `can_drop` tells whether a drop is exact; a deeper one (rare:
the tail re-encode rewrites at most a few words) must refill the cache from scratch.

Cost: a sliding-window layer stores and attends over at most ``window + 2 * margin`` states,
whatever the length of the text.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DummyLayer, DynamicLayer, DynamicSlidingWindowLayer

__all__ = ["DEFAULT_MARGIN", "RollbackSlidingWindowLayer", "can_drop", "rollback_cache"]

DEFAULT_MARGIN = 64
"""Older states kept past a sliding window; drops up to this many tokens are always exact."""


class RollbackSlidingWindowLayer(DynamicSlidingWindowLayer):
    """A sliding-window cache layer that can drop its newest tokens while it holds them.

    It stores the states it needs (the last ``sliding_window - 1``) plus older ones up to
    ``2 * margin``, trimmed back to ``margin`` when the excess grows past that: trimming
    is a view, so it costs nothing per step.
    """

    def __init__(self, sliding_window: int, margin: int = DEFAULT_MARGIN, **kwargs: Any) -> None:
        super().__init__(sliding_window=sliding_window, **kwargs)
        if margin < 1:
            raise ValueError(f"`margin` has to be a positive integer, but is {margin}")
        self.margin = margin
        # Recording the past makes the parent keep every state and attend over the window only.
        self.activate_past_recording()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        visible = super().update(key_states, value_states, *args, **kwargs)
        keys, values = self._states()
        keep = self.sliding_window - 1 + self.margin
        if keys.shape[-2] > keep + self.margin:
            self.keys, self.values = keys[:, :, -keep:, :], values[:, :, -keep:, :]
        return visible

    def _states(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            raise RuntimeError("the cache layer holds no states yet")
        return self.keys, self.values

    def can_drop(self, tokens: int) -> bool:
        """Whether dropping the last ``tokens`` leaves every state the next step attends to."""
        if not self.is_initialized:
            return True
        stored = self._states()[0].shape[-2]
        needed = min(self.cumulative_length - tokens, self.sliding_window - 1)
        return tokens <= self.cumulative_length and stored - tokens >= needed

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (a negative count, as `DynamicLayer.crop`)."""
        if tokens_to_remove > 0:
            raise ValueError(f"`tokens_to_remove` has to be a negative count, but is {tokens_to_remove}")
        tokens = -tokens_to_remove
        if tokens == 0 or not self.is_initialized:
            return
        keys, values = self._states()
        if not self.can_drop(tokens):
            raise ValueError(
                f"cannot drop {tokens} tokens from a sliding-window cache layer that holds "
                f"{keys.shape[-2]} states past {self.cumulative_length} tokens; refill the cache"
            )
        self.keys, self.values = keys[:, :, :-tokens, :], values[:, :, :-tokens, :]
        self.cumulative_length -= tokens


def rollback_cache(config: PretrainedConfig, margin: int = DEFAULT_MARGIN) -> DynamicCache:
    """An empty cache for a model with ``config`` whose newest tokens can be dropped.

    Layers are those ``generate`` would use for the model, with sliding-window layers
    replaced by `RollbackSlidingWindowLayer`.
    """
    cache = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[index] = RollbackSlidingWindowLayer(layer.sliding_window, margin)
    return cache


def can_drop(cache: DynamicCache, tokens: int) -> bool:
    """Whether ``cache.crop(-tokens)`` keeps the cache exact.

    Full-attention layers always can (as can the empty layers of KV-sharing models); layers
    of any other kind (recurrent states, say) are assumed not to, so the caller refills the
    cache rather than risk a wrong state. Cost: one check per layer, no tensor work.
    """
    for layer in cache.layers:
        if isinstance(layer, RollbackSlidingWindowLayer):
            if not layer.can_drop(tokens):
                return False
        elif type(layer) not in (DynamicLayer, DummyLayer):
            return False
    return True
