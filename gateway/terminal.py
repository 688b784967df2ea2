"""Mail text made safe for a terminal.

Subjects and names are written by strangers: an ESC or OSC sequence in one would drive
the admin's terminal (colours, window titles, hidden text, hyperlinks), a bidirectional
override would reorder what they read. Human output shows such characters escaped;
`--json` output stays exact.
"""

from __future__ import annotations

import re

# C0 and C1 controls (tab and newline included: every field is printed on one line),
# DEL, and the Unicode bidirectional embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character written as a visible `\\xNN` / `\\uNNNN`."""
    return _UNSAFE.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
