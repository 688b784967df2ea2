"""An answer's own insert stores exactly what the generic insert stores.

autoresponse/rows.py writes constants into the SQL, and the answer's timestamp is
converted once. The row is written both ways here and read back raw (text SQL, no type
processing), on SQLite and PostgreSQL: every column must hold the same thing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import insert, text

from autoresponse import rows
from gateway.runtime import Store
from ticketstore.models import Queue, Ticket
from ticketstore.statements import STATEMENTS

WHEN = dt.datetime(2026, 11, 22, 10, 30, 15, 123456, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 11, 22, 10, 30, 16, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def _ticket(conn: Any) -> int:
    qid = conn.execute(insert(Queue.__table__).values(name="Q", created_at=WHEN)
                       .returning(Queue.__table__.c.id)).scalar_one()
    return int(conn.execute(insert(Ticket.__table__).values(
        number="1", title="t", queue_id=qid, state="new", priority=3, customer_address="a@b",
        customer_name="", customer_domain="b", customer_id="", tags=[], thread_key="k",
        linked_ticket_id=None, created_at=WHEN, updated_at=WHEN, closed_at=None,
    ).returning(Ticket.__table__.c.id)).scalar_one())


def _raw(conn: Any, table: str, row_id: int) -> dict[str, Any]:
    row = conn.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": row_id})
    values = dict(row.one()._mapping)
    values.pop("id")
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in values.items()}


def _outbox(tid: int, when: dt.datetime) -> dict[str, Any]:
    return {"ticket_id": tid, "article_id": None, "kind": "auto-reply", "mail_from": "s@h",
            "rcpt_to": "c@x", "message_id": "m1@h", "message": b"raw\r\n\xc3\xbc",
            "template": "default/en/new-ticket.txt", "next_attempt_at": when,
            "created_at": when}


@pytest.mark.parametrize("when", [WHEN, LATER])
def test_row_equals_the_generic_insert(store: Store, when: dt.datetime) -> None:
    with store.engine.begin() as conn:
        tid = _ticket(conn)
        STATEMENTS(conn, rows.OUTBOX).execute(conn, _outbox(tid, when))
        STATEMENTS(conn, "insert_outbox").execute(conn, {
            **_outbox(tid, when), "state": "pending", "attempts": 0, "last_error": "",
            "sent_at": None})
    with store.engine.connect() as conn:
        o1, o2 = (_raw(conn, "outbox", i) for i in conn.execute(
            text("SELECT id FROM outbox ORDER BY id")).scalars())
        assert o1 == o2 and o1["state"] == "pending" and o1["sent_at"] is None
        assert o1["template"] == "default/en/new-ticket.txt" and o1["created_at"] is not None


def test_a_new_timestamp_is_converted_not_reused(store: Store) -> None:
    """UTCDateTime's memory must never hand out the previous value."""
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with store.engine.begin() as conn:
        tid = _ticket(conn)
        for when in (first, first + dt.timedelta(microseconds=1), first, WHEN, WHEN):
            STATEMENTS(conn, rows.OUTBOX).execute(conn, _outbox(tid, when))
            STATEMENTS(conn, "insert_outbox").execute(conn, {
                **_outbox(tid, when), "state": "pending", "attempts": 0, "last_error": "",
                "sent_at": None})
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT created_at FROM outbox ORDER BY id")).scalars().all()
    assert stored[0::2] == stored[1::2]
    assert len(set(stored)) == 3


def test_a_naive_timestamp_is_still_refused(store: Store) -> None:
    with store.engine.begin() as conn, pytest.raises(ValueError, match="naive"):
        STATEMENTS(conn, rows.OUTBOX).execute(
            conn, _outbox(_ticket(conn), dt.datetime(2026, 1, 1)))
