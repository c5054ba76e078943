"""A member of the ensemble, and the runner through which the row store drives it.

An auxiliary is anything that satisfies `EnsembleMember`: its tokenizer, weight, name and EOS
ids, and a ``runner(vocab_size=..., top_k=...)`` that makes the `Runner` the row store feeds
(`unite_logits.core.rows`). `Member` is a model in this process, run by a `LocalRunner` over
one `RaggedKVCache`; a member behind a server (`unite_logits.remote.RemoteMember`) makes its
own runner, so the core never needs to know what kind a member is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .checks import check_top_k, check_weight, context_window
from .ragged_cache import DEFAULT_MARGIN, RaggedKVCache, check_supported
from .reading import ReadTree

__all__ = ["EnsembleMember", "Member", "Runner", "RowCache", "LocalRunner", "context_window", "check_top_k",
           "check_weight"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

_VOCAB_SLACK = 1.25
"""A model's output may have more rows than its tokenizer has tokens (padded to a multiple of
64 or 128, reserved ids: Qwen2.5 has 271 more); this many times more, plus 128, is another model."""


class RowCache(Protocol):
    """What a member's rows need of its per-row state: a local `RaggedKVCache` or, for a member
    behind a server, `unite_logits.remote.runner.RemoteRowCache`. ``feed`` prefills rows;
    ``read`` reads each row's `ReadTree` (several distributions of a growing text at once)."""

    def feed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor: ...

    def read(self, trees: Sequence[ReadTree | None]) -> list[torch.Tensor | None]: ...

    def select_rows(self, index: torch.Tensor) -> None: ...

    def can_drop(self, row: int, tokens: int) -> bool: ...

    def drop(self, row: int, tokens: int) -> None: ...

    def clear(self, row: int) -> None: ...

    def maintain(self) -> None: ...


class Runner(Protocol):
    """A member as the row store runs it: it makes the cache of a generation's rows, says how
    many tokens a row may hold (``limit``), counts rollbacks too deep for its cache
    (``refills``), and releases what it holds on `close` (threads, connections)."""

    name: str
    limit: int | None
    refills: int

    def new_cache(self, rows: int) -> RowCache: ...

    def close(self) -> None: ...


@runtime_checkable
class EnsembleMember(Protocol):
    """What the processor needs of an auxiliary, local or served."""

    tokenizer: PreTrainedTokenizerBase
    weight: float
    name: str | None
    eos_token_ids: Sequence[int] | None

    def runner(self, *, vocab_size: int, top_k: int) -> Runner: ...


class LocalRunner:
    """How one auxiliary model runs in this process, and what it cost.

    Args:
        model: the auxiliary causal LM.
        vocab_size: ids at or past this never count.
        name: the member's name, for messages.
        margin: positions kept past a sliding window, so rollbacks this deep stay cheap.
    """

    def __init__(self, model: PreTrainedModel, vocab_size: int, name: str, margin: int = DEFAULT_MARGIN) -> None:
        check_supported(model)
        self.model = model
        self.vocab_size = vocab_size
        self.name = name
        self.margin = margin
        self.limit = context_window(model)
        self.caches: list[RaggedKVCache] = []  # of the generation in progress, for its counters
        self.refills = 0

    @property
    def forward_passes(self) -> int:
        return sum(cache.forward_passes for cache in self.caches)

    def new_cache(self, rows: int) -> RaggedKVCache:
        cache = RaggedKVCache(self.model, rows, self.vocab_size, self.margin)
        self.caches = [cache]
        return cache

    def close(self) -> None:
        """Nothing to release: the caches go with the generation."""


@dataclass
class Member:
    """An auxiliary model and its own tokenizer.

    Args:
        model: a causal language model (anything ``AutoModelForCausalLM`` loads). It may sit
            on another device or dtype than the primary.
        tokenizer: the model's own fast tokenizer; it must have an EOS token. Its size is
            checked against the model's output (a tokenizer of another model family is refused).
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
        check_tokenizer_fits(self.model, self.tokenizer, str(self.name))

    def runner(self, *, vocab_size: int, top_k: int) -> LocalRunner:
        """The runner of this model in this process (``top_k`` is not needed: the whole
        distribution is at hand)."""
        check_top_k(top_k)
        return LocalRunner(self.model, vocab_size, str(self.name))


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Refuse a tokenizer that cannot be the model's own, judged by sizes.

    A tokenizer with more tokens than the model has output rows would index past them; a model
    with far more rows than the tokenizer has tokens was trained on another vocabulary (e.g.
    SmolLM2's 49,152-token tokenizer on Gemma 3's 262,144 rows). Two vocabularies of about the
    same size are not told apart by this: a mismatch there shows only in the ensemble's output.
    """
    embeddings = model.get_output_embeddings()
    rows = getattr(getattr(embeddings, "weight", None), "shape", (None,))[0]
    if rows is None:
        rows = getattr(model.config.get_text_config(), "vocab_size", None)
    if not isinstance(rows, int):
        return
    tokens = len(tokenizer)
    if tokens > rows or rows > _VOCAB_SLACK * tokens + 128:
        raise ValueError(
            f"member {name!r}: its tokenizer has {tokens:,} tokens but the model's output has {rows:,} rows; "
            "the tokenizer is not this model's own (pass the tokenizer the model was trained with)"
        )
