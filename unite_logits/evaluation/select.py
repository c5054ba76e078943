"""Compatibility report: the "determine" step of Determine-Then-Ensemble.

For each candidate on a dev slice: accuracy, mean response length, answer style. For
each pair: accuracy gap, length ratio, vocabulary overlap and top-k agreement. The
paper's rules are the default verdict: two models are worth ensembling when their
accuracies are within 10 points and their responses are of comparable length (here:
ratio of mean lengths in characters at most 2x). Overlap and agreement are reported
for judgement and only gate the verdict when a threshold for them is given.

Answer style heuristic (documented because it is one): a response is "step-by-step"
when it has two or more non-empty lines, or more than 30 words, or a reasoning marker
("step", "first", "then", "therefore", "because", "so", or an "=" calculation);
otherwise "direct". A model's style is the majority label of its responses.
"""

from __future__ import annotations

import itertools
import json
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unite_logits.evaluation.runner import EvalMember, as_members, evaluate, load_items
from unite_logits.evaluation.summary import ModeSummary, save_report
from unite_logits.evaluation.tasks import get_task

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
    "judge_pair",
    "choose_set",
    "select",
]

_MARKERS = re.compile(r"\b(step|first|then|therefore|because|so)\b|=", re.IGNORECASE)
_TEXT_CACHE: "weakref.WeakKeyDictionary[Any, list[str | None]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Thresholds:
    """Verdict rules; defaults are the paper's (10-point gap, comparable length)."""

    max_accuracy_gap: float = 0.10
    max_length_ratio: float = 2.0
    min_vocab_overlap: float | None = None
    min_top_k_agreement: float | None = None


@dataclass(frozen=True)
class CandidateProfile:
    name: str
    accuracy: float
    n: int
    mean_chars: float
    mean_words: float
    step_share: float
    style: str


@dataclass
class PairReport:
    a: str
    b: str
    accuracy_gap: float
    length_ratio: float
    vocab_overlap_a_in_b: float | None = None
    vocab_overlap_b_in_a: float | None = None
    top_k_agreement_a_in_b: float | None = None
    top_k_agreement_b_in_a: float | None = None
    compatible: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class SelectReport:
    task: str
    thresholds: Thresholds
    candidates: list[CandidateProfile]
    pairs: list[PairReport]
    best_set: list[str]
    best_set_reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
        lines = [f"### Compatibility on {self.task}\n",
                 "| candidate | n | accuracy | mean chars | mean words | style (step share) |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {c.name} | {c.n} | {pct(c.accuracy)} | {c.mean_chars:.0f} | {c.mean_words:.1f} | "
                  f"{c.style} ({pct(c.step_share)}%) |" for c in self.candidates]
        lines += ["", "| pair | acc. gap (pts) | length ratio | vocab a⊂b / b⊂a (%) | "
                  "top-k agree a→b / b→a (%) | verdict |", "|---|---|---|---|---|---|"]
        for p in self.pairs:
            lines.append(
                f"| {p.a} + {p.b} | {pct(p.accuracy_gap)} | {p.length_ratio:.2f}x | "
                f"{pct(p.vocab_overlap_a_in_b)} / {pct(p.vocab_overlap_b_in_a)} | "
                f"{pct(p.top_k_agreement_a_in_b)} / {pct(p.top_k_agreement_b_in_a)} | "
                f"{'compatible' if p.compatible else 'not compatible'}: {'; '.join(p.reasons)} |"
            )
        lines += ["", f"**Suggested set:** {', '.join(self.best_set)} (primary first)"]
        lines += [f"- {r}" for r in self.best_set_reasons]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``<task>.select.json`` and ``<task>.select.md`` into ``out_dir``."""
        return save_report(out_dir, f"{self.task}.select", self.to_dict(), self.to_markdown())


def answer_style(text: str) -> str:
    """"step-by-step" or "direct" by the heuristic in the module docstring."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 2 or len(text.split()) > 30 or _MARKERS.search(text):
        return "step-by-step"
    return "direct"


def token_texts(tokenizer: Any) -> list[str | None]:
    """Decoded text of every token id (None for special tokens); cached per tokenizer."""
    if tokenizer not in _TEXT_CACHE:
        special = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        _TEXT_CACHE[tokenizer] = [
            None if i in special or t is None else tokenizer.convert_tokens_to_string([t])
            for i, t in enumerate(tokens)
        ]
    return _TEXT_CACHE[tokenizer]


