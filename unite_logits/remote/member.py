"""`RemoteMember`: an auxiliary model that runs behind an inference server, named by its URL."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from transformers import PreTrainedTokenizerBase

from ..core.checks import check_int, check_seconds, check_top_k, check_weight
from .client import JsonClient
from .protocols import PROTOCOLS, Protocol
from .runner import OnError, RemoteRunner, candidates_for
from .server import ServerInfo, describe_server
from .server import check_vocabulary as _check_vocabulary  # the name is also an option of RemoteMember

__all__ = ["RemoteMember", "DEFAULT_CONCURRENCY"]

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
"""Rows sent at once to a server that does not say how many it runs in parallel."""
_ON_ERROR = ("raise", "abstain")


@dataclass
class RemoteMember:
    """An auxiliary model served by llama.cpp's ``llama-server`` or an OpenAI-compatible server.

    The member's ids stay in sync with the text exactly as for a local `Member`; at each step
    every row's full id sequence is sent and the server's prefix cache makes that cost only
    the new tokens. Construction checks the server (reachable, protocol, same vocabulary as
    ``tokenizer``) and raises `RemoteMemberError` before any generation if it is not usable.

    Args:
        url: the server's base URL, e.g. ``http://gpu-node-7:8080``.
        tokenizer: the served model's own tokenizer (the member's ids are computed here).
        weight: relative weight in the average (only ratios between weights matter).
        name: label used in traces and messages; defaults to the URL.
        eos_token_ids: ids that end a sequence for this model, in addition to the tokenizer's EOS.
        top_n: candidates asked for per step; default 4 x the processor's ``top_k`` (never fewer
            than ``top_k``). More let the alignment find the other members' candidates here too.
        timeout: seconds to wait for a connection or an answer before failing.
        retries: extra attempts after a connection error (0.1 s, 0.2 s, ... apart).
        protocol: ``"llama.cpp"`` (``/completion``) or ``"openai"`` (``/v1/completions``);
            None finds out (llama-server answers ``/props``).
        on_error: ``"raise"`` stops the generation with `RemoteMemberError` when the server
            fails; ``"abstain"`` logs a warning and leaves the member out of that row's step.
        model: the model name OpenAI-compatible servers want; default the first they list.
        concurrency: rows sent at once; default llama-server's slot count (``-np``), else 8.
        api_key: sent as a bearer token, for servers started with one.
        check_vocabulary: compare the server's vocabulary with ``tokenizer`` (leave on).

    Raises:
        RemoteMemberError: unreachable server, unknown protocol, or another model's vocabulary.
        TypeError, ValueError: a bad argument.
    """

    url: str
    tokenizer: PreTrainedTokenizerBase
    weight: float = 1.0
    name: str | None = None
    eos_token_ids: Sequence[int] | None = field(default=None)
    top_n: int | None = None
    timeout: float = 30.0
    retries: int = 2
    protocol: Protocol | None = None
    on_error: OnError = "raise"
    model: str | None = None
    concurrency: int | None = None
    api_key: str | None = field(default=None, repr=False)
    check_vocabulary: bool = True
    server: ServerInfo = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_arguments()
        self.client = JsonClient(
            self.url, str(self.name), timeout=self.timeout, retries=self.retries,
            connections=self.concurrency or DEFAULT_CONCURRENCY, api_key=self.api_key,
        )
        try:
            self.server = describe_server(self.client, self.protocol, self.model)
            if self.check_vocabulary:
                _check_vocabulary(self.client, self.server, self.tokenizer)
        except BaseException:
            self.client.close()
            raise
        self.protocol = self.server.protocol
        if self.concurrency is None:
            self.concurrency = self.server.slots or DEFAULT_CONCURRENCY
        logger.info("remote member %r at %s: %s", self.name, self.url, self.server)

    def _check_arguments(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"`url` has to be an http:// or https:// URL, but is {self.url!r}")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018  (raises on a port that is not a number in range)
        except ValueError as error:
            raise ValueError(f"`url` {self.url!r} is not a valid URL: {error}") from None
        if not parts.hostname or " " in parts.netloc:
            raise ValueError(f"`url` {self.url!r} names no valid host (e.g. http://127.0.0.1:8080)")
        if not isinstance(self.tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f"`tokenizer` has to be a transformers tokenizer, but is {type(self.tokenizer).__name__}")
        self.weight = check_weight("weight", self.weight)
        if self.name is None:
            self.name = self.url
        self.eos_token_ids = [int(i) for i in (self.eos_token_ids or ())]
        if self.tokenizer.eos_token_id is None and not self.eos_token_ids:
            raise ValueError(f"tokenizer of member {self.name!r} has no EOS token; pass `eos_token_ids`")
        if self.top_n is not None:
            check_top_k(self.top_n)
        check_seconds("timeout", self.timeout)
        check_int("retries", self.retries)
        if self.concurrency is not None:
            check_int("concurrency", self.concurrency, minimum=1)
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` has to be one of {', '.join(PROTOCOLS)} (or None to detect it), not {self.protocol!r}")
        if self.on_error not in _ON_ERROR:
            raise ValueError(f"`on_error` has to be 'raise' or 'abstain', not {self.on_error!r}")

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size: ids at or past it never count."""
        return len(self.tokenizer)

    def runner(self, *, vocab_size: int | None = None, top_k: int) -> RemoteRunner:
        """A runner asking for ``top_k`` candidates at least (`candidates_for` says how many);
        ``vocab_size`` defaults to the tokenizer's."""
        check_top_k(top_k)
        assert self.concurrency is not None and self.protocol is not None
        return RemoteRunner(
            self.client, self.server, vocab_size=vocab_size or self.vocab_size, top_k=top_k,
            top_n=candidates_for(top_k, self.top_n), on_error=self.on_error, concurrency=self.concurrency,
        )

    def close(self) -> None:
        """Close the connections to the server."""
        self.client.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> "RemoteMember":
        return self  # holds a connection pool and a tokenizer: shared, never copied
