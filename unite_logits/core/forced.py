"""Next-token log-probabilities at many points of many texts, in one forward pass per model.

Scoring a text asks each model for its distribution after every prefix of it. For the
primary the prefixes are prefixes of one token sequence, so one causal forward pass over the
sequence gives them all. An auxiliary, though, reads each prefix with *its own* tokenization
of that prefix, and the tokenization of a prefix is not always a prefix of the tokenization of
the whole (" muff" is ``▁muff``, " muffins" is one token ``▁muffins``). A `ForcedText` holds:

* ``trunk``: the ids of the whole (the longest reading);
* ``branches``: for each prefix whose ids leave the trunk, the ids after the point where they
  leave it (usually one or two tokens), placed after ``trunk[:start]``;
* ``queries``: where each wanted distribution is read: after a trunk token, or after the last
  token of a branch.

`forced_logprobs` packs several texts, their trunks and their branches, into ONE row of one
forward pass: a 4-D attention mask lets each token see exactly its own prefix (its text's
trunk up to its branch's start, its own branch, the sliding window where a layer has one), and
``position_ids`` give every token its position in its own reading. So each model costs about one
forward pass per batch of texts, whatever their branches, and logits are computed only at the
query points (``logits_to_keep``), never for the whole vocabulary at every position.

Supported: the models `RaggedKVCache` supports (full and sliding-window attention, ``sdpa`` or
``eager``), for the same reason: they take a prepared 4-D mask and ``position_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from transformers import PreTrainedModel

from .ragged_cache import layer_windows, check_supported
from .reading import ReadTree

__all__ = ["ForcedText", "forced_logprobs", "MAX_PACKED_TOKENS"]

MAX_PACKED_TOKENS = 2048
"""Tokens packed into one forward pass at most (the mask is this squared); a longer text runs alone."""


class ForcedText(ReadTree):
    """One text as one model reads it from its start: a `ReadTree` that holds nothing (``base``
    0); ask for each wanted distribution with `ReadTree.add_reading`."""

    def __init__(self, trunk: Sequence[int]) -> None:
        super().__init__(0, list(trunk))


def _layout(texts: Sequence[ForcedText]) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Per packed token: its id, text, position and branch (-1: trunk); and per query, its
    index in the packed row."""
    ids: list[int] = []
    text_of: list[int] = []
    position: list[int] = []
    branch_of: list[int] = []
    queries: list[int] = []
    for number, text in enumerate(texts):
        base = len(ids)
        ids += text.trunk
        text_of += [number] * len(text.trunk)
        position += list(range(len(text.trunk)))
        branch_of += [-1] * len(text.trunk)
        starts = []
        for index, (start, branch) in enumerate(text.branches):
            starts.append(len(ids))
            ids += branch
            text_of += [number] * len(branch)
            position += list(range(start, start + len(branch)))
            branch_of += [index] * len(branch)
        queries += [base + j if b < 0 else starts[b] + j for b, j in text.queries]
    return ids, text_of, position, branch_of, queries


def _visibility(texts: Sequence[ForcedText], text_of: torch.Tensor, position: torch.Tensor,
                branch_of: torch.Tensor) -> torch.Tensor:
    """(L, L) bool: token q sees token k of its own text when k is at or before q and either
    both lie on the trunk, k is on the trunk before q's branch starts, or both are on q's branch."""
    starts = torch.tensor([start for text in texts for start, _ in text.branches] or [0], dtype=torch.long)
    offsets = torch.tensor([0] + [len(text.branches) for text in texts[:-1]], dtype=torch.long).cumsum(0)
    flat_branch = torch.where(branch_of >= 0, branch_of + offsets[text_of], -1)
    branch_start = torch.where(flat_branch >= 0, starts[flat_branch.clamp(min=0)], position + 1)
    same_text = text_of[:, None] == text_of[None, :]
    causal = position[None, :] <= position[:, None]
    key_on_trunk = flat_branch[None, :] < 0
    before_branch = position[None, :] < branch_start[:, None]
    same_branch = (flat_branch[None, :] == flat_branch[:, None]) & (flat_branch[:, None] >= 0)
    return same_text & causal & ((key_on_trunk & before_branch) | same_branch)


def _mask(model: PreTrainedModel, visible: torch.Tensor, position: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4-D mask argument: one for full attention, one per sliding window (as `RaggedKVCache`)."""
    masks: dict[int | None, torch.Tensor] = {}
    for window in set(layer_windows(model)):
        allowed = visible
        if window is not None:
            allowed = visible & (position[None, :] > position[:, None] - window)
        mask = allowed[None, None, :, :]
        if model.config._attn_implementation == "eager":
            dtype = model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        masks[window] = mask
    if len(masks) == 1:
        return next(iter(masks.values()))
    sliding = [mask for window, mask in masks.items() if window is not None]
    return {"full_attention": masks[None], "sliding_attention": sliding[0]}


@torch.no_grad()
def forced_logprobs(model: PreTrainedModel, texts: Sequence[ForcedText], vocab_size: int) -> list[torch.Tensor]:
    """For each text, ``(len(text.queries), vocab_size)`` float32 log-probabilities at its queries.

    Texts are packed into forward passes of at most `MAX_PACKED_TOKENS` tokens (a longer one
    runs alone); each pass computes logits at its query points only. Ids at or past
    ``vocab_size`` (padding rows of the output) are left out.
    """
    check_supported(model)
    device = next(model.parameters()).device
    results: list[torch.Tensor] = []
    group: list[ForcedText] = []
    for text in texts:
        if group and sum(t.tokens for t in group) + text.tokens > MAX_PACKED_TOKENS:
            results += _run(model, group, vocab_size, device)
            group = []
        group.append(text)
    if group:
        results += _run(model, group, vocab_size, device)
    return results


def _run(model: PreTrainedModel, texts: Sequence[ForcedText], vocab_size: int, device: torch.device) -> list[torch.Tensor]:
    ids, text_of, position, branch_of, queries = _layout(texts)
    positions = torch.tensor(position, dtype=torch.long)
    visible = _visibility(texts, torch.tensor(text_of), positions, torch.tensor(branch_of))
    outputs = model(
        input_ids=torch.tensor([ids], device=device),
        attention_mask=_mask(model, visible.to(device), positions.to(device)),
        position_ids=positions[None, :].to(device),
        use_cache=False,
        logits_to_keep=torch.tensor(queries, dtype=torch.long, device=device),
    )
    logprobs = torch.log_softmax(outputs.logits[0, :, :vocab_size].float(), dim=-1)
    sizes = [len(text.queries) for text in texts]
    return list(torch.split(logprobs, sizes))
