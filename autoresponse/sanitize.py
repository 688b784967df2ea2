"""What of the sender's own words an answer to them may carry: little, and nothing to click.

Anyone can put someone else's address in From. An answer then goes to that person, so
whatever the forger wrote in the display name or subject is mail we send on their behalf
(a 3,000-character display name with a URL, a 1,440-character subject). Customer answers
therefore get these values cut to a few dozen characters, without control characters, with
URLs removed from names (a name is never a link) and broken in subjects and text
(`http[:]//shop[.]example`), so no mail program makes them a link. The limits are
constants, documented in docs/autoresponse.md.
"""

from __future__ import annotations

import io
import re

from .compose import clean_header_value

NAME_LENGTH = 60  # a display name in an answer (To header, greeting)
SUBJECT_LENGTH = 120  # a subject or ticket title in an answer (Subject header, body)
TEXT_LINES = 15  # lines of the sender's text a customer answer may quote
TEXT_LINE_LENGTH = 200  # characters of each of those lines
ELLIPSIS = "…"

# What a mail program would turn into a link: a scheme URL, www.*, or a bare host name
# with a dot (and an optional path). Addresses are included: mailto links.
_URL = re.compile(
    r"\b[a-z][a-z0-9+.-]*:(?://)?[^\s<>\"']+|\bwww\.[^\s<>\"']+|"
    r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b(?:/[^\s<>\"']*)?",
    re.IGNORECASE,
)
# Control characters other than the line break and tab, for multi-line text.
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")


def _defang_one(match: re.Match[str]) -> str:
    url = match.group(0)
    if ":" in url and "." not in url and "//" not in url:
        return url  # "Re:", "Note:3", a time: no link
    return url.replace("://", "[:]//").replace(".", "[.]")


def defang(text: str) -> str:
    """URLs and host names made unclickable: `http[:]//shop[.]example/x`."""
    return _URL.sub(_defang_one, text)


def cut(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + ELLIPSIS


def short_name(name: str) -> str:
    """A display name for an answer: one line, no URLs, at most NAME_LENGTH characters."""
    # Only the start is looked at: a name longer than this is cut anyway.
    line = clean_header_value(name[: NAME_LENGTH * 20], NAME_LENGTH * 20)
    return cut(" ".join(_URL.sub(" ", line).split()), NAME_LENGTH)


def short_subject(subject: str) -> str:
    """A subject or title for an answer: one line, URLs broken, SUBJECT_LENGTH at most."""
    line = clean_header_value(subject[: SUBJECT_LENGTH * 20], SUBJECT_LENGTH * 20)
    return cut(defang(line), SUBJECT_LENGTH)


def short_text(text: str) -> str:
    """The first TEXT_LINES lines of the sender's text, each cut, URLs broken."""
    kept: list[str] = []
    for piece in io.StringIO(text.strip()):  # line by line: the text may be megabytes
        for line in piece.splitlines():
            kept.append(cut(defang(_CONTROL_IN_TEXT.sub("", line[: TEXT_LINE_LENGTH * 4])
                                   .rstrip()), TEXT_LINE_LENGTH))
        if len(kept) > TEXT_LINES:
            return "\n".join(kept[:TEXT_LINES]) + "\n" + ELLIPSIS
    return "\n".join(kept)
