"""An auxiliary model of the ensemble, validated before any generation starts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Member", "check_top_k", "check_weight"]

if TYPE_CHECKING:
    from .models.loading import LoadedModel


def check_weight(name: str, weight: object) -> float:
    """A weight must be a finite, non-negative number."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"`{name}` has to be a number, but is {type(weight).__name__}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"`{name}` has to be a finite non-negative number, but is {weight}")
    return float(weight)


def check_top_k(top_k: object) -> int:
    """``top_k`` must be a positive integer (any size: it is capped at each vocabulary)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` has to be a positive integer, but is {top_k!r}")
    return top_k


@dataclass
class Member:
    """An auxiliary model and its own tokenizer.

    Args:
        model: a causal language model (anything ``AutoModelForCausalLM`` loads). It may sit
            on another device or dtype than the primary.
        tokenizer: the model's own fast tokenizer; it must have an EOS token.
        weight: relative weight in the average (only ratios between weights matter).
        name: label used in traces; defaults to the model's ``name_or_path``.
        eos_token_ids: ids that end a sequence for this model, in addition to the tokenizer's
            EOS. Defaults to the model's ``generation_config.eos_token_id``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    weight: float = 1.0
    name: str | None = None
    eos_token_ids: Sequence[int] | None = field(default=None)

    @classmethod
    def from_loaded(cls, loaded: "LoadedModel", weight: float = 1.0) -> "Member":
        """The member for a model from `unite_logits.load_model`: its name and EOS ids carried over.

        The one way the API, the CLI and the evaluation turn a loaded model into a member.
        """
        return cls(loaded.model, loaded.tokenizer, weight=weight, name=loaded.name,
                   eos_token_ids=list(loaded.eos_token_ids))

    def __post_init__(self) -> None:
        if not isinstance(self.model, PreTrainedModel):
            raise TypeError(
                f"`model` has to be a transformers PreTrainedModel, but is {type(self.model).__name__}"
            )
        if any(parameter.device.type == "meta" for parameter in self.model.parameters()):
            raise ValueError(
                f"`model` {type(self.model).__name__} has weights on the 'meta' device (not loaded); "
                "load it onto a real device first"
            )
        if getattr(self.model.config, "is_encoder_decoder", False) or not self.model.can_generate():
            raise TypeError(
                f"`model` has to be a causal language model, but {type(self.model).__name__} cannot "
                "generate text on its own (load it with AutoModelForCausalLM)"
            )
        if not isinstance(self.tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                f"`tokenizer` has to be a transformers tokenizer, but is {type(self.tokenizer).__name__}"
            )
        self.weight = check_weight("weight", self.weight)
        if self.name is None:
            self.name = str(getattr(self.model.config, "name_or_path", "") or type(self.model).__name__)
        if self.eos_token_ids is None:
            configured = getattr(self.model.generation_config, "eos_token_id", None)
            if configured is None:
                configured = []
            elif isinstance(configured, int):
                configured = [configured]
            self.eos_token_ids = [int(i) for i in configured]
        if self.tokenizer.eos_token_id is None and not self.eos_token_ids:
            raise ValueError(
                f"tokenizer of member {self.name!r} has no EOS token; set `tokenizer.eos_token` or "
                "pass `eos_token_ids`"
            )
