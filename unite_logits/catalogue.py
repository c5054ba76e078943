"""Kept so that ``unite_logits.catalogue`` goes on working; the code lives in `unite_logits.models.catalogue`."""

from .models.catalogue import *  # noqa: F403
from .models.catalogue import __all__  # noqa: F401
