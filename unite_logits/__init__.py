"""unite-logits: union top-k ensembling of language models with different tokenizers.

Use `UniTEProcessor` as a logits processor of the primary model's ``generate``;
each auxiliary is a `Member` with its own tokenizer.

The names below are imported on first use, so that ``import unite_logits.cli`` (and
``unite-logits --help``) does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Ensemble, generate
    from .member import Member
    from .models.loading import load_model
    from .processor import UniTEProcessor
    from .remote import RemoteMember, RemoteMemberError
    from .token_bytes import TokenBytes, token_bytes_view
    from .trace import StepRecord

_HOMES = {
    "Ensemble": ".api",
    "generate": ".api",
    "load_model": ".models.loading",
    "Member": ".member",
    "UniTEProcessor": ".processor",
    "RemoteMember": ".remote",
    "RemoteMemberError": ".remote",
    "TokenBytes": ".token_bytes",
    "token_bytes_view": ".token_bytes",
    "StepRecord": ".trace",
}

__all__ = [
    "Ensemble",
    "Member",
    "RemoteMember",
    "RemoteMemberError",
    "StepRecord",
    "TokenBytes",
    "UniTEProcessor",
    "generate",
    "load_model",
    "token_bytes_view",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
