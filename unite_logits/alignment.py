"""The union of the models' top-k candidates, and each model's probability for every one.

A *candidate* is identified by what it means, never by an id:

* a text token by the bytes it stands for (``b" muffins"``);
* end-of-sequence by its role (`EOS`), whatever each vocabulary calls it;
* a special token of the primary (``<pad>``, a chat marker) by ``("special", id)``: the
  primary may still emit it, but no other model can vote for it.

Special tokens of auxiliaries other than EOS never enter the union: they have no text.

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

import torch

from .token_bytes import TokenBytes

__all__ = ["EOS", "Aligned", "Proposal", "candidate_key", "build_union", "aligned_probabilities", "primary_ids"]


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
        logprobs: log-probabilities over the model's vocabulary (1-D, any device).
        top_ids: ids of its top-k, best first.
        top_probs: their probabilities.
        weight: relative weight of this model.
        is_primary: whether this is the primary model (whose ids are emitted).
    """

    view: TokenBytes
    logprobs: torch.Tensor
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


def candidate_key(view: TokenBytes, token_id: int, is_primary: bool) -> Candidate | None:
    """What a token means across vocabularies (None: it cannot be a candidate)."""
    if token_id in view.eos_ids:
        return EOS
    data = view.bytes_of(token_id)
    if data:
        return data
    return ("special", token_id) if is_primary else None


def build_union(proposals: Sequence[Proposal]) -> list[Candidate]:
    """All models' top-k candidates, without repeats, in first-seen order."""
    seen: dict[Candidate, None] = {}
    for proposal in proposals:
        for token_id in proposal.top_ids:
            key = candidate_key(proposal.view, token_id, proposal.is_primary)
            if key is not None:
                seen.setdefault(key, None)
    return list(seen)


def token_for(view: TokenBytes, candidate: Candidate, is_primary: bool, emitting: bool = False) -> int | None:
    """The id through which ``view``'s model scores (or, ``emitting``, writes) a candidate.

    Scoring skips a bare-space first piece (rule 3); emitting never does, or the primary would
    write a word without its space.
    """
    if candidate is EOS:
        return view.eos_id
    if isinstance(candidate, bytes):
        return view.first_piece(candidate, skip_bare_space=not emitting)
    if is_primary and isinstance(candidate, tuple):
        return int(candidate[1])
    return None


def primary_ids(view: TokenBytes, union: Sequence[Candidate]) -> list[int | None]:
    """For each candidate, the primary id that writes its start (its whole text or first piece)."""
    return [token_for(view, candidate, True, emitting=True) for candidate in union]


@dataclass(frozen=True)
class Aligned:
    """One model's probability for each union candidate, and the token that gave it.

    ``sources[c]`` is the model's token id whose probability ``probs[c]`` is (``"eos"`` for the
    summed end-of-sequence ids, None if the model cannot write the candidate): when several
    candidates fall on one primary id, a model's token is counted once, not once per candidate.
    """

    probs: list[float]
    sources: list[Hashable]


def aligned_probabilities(proposal: Proposal, union: Sequence[Candidate]) -> Aligned:
    """The model's probability for each union candidate (rules in the module docstring)."""
    from_top_k: dict[Candidate, tuple[int, float]] = {}
    for token_id, prob in zip(proposal.top_ids, proposal.top_probs):
        key = candidate_key(proposal.view, token_id, proposal.is_primary)
        if key is not None and key is not EOS and prob > from_top_k.get(key, (0, -1.0))[1]:
            from_top_k[key] = (token_id, prob)
    probs = [0.0] * len(union)
    sources: list[Hashable] = [None] * len(union)
    lookup_positions: list[int] = []
    lookup_ids: list[int] = []
    eos_positions: list[int] = []
    for position, candidate in enumerate(union):
        if candidate in from_top_k:
            sources[position], probs[position] = from_top_k[candidate]
        elif candidate is EOS:
            eos_positions.append(position)
        else:
            piece = token_for(proposal.view, candidate, proposal.is_primary)
            if piece is not None:
                lookup_positions.append(position)
                lookup_ids.append(piece)
    if eos_positions:
        lookup_ids.extend(sorted(proposal.view.eos_ids))
    if lookup_ids:
        size = proposal.logprobs.shape[-1]
        index = torch.tensor(lookup_ids, dtype=torch.long, device=proposal.logprobs.device)
        gathered = torch.where(index < size, proposal.logprobs[index.clamp(max=size - 1)].exp(), 0.0)
        values = gathered.tolist()
        for position, token_id, value in zip(lookup_positions, lookup_ids, values):
            sources[position], probs[position] = token_id, value
        eos_total = sum(values[len(lookup_positions) :])
        for position in eos_positions:
            sources[position], probs[position] = "eos", eos_total
    return Aligned(probs, sources)
