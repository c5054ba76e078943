"""What defines an evaluation run, so that a results folder is only ever resumed by the same run.

A run is its task, the task's documents (every document, as lm-eval builds them: a changed
data file or a changed prompt template is a different run), each system's models and their
weights digests, the ensemble's weights and ``top_k``, and the settings that change requests
(few-shot count, chat template). The number of documents evaluated (``--limit``) is not part
of it, so a run can grow. Cost: a member without a known digest has its parameters hashed
once (about a second per GB).

One system's answers depend on less than the whole run: `answers_identity` is what another
folder's answers must match to be reused (``unite-logits eval --reuse``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from unite_logits.models.loading import LoadedModel

__all__ = ["answers_identity", "model_digest", "run_identity"]


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


def run_identity(*, task: str, docs_sha256: str, systems: Sequence[tuple[str, Sequence[LoadedModel]]],
                 weights: Sequence[float] | None, top_k: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a results folder records on its first run and checks on every resume."""
    return {
        "task": task,
        "docs_sha256": docs_sha256,
        "systems": [{"name": name, "models": [{"name": m.name, "digest": model_digest(m)} for m in models]}
                    for name, models in systems],
        "weights": list(weights) if weights is not None else None,
        "top_k": top_k,
        **settings,
    }


def answers_identity(identity: Mapping[str, Any], system: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the answers of ``system`` (one entry of ``identity["systems"]``).

    The task, its documents and the request settings, the system's models, and for an ensemble
    its ``weights`` and ``top_k``; a model alone scores as itself whatever the ensemble's weights
    and ``top_k`` are, so they are left out for it, as is the system's name (a label).
    """
    key = {k: v for k, v in identity.items() if k not in ("systems", "weights", "top_k")}
    key["models"] = system["models"]
    if len(system["models"]) > 1:
        key.update(weights=identity.get("weights"), top_k=identity.get("top_k"))
    return key
