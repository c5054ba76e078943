"""One KV cache per auxiliary for every row of a batch, each row with its own length.

The rows of an auxiliary are ragged: each has its own length, now and then one drops its
last few tokens (its tail was re-tokenized), and in one step a row may feed one token, a
few, or none. `RaggedKVCache` runs them all in ONE forward pass per step:

* Every forward appends ``T`` *columns* to every row (``T``: the most tokens any row feeds
  this step). A column holds, per row, either one of its tokens (its logical position,
  ``>= 0``) or nothing (``-1``, a hole): the padding of a row that fed fewer than ``T``
  tokens, or tokens dropped by a rollback.
* The cache owns the attention mask: a query of row ``b`` at position ``p`` sees column
  ``c`` iff ``0 <= pos[b, c] <= p`` (and ``pos[b, c] > p - window`` on sliding-window
  layers). Positions go to the model as ``position_ids``, so holes never shift a row.
  A padding query sees only itself (it stays finite and nobody reads it).
* Dropping tokens is marking their columns as holes: no tensor is copied.
* Sliding-window layers keep, per row, only its last ``window - 1 + margin`` positions
  (older ones become holes), so dropping up to ``margin`` tokens is always exact and the
  layers stay window-sized whatever the length of the text. Holes are compacted away once
  they are more than half of a group's columns (one gather per layer, amortised).
* Rows are reordered, duplicated (beams that split) and removed (finished rows) by one
  gather along the batch axis (`select_rows`).

Cost per step: one forward pass over ``(rows, T)`` tokens and an O(rows x columns) boolean
mask; nothing per step grows with the number of rows in Python.

Supported: decoder-only models whose layers are full attention or sliding-window
attention (``config.layer_types``), with the ``sdpa`` or ``eager`` attention
implementation, that accept ``position_ids`` and a prepared 4-D mask (Llama, GPT-2,
Qwen2, Gemma 3, Mistral, ... ). Anything else is refused at construction.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .reading import ReadTree, tree_visibility

__all__ = ["DEFAULT_MARGIN", "RaggedKVCache", "UnsupportedModelError"]

DEFAULT_MARGIN = 64
"""Positions kept past a sliding window: drops up to this many tokens are always exact."""

_ATTENTION = ("sdpa", "eager")


class UnsupportedModelError(TypeError):
    """The model's cache layers or attention cannot be driven with a prepared mask."""


@dataclass
class _Group:
    """Columns shared by the layers of one kind (full attention, or one sliding window)."""

    layers: list[int]
    window: int | None
    pos: torch.Tensor  # (rows, columns) logical position per column, -1 = hole

    @property
    def columns(self) -> int:
        return int(self.pos.shape[1])


def layer_windows(model: PreTrainedModel) -> list[int | None]:
    """The sliding window of each layer (None: full attention), from the model's config."""
    config = model.config.get_text_config()
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        uses_window = window is not None and getattr(config, "use_sliding_window", True) is not False
        return [int(window) if window is not None and uses_window else None] * layers
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise UnsupportedModelError(
            f"{type(model).__name__} has layers of kind {unknown}; batched auxiliaries support "
            "full-attention and sliding-window layers only"
        )
    if window is None and "sliding_attention" in types:
        raise UnsupportedModelError(f"{type(model).__name__} has sliding-window layers but no `sliding_window`")
    return [int(window) if kind == "sliding_attention" and window is not None else None for kind in types]


