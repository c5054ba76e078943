"""Answer extractors on hand-written responses, including the awkward ones."""

from __future__ import annotations

import pytest

from unite_logits.evaluation.paper.extract import (
    extract_letter,
    extract_number_answer,
    numbers_equal,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{18}.", 18.0),
        ("So 16-3-4=9 eggs, 9*2=18.\nThe answer is \\boxed{18}\n\nQuestion: 2", 18.0),
        ("She has 1,234 apples in total.", 1234.0),
        ("The answer is \\boxed{1,234,567}", 1234567.0),
        ("The temperature fell to -5", -5.0),
        ("10-3=7", 7.0),  # a minus between digits is subtraction, not a sign
        ("It costs $3.50 in total", 3.5),
        ("The answer is $18.00.", 18.0),
        ("The answer is 18 dollars, not 20", 18.0),
        ("Therefore, the answer is 70000", 70000.0),
        ("boxed{-2.5} and later 7", -2.5),
        ("\\boxed{x} then 12 more", 12.0),  # no number in the braces: fall through
        ("I have 3 cats and 4 dogs", 4.0),  # no cue: the last number
        ("no number here", None),
        ("", None),
    ],
)
def test_number_extraction(text: str, expected: float | None) -> None:
    assert extract_number_answer(text) == expected


def test_numbers_equal() -> None:
    assert numbers_equal(18.0, 18.0)
    assert numbers_equal(18.0000000001, 18.0)
    assert not numbers_equal(17.0, 18.0)
    assert not numbers_equal(None, 18.0)
    assert not numbers_equal(None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: (B)", "B"),
        (" B.", "B"),
        (" C\n\nQuestion: next", "C"),
        ("b", "B"),
        ("c)", "C"),
        ("(D) because it is", "D"),
        ("The answer is c", "C"),
        ("the answer is (a)", "A"),
        ("answer: d", "D"),
        ("I think (c) is right", "C"),
        ("Answer: B because", "B"),
        ("a dog is an animal", None),  # article, not option A
        ("The answer is a dog", None),
        ("E", None),  # not a valid letter for this item
        ("Answer:", None),
        ("", None),
    ],
)
def test_letter_extraction(text: str, expected: str | None) -> None:
    assert extract_letter(text, "ABCD") == expected


def test_letter_extraction_respects_item_letters() -> None:
    assert extract_letter(" C", "AB") is None
    assert extract_letter(" B", "AB") == "B"
