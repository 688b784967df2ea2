"""How many answers a mailbox, a domain and the whole site may get: the flood limits.

A forger can put any address in From, in any spelling, from any number of hosts. So:

- The daily limit counts a *mailbox*, not a spelling (`mailbox_key`): the domain is
  lower-cased and loses a trailing dot, an address extension (`victim+0@`, with
  `[autoresponse] recipient_delimiter`) is dropped, and the local part is compared
  without case (every mail system we answer treats it so; RFC 5321 allows otherwise).
- It is exact with any number of writers: `reserve` raises the mailbox's row for the UTC
  day with one atomic `INSERT ... ON CONFLICT DO UPDATE ... WHERE answers < limit
  RETURNING`, inside the intake transaction. On PostgreSQL the row stays locked until
  that transaction ends, so a second writer waits and then sees the first one's count;
  SQLite has one writer at a time. No row comes back: the limit was reached.
- The site's answers per hour and each recipient domain's are counted from the outbox
  (its rows of the last hour: `ix_outbox_created`, `ix_outbox_domain_created`), only up
  to the limit (whether it is reached is all a check needs), without a lock: one counter row
  every answer of the site had to update would make all writers take turns. Writers
  committing at the same moment may therefore pass these two limits by a few answers.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, select, update

from ticketstore.models import AnswerCount, Event, OutboxMessage

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session, sessionmaker

# The one outbox kind that is not a customer answer (agents are never limited).
AGENT_KIND = "agent-notification"
HOUR = dt.timedelta(hours=1)
# The checks (suppress.py) whose suppressions the status page and /healthz report.
FLOOD_CHECKS = ("global-limit", "domain-limit")


def mailbox_key(address: str, delimiters: str = "+") -> str:
    """The mailbox an address names: `Victim+x@TARGET.example.` -> `victim@target.example`."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return address.strip().lower()
    for i, char in enumerate(local):
        if i and char in delimiters:  # a local part that starts with one is kept whole
            local = local[:i]
            break
    return f"{local.lower()}@{domain_key(domain)}"


def domain_key(domain: str) -> str:
    """`TARGET.example.` -> `target.example`."""
    return domain.strip().rstrip(".").lower()


def _day(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


_COUNT = select(AnswerCount.answers).where(
    AnswerCount.mailbox == bindparam("b_mailbox"), AnswerCount.day == bindparam("b_day"))
_RELEASE = update(AnswerCount).where(
    AnswerCount.mailbox == bindparam("b_mailbox"), AnswerCount.day == bindparam("b_day"),
    AnswerCount.answers > 0).values(answers=AnswerCount.answers - 1)
_RESERVE: dict[str, Any] = {}


def _reserve_statement(dialect: str) -> Any:
    """The conditional upsert, built once per dialect (both speak ON CONFLICT)."""
    if dialect not in _RESERVE:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - the project supports these two
            raise RuntimeError(f"no atomic answer counter for {dialect}")
        stmt = insert(AnswerCount).values(
            mailbox=bindparam("b_mailbox"), day=bindparam("b_day"), answers=1)
        _RESERVE[dialect] = stmt.on_conflict_do_update(
            index_elements=[AnswerCount.mailbox, AnswerCount.day],
            set_={"answers": AnswerCount.answers + 1},
            where=AnswerCount.answers < bindparam("b_limit"),
        ).returning(AnswerCount.answers)
    return _RESERVE[dialect]


def answers_today(conn: Connection, mailbox: str, now: dt.datetime) -> int:
    """Answers planned to `mailbox` today (a read: the exact step is `reserve`)."""
    found = conn.execute(_COUNT, {"b_mailbox": mailbox, "b_day": _day(now)}).scalar_one_or_none()
    return int(found or 0)


def reserve(conn: Connection, mailbox: str, now: dt.datetime, limit: int) -> bool:
    """Count one more answer to `mailbox` today, unless that would pass `limit`."""
    if limit <= 0:
        return False
    got = conn.execute(_reserve_statement(conn.dialect.name), {
        "b_mailbox": mailbox, "b_day": _day(now), "b_limit": limit}).scalar_one_or_none()
    return got is not None


def release(conn: Connection, mailbox: str, now: dt.datetime) -> None:
    """Give back a reservation whose answer was not made after all (a template error)."""
    conn.execute(_RELEASE, {"b_mailbox": mailbox, "b_day": _day(now)})


def _customer_rows(domain: bool) -> Any:
    rows = select(OutboxMessage.id).where(
        OutboxMessage.created_at >= bindparam("since"), OutboxMessage.kind != AGENT_KIND)
    if domain:
        rows = rows.where(OutboxMessage.rcpt_domain == bindparam("domain"))
    counted = rows.limit(bindparam("most")).subquery()
    return select(func.count()).select_from(counted)


# Built once (SQLAlchemy's statement cache is keyed by the statement).
_SITE_ROWS, _DOMAIN_ROWS = _customer_rows(False), _customer_rows(True)


def answers_last_hour(conn: Connection, now: dt.datetime, most: int,
                      domain: str | None = None) -> int:
    """Customer answers of the last hour, of the site or to one recipient domain, counted
    up to `most`: an index range that stops there, however busy the hour was."""
    stmt, params = _SITE_ROWS, {"since": now - HOUR, "most": most}
    if domain is not None:
        stmt, params = _DOMAIN_ROWS, params | {"domain": domain}
    return int(conn.execute(stmt, params).scalar_one())


def flood_suppressions(conn: Connection, now: dt.datetime) -> dict[str, int]:
    """Answers suppressed by the site's and the domains' limits in the last hour, by check:
    what the status page and /healthz report."""
    check = Event.detail["check"].as_string()
    rows = conn.execute(
        select(check, func.count()).where(
            Event.kind == "autoresponse-suppressed", Event.created_at >= now - HOUR,
            check.in_(FLOOD_CHECKS)).group_by(check)).all()
    return {name: 0 for name in FLOOD_CHECKS} | {str(name): int(n) for name, n in rows}


def prune(conn: Connection, now: dt.datetime) -> int:
    """Drop the counting rows of days before yesterday; the number dropped."""
    result = conn.execute(delete(AnswerCount).where(
        AnswerCount.day < _day(now) - dt.timedelta(days=1)))
    return int(result.rowcount or 0)


def prune_old_counts(factory: sessionmaker[Session]) -> int:
    """`prune` in its own short transaction (the outbox worker, `outbox send`)."""
    with factory.begin() as session:
        return prune(session.connection(), dt.datetime.now(dt.UTC))
