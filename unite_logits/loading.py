"""Kept so that ``from unite_logits.loading import load_model`` goes on working.

The code lives in `unite_logits.models.loading`.
"""

from .models.loading import (
    LoadedModel,
    ModelSource,
    cached_dir,
    eos_token_ids,
    estimate_memory_bytes,
    load_model,
    resolve,
    source_for_entry,
)

__all__ = [
    "ModelSource",
    "LoadedModel",
    "resolve",
    "load_model",
    "estimate_memory_bytes",
    "cached_dir",
    "source_for_entry",
    "eos_token_ids",
]
