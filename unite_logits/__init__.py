"""unite-logits: union top-k ensembling of language models with different tokenizers.

Use `UniTEProcessor` as a logits processor of the primary model's ``generate``; each
auxiliary is a `Member` (or a `RemoteMember`, served) with its own tokenizer. `Ensemble`
loads models by name and generates, streams, chats and serves through one path.

The names below are imported on first use, so that ``import unite_logits`` (and
``unite-logits --help``) does not pay for torch and transformers.

Layers (see docs/architecture.md): ``core`` (the ensembling core), ``processor`` (the
transformers integration), ``ensemble`` (the library front), ``apps`` (command line, chat,
server), ``models`` (provisioning), ``remote`` (served members and a served primary,
`ServedCausalLM`), ``evaluation``, ``lm_eval`` (the lm-evaluation-harness model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.errors import MemberError, NonFiniteScoresError
    from .core.member import Member
    from .core.scoring import ScoreRequest, TokenScores
    from .core.token_bytes import TokenBytes, token_bytes_view
    from .core.trace import StepRecord
    from .ensemble.ensemble import Ensemble, generate
    from .ensemble.options import GenerationOptions
    from .ensemble.streaming import GenerationResult, Piece
    from .models.loading import LoadedModel, load_model
    from .processor import UniTEProcessor
    from .remote import RemoteMember, RemoteMemberError, ServedCausalLM

_HOMES = {
    "Ensemble": ".ensemble.ensemble",
    "generate": ".ensemble.ensemble",
    "GenerationOptions": ".ensemble.options",
    "GenerationResult": ".ensemble.streaming",
    "Piece": ".ensemble.streaming",
    "LoadedModel": ".models.loading",
    "load_model": ".models.loading",
    "Member": ".core.member",
    "MemberError": ".core.errors",
    "NonFiniteScoresError": ".core.errors",
    "UniTEProcessor": ".processor",
    "draft_and_verify": ".speculative",
    "SpeculationStats": ".core.speculation",
    "RemoteMember": ".remote",
    "RemoteMemberError": ".remote",
    "ServedCausalLM": ".remote",
    "TokenBytes": ".core.token_bytes",
    "token_bytes_view": ".core.token_bytes",
    "StepRecord": ".core.trace",
    "ScoreRequest": ".core.scoring",
    "TokenScores": ".core.scoring",
}

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
