"""What defines an evaluation run, so that a results folder is only ever resumed by the same run.

A run is its task, the task's documents (every document, as lm-eval builds them: a changed
data file or a changed prompt template is a different run), each system's models and their
weights digests, each ensemble's `EnsembleSpec` settings, and the settings that change requests
(few-shot count, chat template). The number of documents evaluated (``--limit``) is not part
of it, so a run can grow. Cost: a member without a known digest has its parameters hashed
once (about a second per GB).

One system's answers depend on less than the whole run: `answers_identity` is what another
folder's answers must match to be reused (``unite-logits eval --reuse``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from unite_logits.models.loading import LoadedModel

if TYPE_CHECKING:
    from unite_logits.ensemble.spec import EnsembleSpec

__all__ = ["System", "answers_identity", "model_digest", "run_identity"]


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


System = tuple[str, Sequence[LoadedModel], "EnsembleSpec | None"]
"""One system of a run: its name, its models, and for an ensemble its spec (None: a model alone)."""


def run_identity(*, task: str, docs_sha256: str, systems: Sequence[System], settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a results folder records on its first run and checks on every resume.

    Each ensemble's settings (`EnsembleSpec.settings`: weights, ``top_k``, and the combine rule
    and gate where not the defaults) are part of it, whole. A run of one ensemble (``eval``)
    keeps them at the top level, as folders have since the first version (so they resume and
    lend their answers); a run of several (``select``'s search) keeps them with each system.
    """
    ensembles = [spec for _, _, spec in systems if spec is not None]
    identity: dict[str, Any] = {
        "task": task,
        "docs_sha256": docs_sha256,
        "systems": [{"name": name, "models": [{"name": m.name, "digest": model_digest(m)} for m in models]}
                    for name, models, _ in systems],
    }
    if len(ensembles) == 1:
        identity.update(ensembles[0].settings())
    else:
        identity.update(weights=None, top_k=ensembles[0].top_k if ensembles else None)
        for entry, (_, _, spec) in zip(identity["systems"], systems):
            if spec is not None:
                entry["ensemble"] = spec.settings()
    identity.update(settings)
    return identity


def answers_identity(identity: Mapping[str, Any], system: Mapping[str, Any]) -> dict[str, Any]:
    """What fixes the answers of ``system`` (one entry of ``identity["systems"]``).

    The task, its documents and the request settings, the system's models, and for an ensemble
    its settings whole (weights, ``top_k``, combine rule, gate); a model alone scores as itself
    whatever an ensemble's settings are, so they are left out for it, as is the system's name.
    """
    key = {k: v for k, v in identity.items() if k not in ("systems", *_ENSEMBLE_KEYS)}
    key["models"] = system["models"]
    if len(system["models"]) > 1:
        key["ensemble"] = system.get("ensemble") or {k: identity[k] for k in _ENSEMBLE_KEYS if k in identity}
    return key


_ENSEMBLE_KEYS = ("weights", "top_k", "combine", "confidence_gate")
