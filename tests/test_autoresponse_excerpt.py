"""excerpt() reads only the head of the customer's text: same result as reading it all,
and wraps long lines."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from autoresponse.autoresponder import EXCERPT_WIDTH, excerpt, wrap


def _reference(text: str, lines: int) -> str:
    """excerpt() read simply: split and wrap the whole stripped text."""
    every = [piece for ln in text.strip().splitlines() for piece in wrap(ln.rstrip(), 74)]
    kept = every[:lines]
    more = len(every) > lines
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
@example("a\n\n\n\nb\n\n\nc", 15)  # runs of empty lines, quoted ">" each
@example("a\n\n\n\nb", 2)  # cut inside a run of empty lines
@example(" \n\x0b\n ", 3)  # nothing but whitespace
@example("a\x0cb\nc\x1dd", 5)  # ASCII breaks other than "\n"
def test_excerpt_equals_splitting_the_whole_text(text: str, lines: int) -> None:
    assert excerpt(text, lines) == _reference(text, lines)


def test_long_text_excerpt() -> None:
    text = "\r\n".join(f"line {i}  " for i in range(5000))
    assert excerpt(text) == _reference(text, 15)


_WORDS = st.sampled_from(["a", "bc", "word", "x" * 30, "y" * 80, " ", "  "])


@settings(max_examples=600)
@given(st.lists(_WORDS, max_size=60).map("".join), st.integers(min_value=1, max_value=80))
def test_wrap_breaks_only_at_spaces_and_keeps_pieces_short(line: str, width: int) -> None:
    pieces = wrap(line, width)
    assert " ".join(pieces) == line  # nothing lost, one space per break
    for piece in pieces[:-1] if len(pieces) > 1 else []:
        # Too long only if there was no space to break at within the width.
        assert len(piece) <= width or " " not in piece[1:width + 1]
    assert len(pieces[-1]) <= width or " " not in pieces[-1][1:]


def test_a_long_paragraph_is_quoted_in_short_lines() -> None:
    text = "Hello,\n\n" + "my order did not arrive, please help. " * 20
    out = excerpt(text)
    assert all(len(line) <= EXCERPT_WIDTH + 2 for line in out.splitlines())
    assert out.startswith("> Hello,\n>\n> my order did not arrive")
    assert " ".join(line[2:] for line in out.splitlines()[2:]) == \
        ("my order did not arrive, please help. " * 20).strip()


def test_a_long_word_is_not_cut() -> None:
    url = "https://example.com/" + "x" * 120
    assert excerpt(f"see {url} please") == f"> see\n> {url}\n> please"
