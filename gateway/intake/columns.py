"""Values cut to fit their columns, so that no message fails the same way on every retry.

PostgreSQL refuses a value longer than its `VARCHAR(n)` (StringDataRightTruncation), and
it would refuse it again on each of the MTA's retries: a poison message. Values derived
from the message or its envelope are cut to fit (the raw message is always kept whole).
A value that is also looked up (a Message-ID, a rules' `thread_key`) is cut with a
sha256 of the whole value at its end: the same value always gives the same key, and two
long values that share their beginning stay apart.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Column, String

from ticketstore.models import Article, Attachment, Ticket

_A, _ATT, _T = Article.__table__.c, Attachment.__table__.c, Ticket.__table__.c


def _length(column: Column[str]) -> int:
    assert isinstance(column.type, String) and column.type.length, column
    return column.type.length


def fit(column: Column[str], value: str) -> str:
    """`value`, cut to the column's length (in characters, as PostgreSQL counts)."""
    return value[:_length(column)]


def fit_key(column: Column[str], value: str) -> str:
    """`value`, or if too long its beginning and `~` and the sha256 of the whole."""
    length = _length(column)
    if len(value) <= length:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:length - len(digest) - 1]}~{digest}"


def message_id_key(message_id: str) -> str:
    """A Message-ID as it is stored and looked up (articles.message_id)."""
    return fit_key(_A.message_id, message_id)


def thread_key(key: str | None) -> str | None:
    """A rules' thread_key as it is stored and looked up (tickets.thread_key)."""
    return None if key is None else fit_key(_T.thread_key, key)

