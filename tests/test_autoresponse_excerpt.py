"""excerpt() reads only the head of the customer's text: same result as reading it all."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from autoresponse.autoresponder import excerpt


def _reference(text: str, lines: int) -> str:
    """excerpt() as it was: split the whole stripped text (twice)."""
    kept = [ln.rstrip() for ln in text.strip().splitlines()[:lines]]
    more = len(text.strip().splitlines()) > lines
    quoted = "\n".join(f"> {ln}" if ln else ">" for ln in kept)
    return quoted + ("\n> [...]" if more else "")


_PIECES = st.sampled_from(["a", "bc ", " ", "\n", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c",
                           "\x85", "\u2028", "\u2029", "\t", "ü", "\n\n"])


@settings(max_examples=600)
@given(st.lists(_PIECES, max_size=80).map("".join), st.integers(min_value=0, max_value=6))
@example("a\r\nb\r\nc\r\nd", 2)
@example("a\nb\nc\r\nd\re", 3)
@example("1\n2\n3\n", 3)
@example("1\n2\n3\n4", 3)
@example("1\n2\n3\r\n\n", 3)
def test_excerpt_equals_splitting_the_whole_text(text: str, lines: int) -> None:
    assert excerpt(text, lines) == _reference(text, lines)


def test_long_text_excerpt() -> None:
    text = "\r\n".join(f"line {i}  " for i in range(5000))
    assert excerpt(text) == _reference(text, 15)
