"""Find ticket numbers in subjects and write the tag into outgoing subjects.

A customer's client adds `Re:`, `AW:`, `回复:` and friends, repeats the tag, folds
the line, or turns `#` into a full-width `＃`. We search the whole (decoded) subject
for the hook followed by digits, after Unicode compatibility normalisation, so all of
`[Ticket#2013121610000137]`, `Ticket#: 2013121610000137`, `Ticket# 2013121610000137`
and `［Ｔｉｃｋｅｔ＃２０１３…］` match. The caller decides whether a number exists.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Reply and forward prefixes seen in the wild, for stripping when we build a title.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|wg|fwd?|fw|sv|vs|antw|odp|rv|r|tr|enc|res|ynt|ilt|vl|vs|atb|"
    r"回复|答复|回覆|轉寄|转发|返信|転送|rif|i)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)


@lru_cache(maxsize=16)
def _tag_regex(hook: str) -> re.Pattern[str]:
    hook = unicodedata.normalize("NFKC", hook)
    return re.compile(re.escape(hook) + r"\s*:?\s*(\d{2,32})(?!\d)", re.IGNORECASE)


def find_numbers(subject: str, hook: str) -> list[str]:
    """Every candidate ticket number after the hook, in order, without duplicates."""
    text = unicodedata.normalize("NFKC", subject)
    seen: list[str] = []
    for match in _tag_regex(hook).finditer(text):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


def strip_tags(subject: str, hook: str) -> str:
    """Subject without ticket tags and leading reply/forward prefixes (for titles)."""
    text = unicodedata.normalize("NFKC", subject)
    text = re.sub(r"\[\s*" + _tag_regex(hook).pattern + r"\s*\]", " ", text, flags=re.I)
    text = _tag_regex(hook).sub(" ", text)
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text).strip()
    return " ".join(text.split())


def tag_subject(subject: str, hook: str, number: str, template: str = "[{hook}{number}]") -> str:
    """`[Ticket#N] subject`, with any old tags and reply prefixes removed first."""
    tag = template.format(hook=hook, number=number)
    rest = strip_tags(subject, hook)
    return f"{tag} {rest}".strip()
