"""Kept so that ``from unite_logits.loading import load_model`` goes on working.

The code lives in `unite_logits.models.loading`.
"""

from .models.loading import *  # noqa: F403
from .models.loading import __all__  # noqa: F401
