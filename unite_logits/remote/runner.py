"""`RemoteRunner`: one step of a served member for every row of a batch, as dense log-probabilities.

The row store hands the runner each row's FULL id sequence; the runner sends one request
per row, all rows at once from a small thread pool (each thread blocks on the network, not
on Python), and the server's prefix cache makes each request cost only the tokens that are
new since that row's previous step. What comes back is the server's top-n: dense rows of
``vocab_size`` log-probabilities, ``-inf`` for every id the server did not list (and for ids
at or past ``vocab_size``, which the tokenizer never produces).

A row fails as a whole (`RemoteMemberError`), or, with ``on_error="abstain"``, comes back
all ``-inf`` with a warning: the core treats such a row as this member abstaining.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from ..core.reading import ReadTree
from ..core.workers import start_worker_thread
from .client import JsonClient
from .errors import RemoteMemberError
from .protocols import Candidates, MalformedAnswer, completion_request, parse_candidates
from .server import ServerInfo

__all__ = ["RemoteRunner", "RemoteRowCache", "OnError", "candidates_for", "dense_logprobs"]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "abstain"]


def candidates_for(top_k: int, top_n: int | None) -> int:
    """How many candidates to ask for: ``top_n`` if given, else 4 x ``top_k``, never below ``top_k``.

    More than ``top_k`` so that the alignment finds most of the OTHER members' candidates in
    this member's answer too; each extra candidate costs a few bytes of JSON.
    """
    return max(top_k, top_n if top_n is not None else 4 * top_k)


def dense_logprobs(answers: Sequence[Candidates | None], vocab_size: int) -> torch.Tensor:
    """Rows of ``vocab_size`` log-probabilities: each row's candidates, ``-inf`` elsewhere.

    A None row (the member abstains) is all ``-inf``; ids at or past ``vocab_size`` are
    dropped; an id listed twice keeps its largest value (never likelier than its best entry).
    """
    out = torch.full((len(answers), vocab_size), -math.inf, dtype=torch.float32)
    for row, candidates in enumerate(answers):
        if candidates is None or not len(candidates):
            continue
        ids = torch.tensor(candidates.ids, dtype=torch.long)
        values = torch.tensor(candidates.logprobs, dtype=torch.float32)
        keep = ids < vocab_size
        out[row].scatter_reduce_(0, ids[keep], values[keep], reduce="amax", include_self=True)
    return out


class RemoteRunner:
    """Next-token log-probabilities of a served model, a batch of rows at a time.

    Built by `RemoteMember.runner`. Thread-safe; `close` ends its threads and connections.

    Attributes:
        vocab_size: the tokenizer's vocabulary size; ids at or past it never count.
        name: the member's name.
        limit: the most tokens a row may hold on the server (None if it does not say).
        requests: requests sent so far (one per row and step).
        abstentions: rows answered all ``-inf`` because the server failed (``on_error="abstain"``).
    """

    def __init__(
        self,
        client: JsonClient,
        info: ServerInfo,
        *,
        vocab_size: int,
        top_k: int,
        top_n: int,
        on_error: OnError,
        concurrency: int,
    ) -> None:
        self.client = client
        self.info = info
        self.vocab_size = vocab_size
        self.name = client.member
        self.limit = None if info.n_ctx is None else info.n_ctx - 1  # room for the one token asked for
        self.top_k = top_k
        self.top_n = top_n
        self.on_error = on_error
        self.concurrency = concurrency
        self.requests = 0
        self.abstentions = 0
        self.refills = 0  # the row store counts rollbacks deeper than a cache holds; never for a server
        self.caches: list[RemoteRowCache] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def forward_passes(self) -> int:
        """Batches sent by the row caches of the generation in progress (one per step)."""
        return sum(cache.forward_passes for cache in self.caches)

    def new_cache(self, rows: int) -> "RemoteRowCache":
        """The row store's cache for ``rows`` rows (see `RemoteRowCache`)."""
        cache = RemoteRowCache(self, rows)
        self.caches = [cache]
        return cache

    def logprobs(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """For each row's full id sequence, next-token log-probabilities, shape ``(len(batch), vocab_size)``.

        Raises:
            RemoteMemberError: a row failed and ``on_error`` is ``"raise"``.
        """
        if len(batch) == 1 or self.concurrency == 1:
            answers = [self._row_candidates(ids) for ids in batch]
        else:
            answers = list(self._executor().map(self._row_candidates, batch))
        return dense_logprobs(answers, self.vocab_size)

    def logprobs_in_turn(self, rows: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
        """Per row, ``(len(rows[r]), vocab_size)`` log-probabilities after each of its id sequences,
        asked one after another (so each finds the previous one's prefix in the server's slot
        cache), the rows at once. Raises as `logprobs` does."""
        def ask(sequences: Sequence[Sequence[int]]) -> list[Candidates | None]:
            return [self._row_candidates(ids) for ids in sequences]

        if len(rows) == 1 or self.concurrency == 1:
            answers = [ask(sequences) for sequences in rows]
        else:
            answers = list(self._executor().map(ask, rows))
        return [dense_logprobs(row, self.vocab_size) for row in answers]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix=f"remote-{self.name}", initializer=start_worker_thread
                )
            return self._pool

    def _row_candidates(self, ids: Sequence[int]) -> Candidates | None:
        """The row's candidates; None if it failed and the member abstains."""
        try:
            return self._ask(ids)
        except RemoteMemberError as error:
            if self.on_error == "raise":
                raise
            with self._lock:
                self.abstentions += 1
            logger.warning("%s; the member abstains for this row and step", error)
            return None

    def _ask(self, ids: Sequence[int]) -> Candidates:
        if not ids:
            raise self.client.error("a row with no tokens has no next-token distribution")
        if self.limit is not None and len(ids) > self.limit:
            raise self.client.error(
                f"a row has {len(ids)} tokens, past the server's context of {self.info.n_ctx} per request "
                "(start llama-server with a larger -c, or fewer -np slots)"
            )
        path, body = completion_request(self.info.protocol, ids, self.top_n, self.info.model)
        with self._lock:
            self.requests += 1
        answer = self.client.post(path, body)
        try:
            candidates = parse_candidates(self.info.protocol, answer)
        except MalformedAnswer as error:
            raise self.client.error(f"malformed answer to POST {path}: {error}") from None
        needed = min(self.top_k, self.vocab_size)
        if len(candidates) < needed:
            raise self.client.error(
                f"POST {path} returned {len(candidates)} candidates, fewer than top_k={self.top_k} "
                "(vLLM caps them at --max-logprobs)"
            )
        return candidates

    def close(self) -> None:
        """End the worker threads (a later call starts new ones); the member owns the connections."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "RemoteRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteRowCache:
    """What the row store keeps for a served member: each row's ids; the server holds the KV cache.

    It offers the methods of `unite_logits.ragged_cache.RaggedKVCache` that the row store
    (`unite_logits.core.rows.AuxiliaryRows`) calls, so a `RemoteRunner` can stand where a local
    runner does. `feed` sends each fed row's FULL ids (what it held plus the new chunk); the
    server's prefix cache turns that into the chunk's work. Dropping, clearing, selecting and
    reading a tree edit the id lists only: there is nothing to free on the server, and the
    next request of a row that lost its tail simply shares a shorter prefix with the last.
    """

    def __init__(self, runner: RemoteRunner, rows: int) -> None:
        self.runner = runner
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.forward_passes = 0

    def feed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Append each chunk to its row; next-token log-probabilities of the rows that got one.

        Rows with an empty chunk come back all ``-inf`` (the row store keeps their previous
        distribution). Raises `RemoteMemberError` as `RemoteRunner.logprobs` does.
        """
        if len(chunks) != len(self.ids):
            raise ValueError(f"got {len(chunks)} chunks for {len(self.ids)} rows")
        fed = [row for row, chunk in enumerate(chunks) if len(chunk)]
        out = torch.full((len(chunks), self.runner.vocab_size), -math.inf, dtype=torch.float32)
        if not fed:
            return out
        for row in fed:
            self.ids[row].extend(int(token) for token in chunks[row])
        out[fed] = self.runner.logprobs([self.ids[row] for row in fed])
        self.forward_passes += 1
        return out

    def read(self, trees: Sequence[ReadTree | None]) -> list[torch.Tensor | None]:
        """Each row's tree (`unite_logits.core.reading`): one request per query, a row's queries in
        turn, the rows at once.

        A server without log-probabilities at every position of a prompt (llama.cpp's) reads a
        draft one position per request; asked in turn, each request finds the row's previous one
        in the same slot's prefix cache and costs the tokens new since. Raises
        `RemoteMemberError` as `feed` does.
        """
        if len(trees) != len(self.ids):
            raise ValueError(f"got {len(trees)} trees for {len(self.ids)} rows")
        readings: list[list[list[int]]] = []
        fed: list[int] = []
        for row, tree in enumerate(trees):
            if tree is None:
                continue
            kept = self.ids[row][: tree.base]
            readings.append([tree.reading(query, kept) for query in range(len(tree.queries))])
            fed.append(row)
            self.ids[row] = kept + list(tree.trunk)
        if not readings:
            return [None] * len(trees)
        values = dict(zip(fed, self.runner.logprobs_in_turn(readings)))
        self.forward_passes += 1
        return [values.get(row) for row in range(len(trees))]

    def select_rows(self, index: torch.Tensor) -> None:
        """Row ``i`` becomes a copy of row ``index[i]`` (beams that split, rows that finished)."""
        self.ids = [list(self.ids[parent]) for parent in index.tolist()]

    def can_drop(self, row: int, tokens: int) -> bool:
        return 0 <= tokens <= len(self.ids[row])

    def drop(self, row: int, tokens: int) -> None:
        """Forget the row's last ``tokens`` ids (a rollback)."""
        if not self.can_drop(row, tokens):
            raise ValueError(f"row {row} holds {len(self.ids[row])} ids, cannot drop {tokens}")
        del self.ids[row][len(self.ids[row]) - tokens :]

    def clear(self, row: int) -> None:
        self.ids[row] = []

    def maintain(self) -> None:
        """Nothing to trim: the server manages its own cache."""
