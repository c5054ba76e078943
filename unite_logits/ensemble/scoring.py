"""Ensembled scoring from texts: contexts and continuations, whole texts, in batches.

`encode_pair` and `rolling_windows` turn texts into the primary's token ids exactly as
lm-evaluation-harness's ``hf`` model does (the whole string encoded, then split after the
context; a trailing space of the context moved to the continuation; an empty context replaced
by a prefix token; disjoint windows of ``max_length`` tokens for a whole text), so that an
ensemble of one scores every request as ``hf`` does. `Scorer` sorts requests by length, runs
them in batches through `unite_logits.core.scoring.score_requests` (one forward pass per model
and batch), and puts the results back in order. See docs/scoring.md for the definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..core.checks import check_int, context_window
from ..core.scoring import ScoreRequest, ScoringModel, TokenScores, score_requests_sweep
from ..core.token_bytes import token_bytes_view

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

__all__ = ["Scorer", "encode_pair", "encode_text", "rolling_windows", "prefix_token_id", "max_length", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 8
_FALLBACK_MAX_LENGTH = 2048  # what lm-eval assumes of a model that states no window


def prefix_token_id(tokenizer: Any) -> int:
    """What stands in for an empty context: the BOS token, else the EOS token (as lm-eval)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the primary's tokenizer has neither a BOS nor an EOS token to stand for an empty context")
    return int(token)


