"""Read the DKIM verdict from the `Authentication-Results` header (RFC 8601).

Until ticketgate verifies DKIM itself, the `dkim` condition trusts the verdict of the
MTA in front of it: the *topmost* Authentication-Results header, which is the one the
receiving MTA (Postfix with OpenDKIM / rspamd) added. Headers further down may come
from anywhere, including the sender, and are ignored.
"""

from __future__ import annotations

import re

RESULTS = ("pass", "fail", "none", "neutral", "policy", "temperror", "permerror")
_DKIM = re.compile(r"(?:^|[;\s])dkim\s*=\s*([a-z]+)", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")


def dkim_result(values: tuple[str, ...]) -> str:
    """"pass" if any DKIM signature passed, else the first result found, else "none"."""
    if not values:
        return "none"
    text = _COMMENT.sub(" ", values[0])
    found = [r.lower() for r in _DKIM.findall(text)]
    if "pass" in found:
        return "pass"
    for r in found:
        if r in RESULTS:
            return r
    return "none"
