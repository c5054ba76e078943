"""What defines an evaluation run, so that a results folder is only ever resumed by the same run.

A run is its task and mode, the data (every item's id, prompt and gold answer: a different
data file, or a changed prompt format, is a different run), each member's name and weights
digest, the ensemble's weights and ``top_k``, and the generation budget. Cost: hashing the
items is negligible; a member without a known digest has its parameters hashed once
(about a second per GB).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from unite_logits.evaluation.tasks import TaskData
from unite_logits.models.loading import LoadedModel

__all__ = ["data_digest", "model_digest", "run_identity"]


def data_digest(data: TaskData) -> str:
    """sha256 over every item (id, prompt, gold, letters) and skipped row, in order."""
    payload = [[item.id, item.prompt, item.gold, list(item.letters)] for item in data.items]
    payload += [[row.id, row.reason] for row in data.skipped]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, default=str).encode()).hexdigest()


@torch.no_grad()
def model_digest(member: LoadedModel) -> str:
    """The member's known digest (`load_model` sets it), else a hash of its parameters (kept)."""
    if member.digest is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(member.model.state_dict().items()):
            digest.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        member.digest = "params:" + digest.hexdigest()
    return member.digest


def run_identity(
    *,
    task: str,
    mode: str,
    data: TaskData,
    members: Sequence[LoadedModel],
    weights: Sequence[float] | None,
    ensemble: bool,
    top_k: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """The settings a results folder records on its first run and checks on every resume."""
    return {
        "task": task,
        "mode": mode,
        "data_sha256": data.digest,
        "members": [{"name": m.name, "digest": model_digest(m)} for m in members],
        "ensemble": ensemble,
        "weights": list(weights) if ensemble and weights is not None else None,
        "top_k": top_k,
        "max_new_tokens": max_new_tokens,
    }
