"""The compatibility report ("determine" half of UniTE), one job per module:
``measure`` (per candidate and pair), ``judge`` (the verdict rules), ``render``
(the report as JSON/Markdown), ``plot`` (the optional heatmap) and ``run`` (`select`).
"""

from unite_logits.evaluation.selection.judge import PairReport, Thresholds, choose_set, judge_pair
from unite_logits.evaluation.selection.measure import (
    CandidateProfile,
    answer_style,
    probe_contexts,
    profile_candidates,
    token_texts,
    top_k_agreement,
    top_k_texts,
    vocabulary_overlap,
)
from unite_logits.evaluation.selection.render import SelectReport
from unite_logits.evaluation.selection.run import select

__all__ = [
    "Thresholds",
    "CandidateProfile",
    "PairReport",
    "SelectReport",
    "answer_style",
    "token_texts",
    "vocabulary_overlap",
    "top_k_texts",
    "top_k_agreement",
    "profile_candidates",
    "probe_contexts",
    "judge_pair",
    "choose_set",
    "select",
]
