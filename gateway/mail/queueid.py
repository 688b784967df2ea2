"""The MTA's queue ID of a message, from the `Received:` header the MTA added last.

Postfix writes `Received: from ... by mx.example (Postfix) with ESMTP id 4Xyz...; date`
(or `(Postfix, from userid 0) id 4Xyz` for local submissions). Putting that ID in our log
line lets an admin follow one message from Postfix's log into ours with one grep, without
our log carrying customer addresses at info level.
"""

from __future__ import annotations

import re

# Only the header block of a message is searched, and of it only the topmost Received:
# header (unfolded); older Received: headers name other hosts' queue IDs.
_RECEIVED = re.compile(rb"^Received:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_POSTFIX_ID = re.compile(rb"\(Postfix[^)]*\)(?:\s+with\s+\S+)?\s+id\s+([0-9A-Za-z]{5,32})\b")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
HEADER_SCAN_LIMIT = 64 * 1024


def postfix_queue_id(raw: bytes) -> str | None:
    """`4Xyz12ABC` from the topmost Received: header if Postfix wrote it, else None."""
    head = raw[:HEADER_SCAN_LIMIT]
    end = _HEADER_END.search(head)
    if end is not None:
        head = head[:end.start() + 1]
    match = _RECEIVED.search(head)
    if match is None:
        return None
    found = _POSTFIX_ID.search(match.group(1))
    return found.group(1).decode("ascii") if found else None