def encode_text(tokenizer: Any, text: str, add_bos_token: bool | None = None) -> list[int]:
    """The tokenizer's default encoding (BOS where it adds one, unless ``add_bos_token`` says),
    without a second BOS for a text that already starts with one."""
    kwargs: dict[str, Any] = {} if add_bos_token is None else {"add_special_tokens": add_bos_token}
    if add_bos_token is None and text.startswith(str(tokenizer.decode(prefix_token_id(tokenizer)))):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def encode_pair(tokenizer: Any, context: str, continuation: str, add_bos_token: bool | None = None,
                ) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` of a pair, as lm-eval's ``hf`` model makes them.

    Raises:
        ValueError: an empty continuation.
    """
    if not continuation:
        raise ValueError("the continuation is empty: there is nothing to score")
    if not context:
        ids = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        return ([prefix], ids) if ids[0] != prefix else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode_text(tokenizer, context + continuation, add_bos_token)
    context_ids = encode_text(tokenizer, context, add_bos_token)
    return context_ids, whole[len(context_ids):]


def rolling_windows(tokenizer: Any, text: str, window: int, add_bos_token: bool | None = None,
                    ) -> list[tuple[list[int], list[int]]]:
    """Disjoint windows of at most ``window`` tokens covering ``text``: (context, continuation)
    pairs in which every token of the text is a continuation token exactly once (as lm-eval's
    ``get_rolling_token_windows`` with ``context_len=1`` and ``make_disjoint_window``)."""
    tokens = encode_text(tokenizer, text, add_bos_token)
    if not tokens:
        return []
    first = min(window, len(tokens))
    windows = [([prefix_token_id(tokenizer)], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        length = min(len(tokens) - predicted, window)
        end = predicted + length
        context = tokens[max(end - window - 1, 0): end - 1]
        windows.append((context[: len(context) - (length - 1)], tokens[end - length: end]))
        predicted = end
    return windows


def max_length(models: Sequence[Any]) -> int:
    """The longest text every model can read: the smallest context window (2048 if none says)."""
    windows = [context_window(m.model) for m in models]
    known = [w for w in windows if w is not None]
    if known:
        return min(known)
    tokenizer_limit = getattr(models[0].tokenizer, "model_max_length", None)
    return tokenizer_limit if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**9 else _FALLBACK_MAX_LENGTH


class Scorer:
    """Scores texts under an ensemble of models in this process (primary first).

    Args:
        models: `LoadedModel`s, primary first (an ensemble of one scores as that model alone).
        weights: one per model (only ratios matter).
        top_k: candidates each model proposes per position.
        batch_size: requests per forward pass of each model.
        add_bos_token: as lm-eval's ``add_bos_token``: None uses each tokenizer's default.
        confidence_gate: score positions where the primary is this sure by the primary alone,
            as generation with the same gate does (None: exact UniTE).
    """

    def __init__(self, models: Sequence["LoadedModel"], weights: Sequence[float], top_k: int,
                 batch_size: int = DEFAULT_BATCH_SIZE, add_bos_token: bool | None = None,
                 confidence_gate: float | None = None) -> None:
        self.models = list(models)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.add_bos_token = add_bos_token
        self.top_k = top_k
        self.confidence_gate = confidence_gate
        scoring = [ScoringModel(m.model, token_bytes_view(m.tokenizer, m.eos_token_ids), w, m.name)
                   for m, w in zip(self.models, weights)]
        self.primary, self.members = scoring[0], scoring[1:]
        self.max_length = max_length(self.models)

    @property
    def tokenizer(self) -> Any:
        return self.models[0].tokenizer

    def score(self, requests: Sequence[ScoreRequest], *, progress: bool = False, desc: str = "scoring",
              on_batch: Callable[[list[int], list[TokenScores]], None] | None = None,
              top_n: int = 0) -> list[TokenScores]:
        """Score ``requests`` in batches of `batch_size`, longest first; results in request order.

        ``on_batch(indices, results)`` is called as each batch is done (to keep results of a
        long run as they come: lm-eval's request cache does). ``top_n``: also each position's
        likeliest ids (`TokenScores.top`).
        """
        keep = None if on_batch is None else (lambda indices, results: on_batch(indices, results[0]))
        return self.score_sweep(requests, None, progress=progress, desc=desc, on_batch=keep, top_n=top_n)[0]

    def score_sweep(self, requests: Sequence[ScoreRequest], weight_vectors: Sequence[Sequence[float]] | None, *,
                    progress: bool = False, desc: str = "scoring",
                    on_batch: Callable[[list[int], list[list[TokenScores]]], None] | None = None,
                    top_n: int = 0) -> list[list[TokenScores]]:
        """`score` under each weight vector (one weight per model, zero exactly where this
        scorer's are), for the price of one scoring pass (`unite_logits.core.scoring.score_requests_sweep`)."""
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
        count = 1 if weight_vectors is None else len(weight_vectors)
        results: list[list[TokenScores | None]] = [[None] * len(requests) for _ in range(count)]
        bar = tqdm(total=len(requests), desc=desc, unit="request", disable=not progress)
        with bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start: start + self.batch_size]
                scored = score_requests_sweep(self.primary, self.members, [requests[i] for i in batch], self.top_k,
                                              weight_vectors, top_n, self.confidence_gate)
                for per_vector, values in zip(results, scored):
                    for index, result in zip(batch, values):
                        per_vector[index] = result
                if on_batch is not None:
                    on_batch(batch, scored)
                bar.update(len(batch))
        return [[result for result in per_vector if result is not None] for per_vector in results]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, progress: bool = False) -> list[TokenScores]:
        """Score each continuation given its context (texts)."""
        return self.score([ScoreRequest(*encode_pair(self.tokenizer, c, x, self.add_bos_token)) for c, x in pairs],
                          progress=progress)

    def score_rolling(self, texts: Sequence[str], *, progress: bool = False) -> list[float]:
        """The log-likelihood of each whole text, over disjoint windows of `max_length` tokens."""
        windows = [rolling_windows(self.tokenizer, text, self.max_length, self.add_bos_token) for text in texts]
        flat = [ScoreRequest(context, continuation) for text in windows for context, continuation in text]
        scored = iter(self.score(flat, progress=progress, desc="scoring windows"))
        return [math.fsum(next(scored).logprob for _ in text) for text in windows]
