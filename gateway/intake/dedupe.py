"""Is this message already stored? The MTA redelivers whatever it did not see acknowledged.

A message is a duplicate of a stored one when both its Message-ID and its content hash
match: the hash ignores what MTAs and filters add on the way in, so the same message
delivered over LMTP and through pipe(8), or through either of two MX hosts each running
a gateway, is one message, while two different messages that happen to share a
Message-ID are both kept.
"""

from __future__ import annotations

import functools
import hashlib
import re

from sqlalchemy import Connection, bindparam, select

from ticketstore.models import Article, Queue, Ticket

from .outcome import Disposition, Outcome

# Header fields an MTA or filter adds on the way in: they differ between deliveries of
# one message, through pipe(8) or LMTP, and through one MX host or another (each adds its
# own trace, SPF/DKIM/ARC verdicts and spam/virus scores). A name ending in "*" is a
# prefix. What the sender wrote, its DKIM-Signature included, is content and counts.
# Documented in docs/configuration.md ([intake] dedupe_ignore_headers adds to it).
DEFAULT_IGNORED_HEADERS: tuple[str, ...] = (
    "Received", "X-Received", "Return-Path", "Delivered-To", "X-Original-To",
    "X-Envelope-From", "X-Envelope-To", "Received-SPF", "Authentication-Results",
    "X-Original-Authentication-Results", "ARC-*", "X-Spam*", "X-Virus*", "X-Amavis-*",
    "X-Quarantine-ID", "X-Rspamd-*", "X-Greylist", "X-Sieve", "X-MS-Exchange-Organization-*",
    "X-Forefront-Antispam-Report", "X-Microsoft-Antispam*", "X-Proofpoint-*", "X-IronPort-*",
    "X-Barracuda-*", "X-Mimecast-*",
)
# The characters of a field name (RFC 5322 ftext: printable ASCII but ":").
_FTEXT = rb"[!-9;-~]"


@functools.cache
def ignored_fields(extra: tuple[str, ...] = ()) -> re.Pattern[bytes]:
    """The pattern of a whole ignored field (its line and its continuation lines): one of
    DEFAULT_IGNORED_HEADERS or `extra` ("X-Filter-*" is a prefix), any case."""
    alternatives = []
    for name in sorted({n.lower() for n in DEFAULT_IGNORED_HEADERS + extra}):
        prefix = name.endswith("*")
        word = re.escape(name.rstrip("*").encode("ascii"))
        alternatives.append(word + _FTEXT + b"*" if prefix else word)
    return re.compile(rb"^(?:" + b"|".join(alternatives)
                      + rb")[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*", re.MULTILINE | re.IGNORECASE)


# The body is hashed in slices of this size, so a 25 MB message is not copied to hash it.
_SLICE = 1 << 18


def content_hash(raw: bytes, ignored: re.Pattern[bytes] | None = None) -> str:
    """sha256 of the message without the fields `ignored` matches (by default
    `ignored_fields()`), line ends normalised to LF.

    An mbox `From ` line (procmail, pipe(8) flag F) is left out too.
    """
    start = 0
    if raw.startswith(b"From "):
        start = raw.find(b"\n") + 1 or len(raw)
    # The header block ends at the first blank line, "\n\n" or "\n\r\n".
    ends = [(i, width) for i, width in ((raw.find(b"\n\n", start), 2),
                                        (raw.find(b"\n\r\n", start), 3)) if i >= 0]
    if ends:
        nl, width = min(ends)
        head_end = nl - 1 if nl > start and raw[nl - 1] == 0x0D else nl
        head, sep, body_start = raw[start:head_end].replace(b"\r\n", b"\n"), b"\n\n", nl + width
    else:
        head, sep, body_start = raw[start:].replace(b"\r\n", b"\n"), b"", len(raw)
    h = hashlib.sha256()
    # With a "\n" after the last line, every ignored field is removed whole (its line and
    # its continuation lines); the "\n" added is taken off again.
    h.update((ignored or ignored_fields()).sub(b"", head + b"\n")[:-1])
    h.update(sep)
    carry = b""
    for pos in range(body_start, len(raw), _SLICE):
        chunk = carry + raw[pos:pos + _SLICE]
        carry = b""
        if chunk.endswith(b"\r") and pos + _SLICE < len(raw):
            chunk, carry = chunk[:-1], b"\r"  # may be the first half of a CRLF
        h.update(chunk.replace(b"\r\n", b"\n"))
    return h.hexdigest()


_A, _T, _Q = Article.__table__, Ticket.__table__, Queue.__table__
_DUPLICATE = (
    select(_A.c.id, _T.c.number, _Q.c.name)
    .join(_T, _A.c.ticket_id == _T.c.id).join(_Q, _T.c.queue_id == _Q.c.id)
    .where(_A.c.message_id == bindparam("message_id"), _A.c.content_hash == bindparam("hash"))
    .limit(1)
)


def find_duplicate(conn: Connection, message_id: str, chash: str) -> Disposition | None:
    """The disposition of the stored copy of this message, or None if it is new."""
    row = conn.execute(_DUPLICATE, {"message_id": message_id, "hash": chash}).first()
    if row is None:
        return None
    article_id, number, queue = row
    return Disposition(Outcome.DUPLICATE, message_id, number, queue, article_id)