class RaggedKVCache:
    """The KV cache and per-row positions of one auxiliary over all rows of a generation.

    Args:
        model: the auxiliary causal LM (left in eval mode, never modified).
        rows: how many rows the batch starts with (all empty).
        vocab_size: ids at or past this (padding rows of the embedding) never count.
        margin: positions kept past a sliding window (see the module docstring).
    """

    def __init__(self, model: PreTrainedModel, rows: int, vocab_size: int, margin: int = DEFAULT_MARGIN) -> None:
        if margin < 1:
            raise ValueError(f"`margin` has to be a positive integer, but is {margin}")
        check_supported(model)
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = vocab_size
        self.margin = margin
        self._eager = model.config._attn_implementation == "eager"
        self._cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        windows = layer_windows(model)
        empty = torch.empty(rows, 0, dtype=torch.long, device=self.device)
        self._groups: dict[int | None, _Group] = {}
        for index, window in enumerate(windows):
            group = self._groups.setdefault(window, _Group([], window, empty.clone()))
            group.layers.append(index)
        self._cache = DynamicCache()
        self.lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.forward_passes = 0

    # -- rows ---------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` in that order (repeats duplicate a row): one gather per layer."""
        index = index.to(self.device)
        self.lengths = self.lengths.index_select(0, index)
        for group in self._groups.values():
            group.pos = group.pos.index_select(0, index)
        for layer, keys, values in self._stored_layers(range(len(self._cache.layers))):
            layer.keys, layer.values = keys.index_select(0, index), values.index_select(0, index)

    def can_drop(self, row: int, tokens: int) -> bool:
        """Whether dropping the last ``tokens`` of ``row`` keeps what the next step attends to.

        Full-attention layers always can; a sliding-window layer can while it still holds
        the window that ends at the new length. Cost: O(columns) for that row.
        """
        length = int(self.lengths[row])
        if tokens > length:
            return False
        kept = length - tokens
        for group in self._groups.values():
            if group.window is None:
                continue
            start = max(0, kept - (group.window - 1))
            pos = group.pos[row]
            held = int(((pos >= start) & (pos < kept)).sum())
            if held != kept - start:
                return False
        return True

    def drop(self, row: int, tokens: int) -> None:
        """Forget the last ``tokens`` of ``row`` (their columns become holes; nothing is copied)."""
        if tokens <= 0:
            return
        if not self.can_drop(row, tokens):
            raise ValueError(f"cannot drop {tokens} tokens of row {row} exactly; clear the row and refill it")
        kept = int(self.lengths[row]) - tokens
        for group in self._groups.values():
            pos = group.pos[row]
            pos.masked_fill_(pos >= kept, -1)
        self.lengths[row] = kept

    def clear(self, row: int) -> None:
        """Forget everything ``row`` holds (before a refill from its ids)."""
        for group in self._groups.values():
            group.pos[row].fill_(-1)
        self.lengths[row] = 0

    # -- the forward pass -----------------------------------------------------------------
    @torch.no_grad()
    def feed(self, chunks: Sequence[Sequence[int]], raw: bool = False) -> torch.Tensor:
        """Append ``chunks[b]`` to row ``b`` (may be empty) in one forward pass.

        Returns:
            ``(rows, vocab_size)`` float32 next-token log-probabilities (``raw``: logits) after
            each row's last fed token; rows that fed nothing get a row of zeros.
        """
        if len(chunks) != self.rows:
            raise ValueError(f"got {len(chunks)} chunks for {self.rows} rows")
        trees = [ReadTree(int(self.lengths[row]), list(chunk), queries=[(-1, len(chunk) - 1)]) if len(chunk) else None
                 for row, chunk in enumerate(chunks)]
        read = self.read(trees, raw=raw)
        out = torch.zeros(self.rows, self.vocab_size, dtype=torch.float32, device=self.device)
        fed = [row for row, values in enumerate(read) if values is not None]
        if fed:
            out[fed] = torch.cat([read[row] for row in fed])  # type: ignore[misc]
        return out

    @torch.no_grad()
    def read(self, trees: Sequence[ReadTree | None], raw: bool = False) -> list[torch.Tensor | None]:
        """Feed every row's tree (`unite_logits.core.reading`) in ONE forward pass.

        Row ``b`` first drops what it holds past ``trees[b].base`` (the caller checked
        `can_drop`); its trunk is kept, its branches are read and forgotten (their columns
        become holes). None: the row feeds nothing.

        Returns:
            per row, ``(len(queries), vocab_size)`` float32 log-probabilities (``raw``: logits)
            at its queries; None for a row without a tree. Cost: one forward pass over
            ``(rows, T)`` tokens, ``T`` the most tokens a row feeds; logits only from the
            earliest query column on.
        """
        if len(trees) != self.rows:
            raise ValueError(f"got {len(trees)} trees for {self.rows} rows")
        width = max((tree.tokens for tree in trees if tree is not None), default=0)
        if width == 0:
            raise ValueError("no row has tokens to feed")
        for row, tree in enumerate(trees):
            if tree is not None:
                self.drop(row, int(self.lengths[row]) - tree.base)
        ids = torch.zeros(self.rows, width, dtype=torch.long)
        new_pos = torch.full((self.rows, width), -1, dtype=torch.long)
        branch = torch.full((self.rows, width), -1, dtype=torch.long)
        start = torch.zeros(self.rows, width, dtype=torch.long)
        query_columns: list[list[int]] = []
        for row, tree in enumerate(trees):
            query_columns.append(self._place(row, tree, width, ids, new_pos, branch, start) if tree is not None else [])
        ids, new_pos = ids.to(self.device), new_pos.to(self.device)
        branch, start = branch.to(self.device), start.to(self.device)
        among_new = tree_visibility(new_pos, branch, start)
        masks = {window: self._mask(group, new_pos, among_new) for window, group in self._groups.items()}
        first = min((column for columns in query_columns for column in columns), default=width - 1)
        outputs = self.model(
            input_ids=ids,
            attention_mask=self._mask_argument(masks),
            position_ids=new_pos.clamp(min=0),
            cache_position=torch.arange(width, device=self.device) + self._full_columns(),
            use_cache=True,
            logits_to_keep=width - first,
            **{self._cache_keyword: self._cache},
        )
        self.forward_passes += 1
        kept = torch.where(branch < 0, new_pos, -1)  # branches are read once, then forgotten
        for group in self._groups.values():
            group.pos = torch.cat([group.pos, kept], dim=1)
        self.lengths += (kept >= 0).sum(dim=1)
        self.maintain()
        logits = outputs.logits[:, :, : self.vocab_size].float()
        results: list[torch.Tensor | None] = []
        for row, columns in enumerate(query_columns):
            if trees[row] is None:
                results.append(None)
                continue
            values = logits[row, [column - first for column in columns]]
            results.append(values if raw else torch.log_softmax(values, dim=-1))
        return results

    @staticmethod
    def _place(row: int, tree: ReadTree, width: int, ids: torch.Tensor, new_pos: torch.Tensor,
               branch: torch.Tensor, start: torch.Tensor) -> list[int]:
        """Lay ``tree`` out at the right end of ``row``: its branches, then its trunk (so a row's
        newest token is the last column); the column of each query."""
        column = width - tree.tokens
        branch_columns = []
        for index, (branch_start, branch_ids) in enumerate(tree.branches):
            end = column + len(branch_ids)
            ids[row, column:end] = torch.as_tensor(branch_ids, dtype=torch.long)
            new_pos[row, column:end] = torch.arange(branch_start, branch_start + len(branch_ids))
            branch[row, column:end] = index
            start[row, column:end] = branch_start
            branch_columns.append(column)
            column = end
        trunk_column = column
        if tree.trunk:
            ids[row, column:] = torch.as_tensor(tree.trunk, dtype=torch.long)
            new_pos[row, column:] = torch.arange(tree.base, tree.base + len(tree.trunk))
        return [trunk_column + index if b < 0 else branch_columns[b] + index for b, index in tree.queries]

    def _full_columns(self) -> int:
        return max(group.columns for group in self._groups.values())

    def _mask(self, group: _Group, new_pos: torch.Tensor, among_new: torch.Tensor) -> torch.Tensor:
        """(rows, 1, T, columns + T): which columns each new token attends to: held columns at or
        before its position, new ones by ``among_new`` (`tree_visibility`), and the window."""
        query = new_pos[:, :, None]
        held = group.pos[:, None, :]
        visible = torch.cat([(held >= 0) & (held <= query), among_new], dim=2)
        if group.window is not None:
            kv = torch.cat([group.pos, new_pos], dim=1)[:, None, :]
            visible &= kv > query - group.window
        width = new_pos.shape[1]
        itself = torch.zeros_like(visible)
        itself[:, torch.arange(width), group.columns + torch.arange(width)] = True
        visible = torch.where(query < 0, itself, visible)
        mask = visible[:, None, :, :]
        if self._eager:
            dtype = self.model.dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        return mask

    def _mask_argument(self, masks: dict[int | None, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        if len(masks) == 1:
            return next(iter(masks.values()))
        full = masks.get(None)
        sliding = [mask for window, mask in masks.items() if window is not None]
        if len(sliding) != 1 or full is None:
            raise UnsupportedModelError("models with several sliding-window sizes are not supported")
        return {"full_attention": full, "sliding_attention": sliding[0]}

    def maintain(self) -> None:
        """Turn positions no row can attend to again into holes, and compact holes."""
        self._trim_sliding()
        self._compact_holes()

    def _trim_sliding(self) -> None:
        """In sliding-window groups, turn the positions no row can attend to again into holes."""
        for group in self._groups.values():
            if group.window is not None:
                oldest_needed = self.lengths - (group.window - 1) - self.margin
                group.pos.masked_fill_(group.pos < oldest_needed[:, None], -1)

    def _compact_holes(self) -> None:
        """Drop leading all-hole columns (a view); once holes are most of a group's columns,
        move each row's tokens to the right end (one gather per layer, amortised)."""
        for group in self._groups.values():
            valid = group.pos >= 0
            used = valid.any(dim=0)
            first = int(used.int().argmax()) if bool(used.any()) else group.columns
            if first >= self.margin:
                self._keep_columns(group, slice(first, None))
                valid = valid[:, first:]
            columns = group.columns
            if columns < 32 or 2 * int(valid.sum()) > valid.numel():
                continue
            keep = int(valid.sum(dim=1).max())
            order = torch.argsort(valid.long() * (columns + 1) + torch.arange(columns, device=self.device), dim=1)
            self._keep_columns(group, order[:, columns - keep :])

    def _keep_columns(self, group: _Group, index: slice | torch.Tensor) -> None:
        if isinstance(index, slice):
            group.pos = group.pos[:, index]
        else:
            group.pos = group.pos.gather(1, index)
        for layer, keys, values in self._stored_layers(group.layers):
            if isinstance(index, slice):
                layer.keys, layer.values = keys[:, :, index, :], values[:, :, index, :]
            else:
                gather = index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
                layer.keys, layer.values = keys.gather(2, gather), values.gather(2, gather)

    def _stored_layers(self, indices: Iterable[int]) -> Iterator[tuple[DynamicLayer, torch.Tensor, torch.Tensor]]:
        """The cache layers among ``indices`` that hold states, with their keys and values."""
        layers = self._cache.layers
        for index in indices:
            layer = layers[index] if index < len(layers) else None
            if isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None:
                yield layer, layer.keys, layer.values


def check_supported(model: PreTrainedModel) -> None:
    """Raise `UnsupportedModelError` unless `RaggedKVCache` can drive ``model`` exactly."""
    implementation = model.config._attn_implementation
    if implementation not in _ATTENTION:
        raise UnsupportedModelError(
            f"{type(model).__name__} uses attn_implementation={implementation!r}; auxiliaries need "
            "'sdpa' or 'eager' (load it with attn_implementation='sdpa')"
        )
    layer_windows(model)
