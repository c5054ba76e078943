"""Hypothesis strategies for the texts a model may write."""

from hypothesis import strategies as st

SNIPPETS = ["  ", "\n", "\n\n", "\t", "   x", "🙂", "🚀🚀", "東京", "café", "naïve", "42", "3.14", " the", "The",
            "<|im_end|>", "<s>", "Ġ", "\u2581", "<0x0A>", "##", "a  b", " ", "muffins", "\r\n"]

texts = st.lists(
    st.one_of(
        st.sampled_from(SNIPPETS),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
        st.text(alphabet="abcdefghij klmnop\n.,0123", max_size=12),
    ),
    max_size=12,
).map("".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (may split UTF-8 characters)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]
