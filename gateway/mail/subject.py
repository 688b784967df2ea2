"""Find ticket numbers in subjects and write the tag into outgoing subjects.

A customer's client adds `Re:`, `AW:`, `回复:` and friends, repeats the tag, folds
the line, or turns `#` into a full-width `＃` (Japanese and Chinese IMEs). We search the
whole (decoded) subject for the hook followed by digits, so all of
`[Ticket#2013121610000137]`, `Ticket#: 2013121610000137`, `Ticket# 2013121610000137`
and `［Ｔｉｃｋｅｔ＃２０１３…］` match. The subject itself is never normalised: titles
keep the customer's characters. The caller decides whether a number exists.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Reply and forward prefixes seen in the wild, for stripping when we build a title:
# English, German (AW, WG, Antw), Nordic (SV, VS, VB, Vs), Dutch (Antw, Doorst), Polish
# (Odp, PD), Spanish/Portuguese (RV, RES, ENC), Italian (R, I, Rif), French (TR), Turkish
# (YNT, İLT), Finnish (VL, VS), Latvian (Atb), Chinese (回复, 答复, 回覆, 转发, 轉寄),
# Japanese (返信, 転送), Korean (회신, 전달). "Re[2]:" and "Re(2):" count too.
_PREFIX = re.compile(
    r"^[\s\u3000]*(?:(?:re|aw|wg|fwd?|fw|sv|vs|vb|antw|doorst|odp|pd|rv|r|tr|enc|res|ynt|"
    r"ilt|İlt|vl|atb|rif|i|回复|答复|回覆|转发|轉寄|返信|転送|회신|전달)"
    r"[\s\u3000]*(?:\[\d+\]|\(\d+\))?[\s\u3000]*[:：][\s\u3000]*)+",
    re.IGNORECASE,
)
_MAX_ROUNDS = 20


def _fullwidth(c: str) -> str:
    """c and its full-width form as a regex alternative (for printable ASCII)."""
    if "!" <= c <= "~":
        return f"[{re.escape(c)}{re.escape(chr(ord(c) + 0xFEE0))}]"
    return re.escape(c)


@lru_cache(maxsize=16)
def _tag_regex(hook: str) -> re.Pattern[str]:
    body = "".join(_fullwidth(c) for c in hook)
    colon = _fullwidth(":")
    return re.compile(body + r"\s*" + colon + r"?\s*(\d{2,32})(?!\d)", re.IGNORECASE)


@lru_cache(maxsize=16)
def _bracketed_regex(hook: str) -> re.Pattern[str]:
    inner = _tag_regex(hook).pattern
    return re.compile(_fullwidth("[") + r"\s*" + inner + r"\s*" + _fullwidth("]"), re.I)


@lru_cache(maxsize=16)
def _bare_regex(hook: str) -> re.Pattern[str]:
    """A tag without brackets, with the colon some clients put after it (`Ticket#N: x`)."""
    return re.compile(_tag_regex(hook).pattern + r"(?:\s*" + _fullwidth(":") + ")?", re.I)


def _ascii_digits(digits: str) -> str:
    return "".join(str(unicodedata.digit(c)) for c in digits)


def find_numbers(subject: str, hook: str) -> list[str]:
    """Every candidate ticket number after the hook (ASCII digits), in order, no duplicates."""
    seen: list[str] = []
    for match in _tag_regex(hook).finditer(subject):
        number = _ascii_digits(match.group(1))
        if number not in seen:
            seen.append(number)
    return seen


def strip_tags(subject: str, hook: str) -> str:
    """Subject without ticket tags and leading reply/forward prefixes (for titles)."""
    text = subject
    for _ in range(_MAX_ROUNDS):
        previous = text
        text = _bracketed_regex(hook).sub(" ", text)
        text = _bare_regex(hook).sub(" ", text)
        text = _PREFIX.sub("", text)
        text = " ".join(text.split())
        if text == previous:
            break
    return text


def tag_subject(subject: str, hook: str, number: str, template: str = "[{hook}{number}]") -> str:
    """`[Ticket#N] subject`, with any old tags and reply prefixes removed first."""
    tag = template.format(hook=hook, number=number)
    rest = strip_tags(subject, hook)
    return f"{tag} {rest}".strip()