def vocabulary_overlap(tok_a: Any, tok_b: Any) -> float:
    """Share of ``tok_a``'s distinct token texts that are also token texts of ``tok_b``."""
    texts_a = {t for t in token_texts(tok_a) if t}
    texts_b = {t for t in token_texts(tok_b) if t}
    return len(texts_a & texts_b) / len(texts_a) if texts_a else 0.0


def _key(text: str | None) -> str:
    """Comparison key of a token text: stripped, since decoders differ on leading spaces."""
    if text is None:
        return "\0special"
    return text.strip() or text


@torch.inference_mode()
def top_k_texts(model: Any, tokenizer: Any, context: str, k: int) -> list[str]:
    """Comparison keys of the model's k most likely next tokens after ``context``."""
    encoded = tokenizer(context, return_tensors="pt").to(model.device)
    logits = model(**encoded).logits[0, -1, : len(tokenizer)]
    texts = token_texts(tokenizer)
    return [_key(texts[i]) for i in torch.topk(logits, min(k, logits.numel())).indices.tolist()]


def top_k_agreement(a: EvalMember, b: EvalMember, contexts: Sequence[str], k: int = 10) -> tuple[float, float]:
    """(share of contexts where a's top-1 is in b's top-k, and the reverse)."""
    if not contexts:
        return (0.0, 0.0)
    hits_ab = hits_ba = 0
    for context in contexts:
        ta, tb = top_k_texts(a.model, a.tokenizer, context, k), top_k_texts(b.model, b.tokenizer, context, k)
        hits_ab += ta[0] in tb
        hits_ba += tb[0] in ta
    return (hits_ab / len(contexts), hits_ba / len(contexts))


def profile_candidates(records: Sequence[Mapping[str, Any]], summary: ModeSummary) -> list[CandidateProfile]:
    """Accuracy (from the summary) and length/style (from free-generation outputs)."""
    profiles = []
    for system in summary.systems:
        outputs = [str(r["outputs"][system.name]) for r in records]
        n = max(1, len(outputs))
        step = sum(answer_style(o) == "step-by-step" for o in outputs) / n
        profiles.append(CandidateProfile(
            system.name, system.accuracy, system.n,
            sum(len(o) for o in outputs) / n, sum(len(o.split()) for o in outputs) / n,
            step, "step-by-step" if step >= 0.5 else "direct",
        ))
    return profiles


def _length_ratio(a: CandidateProfile, b: CandidateProfile) -> float:
    short, long_ = sorted((a.mean_chars, b.mean_chars))
    if long_ == 0:
        return 1.0
    return float("inf") if short == 0 else long_ / short


def judge_pair(
    a: CandidateProfile,
    b: CandidateProfile,
    t: Thresholds,
    *,
    vocab_overlap_a_in_b: float | None = None,
    vocab_overlap_b_in_a: float | None = None,
    top_k_agreement_a_in_b: float | None = None,
    top_k_agreement_b_in_a: float | None = None,
) -> PairReport:
    """Verdict with one reason per rule (passed or failed); a measure left None is not judged."""
    pair = PairReport(
        a.name, b.name, abs(a.accuracy - b.accuracy), _length_ratio(a, b),
        vocab_overlap_a_in_b, vocab_overlap_b_in_a, top_k_agreement_a_in_b, top_k_agreement_b_in_a,
    )
    checks = [
        (pair.accuracy_gap <= t.max_accuracy_gap + 1e-12,
         f"accuracy gap {100 * pair.accuracy_gap:.1f} pts {'≤' if pair.accuracy_gap <= t.max_accuracy_gap + 1e-12 else '>'} {100 * t.max_accuracy_gap:.0f}"),
        (pair.length_ratio <= t.max_length_ratio,
         f"length ratio {pair.length_ratio:.2f}x {'≤' if pair.length_ratio <= t.max_length_ratio else '>'} {t.max_length_ratio:g}x"),
    ]
    overlaps = [v for v in (pair.vocab_overlap_a_in_b, pair.vocab_overlap_b_in_a) if v is not None]
    if t.min_vocab_overlap is not None and overlaps:
        ok = min(overlaps) >= t.min_vocab_overlap
        checks.append((ok, f"vocabulary overlap {100 * min(overlaps):.1f}% {'≥' if ok else '<'} {100 * t.min_vocab_overlap:.0f}%"))
    agreements = [v for v in (pair.top_k_agreement_a_in_b, pair.top_k_agreement_b_in_a) if v is not None]
    if t.min_top_k_agreement is not None and agreements:
        ok = min(agreements) >= t.min_top_k_agreement
        checks.append((ok, f"top-k agreement {100 * min(agreements):.1f}% {'≥' if ok else '<'} {100 * t.min_top_k_agreement:.0f}%"))
    pair.compatible = all(ok for ok, _ in checks)
    pair.reasons = [reason for _, reason in checks]
    return pair


