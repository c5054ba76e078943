"""unite-logits: union top-k ensembling of language models with different tokenizers.

Use `UniTEProcessor` as a logits processor of the primary model's ``generate``;
each auxiliary is a `Member` with its own tokenizer.
"""

from .api import Ensemble, generate
from .models.loading import load_model
from .member import Member
from .processor import UniTEProcessor
from .token_bytes import TokenBytes, token_bytes_view
from .trace import StepRecord

__all__ = [
    "Ensemble",
    "Member",
    "StepRecord",
    "TokenBytes",
    "UniTEProcessor",
    "generate",
    "load_model",
    "token_bytes_view",
]
__version__ = "0.1.0"
