"""Answer extraction from free-form model output, one function per answer kind.

Every task scores through these functions, so a change in how answers are read is made
in exactly one place. Extractors return ``None`` when no answer can be read; ``None`` is
never correct.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "parse_number",
    "last_number",
    "extract_number_answer",
    "numbers_equal",
    "extract_letter",
]

# A number: optional sign (not when glued to a preceding word/digit, so "10-3" is 10 and 3),
# thousands groups "1,234,567" or plain digits, optional decimals; also ".5".
_NUMBER = re.compile(
    r"(?:(?<![\w.])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w.])[-\u2212])?\.\d+"
)
_BOXED = re.compile(r"boxed", re.IGNORECASE)
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def parse_number(text: str) -> float | None:
    """Turn one matched number ("1,234", "-5", "\u22123.50") into a float."""
    cleaned = text.replace(",", "").replace("\u2212", "-")
    try:
        return float(Decimal(cleaned))
    except (InvalidOperation, ValueError):
        return None


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def last_number(text: str) -> float | None:
    """The last number in ``text`` (None when there is none)."""
    found = _numbers(text)
    return parse_number(found[-1]) if found else None


def _after_last(pattern: re.Pattern[str], text: str) -> str | None:
    matches = list(pattern.finditer(text))
    return text[matches[-1].end():] if matches else None


def _boxed_number(tail: str) -> float | None:
    """Number in the braces right after "boxed"; else the first number after it.

    Taking the number inside the braces (rather than the last number of the whole tail)
    keeps trailing chatter such as "\\boxed{18}. Question 2" from changing the answer.
    """
    brace = re.match(r"\s*\{([^{}]*)\}", tail)
    if brace:
        found = _numbers(brace.group(1))
        return parse_number(found[-1]) if found else None
    found = _numbers(tail)
    return parse_number(found[0]) if found else None


def extract_number_answer(text: str) -> float | None:
    """GSM8K rule of the paper: number after "boxed", else after "the answer is", else last.

    After "the answer is" the *first* number is taken ("The answer is 18 dollars, not 20"
    answers 18); with no cue at all the last number of the response is the answer.
    """
    tail = _after_last(_BOXED, text)
    if tail is not None:
        value = _boxed_number(tail)
        if value is not None:
            return value
    tail = _after_last(_ANSWER_IS, text)
    if tail is not None:
        found = _numbers(tail)
        if found:
            return parse_number(found[0])
    return last_number(text)


def numbers_equal(a: float | None, b: float | None, tol: float = 1e-6) -> bool:
    """Numeric equality with a small tolerance ("18.00" == "18"); None never matches."""
    if a is None or b is None:
        return False
    return abs(a - b) <= tol * max(1.0, abs(b))


def extract_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter a response commits to, restricted to ``letters``.

    Tried in order: an explicit cue ("Answer: (B)", "the answer is b"); a letter opening
    the response (" B.", "(c)", "D: ..."); a lone letter response; a parenthesised or
    punctuated letter anywhere ("(B)", "B)"). Lower-case letters count only when they
    cannot be the English article "a" (i.e. they are punctuated or stand alone).
    """
    valid = "".join(dict.fromkeys(letter.upper() for letter in letters))
    if not valid or not text:
        return None
    cls = f"[{re.escape(valid)}{re.escape(valid.lower())}]"
    stripped = text.strip()
    patterns = [
        # explicit cue; a lower-case letter here must be punctuated or end the text
        rf"(?i:\b(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*)\(?"
        rf"(?:([{re.escape(valid)}])\b(?![\w'])|([{re.escape(valid.lower())}])(?=\s*(?:[).:,\]]|$)))",
        rf"^\(?({cls})\s*[).:,\]]",  # "(B)", "B.", "b)", "C:"
        rf"^({cls})\s*$",  # the whole response is the letter
        rf"^([{re.escape(valid)}])\b(?!['\w])",  # upper-case letter opening the response
        rf"\(({cls})\)",  # "(B)" anywhere
    ]
    for pattern in patterns:
        m = re.search(pattern, stripped)
        if m:
            return next(g for g in m.groups() if g).upper()
    return None
