"""How to decode: one description, from the command line and the server to ``model.generate``.

`GenerationOptions` is built once (by the CLI from its flags, by the server from a request,
by Python users directly) and reaches the generation loop unchanged; only there does it
become ``model.generate`` keyword arguments (`GenerationOptions.generate_kwargs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.checks import check_int, is_int

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "MAX_TOP_LOGPROBS", "MAX_SEED", "GenerationOptions"]

DEFAULT_MAX_NEW_TOKENS = 64
"""New tokens generated when nothing else is asked for."""
MAX_TOP_LOGPROBS = 20
"""Alternatives reported per token at most, as the OpenAI API."""
MAX_SEED = 2**64 - 1
"""The largest seed ``torch.manual_seed`` takes."""


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode one answer.

    Attributes:
        max_new_tokens: the most tokens generated (the answer may end sooner, at EOS or a stop string).
        temperature: None or 0: greedy decoding; > 0: sample at this temperature.
        top_p: nucleus sampling mass in (0, 1] (sampling only).
        stop: strings that end the answer; the answer stops before the first one.
        top_logprobs: None: no log-probabilities; 0: each token's own; N: also its N likeliest
            alternatives (from the ensembled distribution).
        seed: seeds torch's generator before the answer is sampled, so it can be reproduced.

    Raises:
        ValueError: an option out of range (checked when the options are made).
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        if self.temperature is not None and (isinstance(self.temperature, bool) or not self.temperature >= 0
                                             or self.temperature == float("inf")):
            raise ValueError(f"`temperature` has to be a finite number >= 0, but is {self.temperature!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not 0 < self.top_p <= 1):
            raise ValueError(f"`top_p` has to be in (0, 1], but is {self.top_p!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("`stop` has to be a tuple of non-empty strings")
        if self.top_logprobs is not None and (not is_int(self.top_logprobs)
                                              or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"`top_logprobs` has to be an integer between 0 and {MAX_TOP_LOGPROBS}, "
                             f"but is {self.top_logprobs!r}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"`seed` has to be an integer between 0 and 2**64 - 1, but is {self.seed!r}")

    @property
    def sampling(self) -> bool:
        return bool(self.temperature)

    @property
    def decoding(self) -> tuple[Any, ...]:
        """What has to be equal for answers to share a batch: how the next token is chosen."""
        return (self.temperature, self.top_p) if self.sampling else ("greedy",)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: temperature 0 or None is greedy."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sampling}
        if self.sampling:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs
