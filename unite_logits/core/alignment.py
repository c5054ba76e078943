"""The union of the models' top-k candidates, and each model's probability for every one.

A *candidate* is identified by what it means, never by an id:

* a text token by the bytes it stands for (``b" muffins"``);
* end-of-sequence by its role (`EOS`), whatever each vocabulary calls it;
* any other special token (``<unk>``, a chat marker such as ``<|im_end|>``) by its content,
  ``("special", "<|im_end|>")``: models that share it vote for it like for any token (a
  member with the primary's own vocabulary shares all of them); the primary cannot emit
  one it lacks, so such a candidate drops out (`unite_logits.combine`).

A model's probability for a candidate (`aligned_probabilities`):

1. the candidate is in the model's top-k: that probability;
2. the candidate's bytes are one token of the model's vocabulary: the model's probability
   of that token;
3. otherwise: the probability of the first piece of the model's own spelling of the bytes
   (see `TokenBytes.first_piece`), or 0 if it has none.

Cost per step: O(k x models) dictionary lookups and one gather per model.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from .token_bytes import TokenBytes

__all__ = [
    "EOS",
    "Aligned",
    "Lookups",
    "Proposal",
    "aligned_from",
    "aligned_probabilities",
    "build_union",
    "candidate_key",
    "gather_probabilities",
    "plan_lookups",
    "primary_ids",
    "token_for",
]


class _Eos:
    """End-of-sequence, matched across vocabularies by role."""

    def __repr__(self) -> str:
        return "EOS"


EOS: Hashable = _Eos()
Candidate = Hashable


@dataclass
class Proposal:
    """One model at one step: its distribution and top-k.

    Attributes:
        view: the model's tokenizer seen as bytes.
        logprobs: log-probabilities over the model's vocabulary (1-D, any device), or None
            when the caller looks candidates up itself (the batched processor does).
        top_ids: ids of its top-k, best first.
        top_probs: their probabilities.
        weight: relative weight of this model.
        is_primary: whether this is the primary model (whose ids are emitted).
    """

    view: TokenBytes
    logprobs: torch.Tensor | None
    top_ids: list[int]
    top_probs: list[float]
    weight: float
    is_primary: bool = False

    @classmethod
    def from_logprobs(
        cls, view: TokenBytes, logprobs: torch.Tensor, top_k: int, weight: float, is_primary: bool = False
    ) -> "Proposal":
        k = min(top_k, logprobs.shape[-1])
        values, indices = torch.topk(logprobs, k)
        return cls(view, logprobs, indices.tolist(), values.exp().tolist(), weight, is_primary)


@lru_cache(maxsize=None)
def special_content(view: TokenBytes, token_id: int) -> str | None:
    """The string of a token that stands for no text (a special token), None if it has none."""
    content = view.tokenizer.backend_tokenizer.id_to_token(token_id)
    return str(content) if content else None


@lru_cache(maxsize=None)
def special_id(view: TokenBytes, content: str) -> int | None:
    """The id of the special token ``content`` in ``view``'s vocabulary, None if it lacks it."""
    token_id = view.tokenizer.backend_tokenizer.token_to_id(content)
    if token_id is None or token_id >= view.size or view.bytes_of(token_id):
        return None
    return int(token_id)


def candidate_key(view: TokenBytes, token_id: int) -> Candidate | None:
    """What a token means across vocabularies (None: it cannot be a candidate)."""
    if token_id in view.eos_ids:
        return EOS
    data = view.bytes_of(token_id)
    if data:
        return data
    content = special_content(view, token_id)
    return ("special", content) if content is not None else None


def build_union(proposals: Sequence[Proposal]) -> list[Candidate]:
    """All models' top-k candidates, without repeats, in first-seen order."""
    seen: dict[Candidate, None] = {}
    for proposal in proposals:
        for token_id in proposal.top_ids:
            key = candidate_key(proposal.view, token_id)
            if key is not None:
                seen.setdefault(key, None)
    return list(seen)


def token_for(view: TokenBytes, candidate: Candidate, emitting: bool = False) -> int | None:
    """The id through which ``view``'s model scores (or, ``emitting``, writes) a candidate.

    Scoring skips a bare-space first piece (rule 3); emitting never does, or the primary would
    write a word without its space.
    """
    if candidate is EOS:
        return view.eos_id
    if isinstance(candidate, bytes):
        return view.first_piece(candidate, skip_bare_space=not emitting)
    if isinstance(candidate, tuple):
        return special_id(view, str(candidate[1]))
    return None


def primary_ids(view: TokenBytes, union: Sequence[Candidate]) -> list[int | None]:
    """For each candidate, the primary id that writes its start (its whole text or first piece)."""
    return [token_for(view, candidate, emitting=True) for candidate in union]


@dataclass(frozen=True)
class Aligned:
    """One model's probability for each union candidate, and the token that gave it.

    ``sources[c]`` is the model's token id whose probability ``probs[c]`` is (``"eos"`` for the
    summed end-of-sequence ids, None if the model cannot write the candidate): when several
    candidates fall on one primary id, a model's token is counted once, not once per candidate.
    """

    probs: list[float]
    sources: list[Hashable]


@dataclass(frozen=True)
class Lookups:
    """What `aligned_probabilities` needs beyond a model's top-k: ids to read probabilities of.

    Built per row and model; the caller gathers ``ids`` for all rows of a model at once
    (one gather, one device-to-host copy) and hands the values to `aligned_from`.
    """

    from_top_k: dict[Candidate, tuple[int, float]]
    positions: list[int]
    ids: list[int]
    eos_positions: list[int]


def plan_lookups(proposal: Proposal, union: Sequence[Candidate]) -> Lookups:
    """Which of the model's token probabilities the union needs, beyond its top-k."""
    from_top_k: dict[Candidate, tuple[int, float]] = {}
    for token_id, prob in zip(proposal.top_ids, proposal.top_probs):
        key = candidate_key(proposal.view, token_id)
        if key is not None and key is not EOS and prob > from_top_k.get(key, (0, -1.0))[1]:
            from_top_k[key] = (token_id, prob)
    positions: list[int] = []
    ids: list[int] = []
    eos_positions: list[int] = []
    for position, candidate in enumerate(union):
        if candidate in from_top_k:
            continue
        if candidate is EOS:
            eos_positions.append(position)
            continue
        piece = token_for(proposal.view, candidate)
        if piece is not None:
            positions.append(position)
            ids.append(piece)
    if eos_positions:
        ids.extend(sorted(proposal.view.eos_ids))
    return Lookups(from_top_k, positions, ids, eos_positions)


def aligned_from(lookups: Lookups, union: Sequence[Candidate], values: Sequence[float]) -> Aligned:
    """The model's probability for each union candidate, given the probabilities of ``lookups.ids``."""
    probs = [0.0] * len(union)
    sources: list[Hashable] = [None] * len(union)
    for position, candidate in enumerate(union):
        if candidate in lookups.from_top_k:
            sources[position], probs[position] = lookups.from_top_k[candidate]
    for position, token_id, value in zip(lookups.positions, lookups.ids, values):
        sources[position], probs[position] = token_id, value
    eos_total = sum(values[len(lookups.positions) : len(lookups.ids)])
    for position in lookups.eos_positions:
        sources[position], probs[position] = "eos", eos_total
    return Aligned(probs, sources)


def gather_probabilities(logprobs: torch.Tensor, ids: Sequence[Sequence[int]]) -> list[list[float]]:
    """``exp(logprobs[r, ids[r]])`` for every row ``r`` in one gather (0 past the vocabulary).

    Args:
        logprobs: ``(rows, vocab)`` log-probabilities (any device).
        ids: per row, the ids to read (ragged).
    """
    width = max((len(row) for row in ids), default=0)
    if width == 0:
        return [[] for _ in ids]
    size = logprobs.shape[-1]
    index = torch.zeros(len(ids), width, dtype=torch.long)
    for row, row_ids in enumerate(ids):
        index[row, : len(row_ids)] = torch.as_tensor(list(row_ids), dtype=torch.long)
    index = index.to(logprobs.device)
    values = torch.where(index < size, logprobs.gather(1, index.clamp(max=size - 1)).exp(), 0.0).tolist()
    return [values[row][: len(row_ids)] for row, row_ids in enumerate(ids)]


def aligned_probabilities(proposal: Proposal, union: Sequence[Candidate]) -> Aligned:
    """The model's probability for each union candidate (rules in the module docstring).

    One row at a time, reading ``proposal.logprobs``; the processor batches the same steps
    (`plan_lookups`, `gather_probabilities`, `aligned_from`) over all rows of a model.
    """
    if proposal.logprobs is None:
        raise ValueError("this proposal carries no log-probabilities to look candidates up in")
    lookups = plan_lookups(proposal, union)
    values = gather_probabilities(proposal.logprobs.reshape(1, -1), [lookups.ids])[0]
    return aligned_from(lookups, union, values)