def choose_set(profiles: Sequence[CandidateProfile], pairs: Sequence[PairReport]) -> tuple[list[str], list[str]]:
    """Best model as primary, then each next-best candidate compatible with all chosen."""
    by_pair = {frozenset((p.a, p.b)): p for p in pairs}
    ranked = sorted(profiles, key=lambda c: -c.accuracy)
    chosen, reasons = [ranked[0].name], [f"{ranked[0].name}: primary (highest accuracy, {100 * ranked[0].accuracy:.1f})"]
    for cand in ranked[1:]:
        clashes = [by_pair[frozenset((cand.name, c))] for c in chosen if not by_pair[frozenset((cand.name, c))].compatible]
        if clashes:
            why = "; ".join(f"with {p.a if p.b == cand.name else p.b}: " + ", ".join(
                r for r in p.reasons if ">" in r or "<" in r) for p in clashes)
            reasons.append(f"{cand.name}: left out ({why})")
        else:
            chosen.append(cand.name)
            reasons.append(f"{cand.name}: added (compatible with {', '.join(chosen[:-1])})")
    return chosen, reasons


def _contexts(prompts: Sequence[str], outputs: Sequence[Sequence[str]]) -> list[str]:
    """Each prompt, and the prompt extended by the first half of each candidate's answer."""
    contexts = []
    for prompt, outs in zip(prompts, outputs):
        contexts.append(prompt)
        for out in outs:
            half = out[: len(out) // 2]
            cut = half.rfind(" ")
            if cut > 0:
                contexts.append(prompt + half[:cut])
    return list(dict.fromkeys(contexts))


def _heatmap(report: SelectReport, out_dir: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("heatmap skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    names = [c.name for c in report.candidates]
    grid = [[1.0 if a == b else 0.0 for b in names] for a in names]
    for p in report.pairs:
        i, j = names.index(p.a), names.index(p.b)
        grid[i][j], grid[j][i] = p.top_k_agreement_a_in_b or 0.0, p.top_k_agreement_b_in_a or 0.0
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("top-1 of row in top-k of column")
    fig.colorbar(image)
    fig.tight_layout()
    path = Path(out_dir) / f"{report.task}.select.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def select(
    task: str,
    candidates: Sequence[Any],
    *,
    limit: int | None = 50,
    out_dir: str | Path = "select-results",
    data_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    thresholds: Thresholds = Thresholds(),
    top_k: int = 10,
    max_new_tokens: int | None = None,
    heatmap: bool = True,
    progress: bool = True,
) -> SelectReport:
    """Profile candidates on a dev slice (free generation, resumable) and judge every pair."""
    members = as_members(candidates)
    task_obj = get_task(task)
    data = load_items(task_obj, data_dir, data_path, limit)
    out = Path(out_dir)
    summary = evaluate(task_obj, members, out_dir=out, mode="free", ensemble=False, items=data,
                       max_new_tokens=max_new_tokens, progress=progress)
    records = [json.loads(line) for line in (out / f"{task_obj.name}.free.jsonl").read_text().splitlines()]
    wanted = {item.id for item in data.items}
    records = [r for r in records if r["id"] in wanted]
    profiles = profile_candidates(records, summary.modes["free"])
    by_name = {p.name: p for p in profiles}
    prompts = {item.id: item.prompt for item in data.items}
    contexts = _contexts([prompts[r["id"]] for r in records],
                         [[str(r["outputs"][m.name]) for m in members] for r in records])
    pairs = []
    for a, b in itertools.combinations(members, 2):
        agree_ab, agree_ba = top_k_agreement(a, b, contexts, top_k)
        pairs.append(judge_pair(
            by_name[a.name], by_name[b.name], thresholds,
            vocab_overlap_a_in_b=vocabulary_overlap(a.tokenizer, b.tokenizer),
            vocab_overlap_b_in_a=vocabulary_overlap(b.tokenizer, a.tokenizer),
            top_k_agreement_a_in_b=agree_ab, top_k_agreement_b_in_a=agree_ba,
        ))
    best, reasons = choose_set(profiles, pairs)
    report = SelectReport(task_obj.name, thresholds, profiles, pairs, best, reasons)
    report.save(out)
    if heatmap and len(members) >= 2:
        _heatmap(report, out)
    return report
