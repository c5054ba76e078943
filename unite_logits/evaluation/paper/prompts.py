"""Prompt text of the paper's evaluation, each format written once.

Multiple-choice tasks (ARC, PIQA, MMLU) share one lettered layout; GSM8K appends the
question to the 4-shot chain-of-thought demonstrations. Changing a format here changes it for every task and mode that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "letter_instruction",
    "choice_block",
    "choice_prompt",
    "gsm_prompt",
    "GSM_STOP",
    "CHOICE_STOP",
]

GSM_STOP: tuple[str, ...] = ("\n\nQuestion:", "\n\n\n")
CHOICE_STOP: tuple[str, ...] = ("\n\n", "\nQuestion:")


def letter_instruction(letters: Sequence[str]) -> str:
    """"Answer the question by replying A, B, C or D." for any set of letters."""
    letters = list(letters)
    spoken = letters[0] if len(letters) == 1 else f"{', '.join(letters[:-1])} or {letters[-1]}"
    return f"Answer the question by replying {spoken}."


def choice_block(question: str, options: Mapping[str, str], answer: str | None = None) -> str:
    """"Question: ..." then "A: ..." lines then "Answer:" (with the letter for a shot)."""
    lines = [f"Question: {question}"]
    lines += [f"{letter}: {text}" for letter, text in options.items()]
    lines.append("Answer:" if answer is None else f"Answer: {answer}")
    return "\n".join(lines)


def choice_prompt(
    question: str,
    options: Mapping[str, str],
    shots: Sequence[tuple[str, Mapping[str, str], str]] = (),
) -> str:
    """0-shot (ARC, PIQA) or k-shot (MMLU) lettered prompt ending in "Answer:"."""
    blocks = [choice_block(q, opts, ans) for q, opts, ans in shots]
    blocks.append(choice_block(question, options))
    return letter_instruction(list(options)) + "\n" + "\n\n".join(blocks)


def gsm_prompt(question: str, demonstrations: str) -> str:
    """4-shot CoT prompt: the demonstrations, then the question in the same layout."""
    return f"{demonstrations.rstrip()}\n\n\nQuestion: {question}\nLet's think step by step\n"
