"""The statements every delivered message runs, prebuilt (see hotpath.py for why).

Lookups return plain dicts; `detached` turns one into a model instance that is never
added to a session, which the auto-responder and templates read like any ticket.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import bindparam, literal, select, union_all, update

from .db import dialect_insert
from .hotpath import Catalogue, insert_all
from .models import Article, Base, Counter, Event, OutboxMessage, Queue, Ticket

_T = Ticket.__table__
_A = Article.__table__
_Q = Queue.__table__
_C = Counter.__table__
_O = OutboxMessage.__table__
# Ticket columns plus the queue's name: everything a snapshot needs, in one row.
_TICKET_COLUMNS = (*_T.columns, _Q.c.name.label("queue_name"))
_TICKET_SELECT = select(*_TICKET_COLUMNS).join(_Q, _T.c.queue_id == _Q.c.id)

# The longest id lists looked up at once; longer lists are cut by the caller.
MAX_NUMBERS = 20
MAX_MESSAGE_IDS = 50


def _numbered(prefix: str, count: int) -> list[Any]:
    return [bindparam(f"{prefix}{i}") for i in range(count)]


def _counter_upsert(dialect: str) -> Any:
    return (dialect_insert(dialect)(_C)
            .values(scope=bindparam("scope"), value=1)
            .on_conflict_do_update(index_elements=[_C.c.scope], set_={"value": _C.c.value + 1})
            .returning(_C.c.value))


def _tickets_by_numbers(count: int) -> Any:
    return _TICKET_SELECT.where(_T.c.number.in_(_numbered("n", count)))


def _tickets_of_messages(count: int, direction: bool) -> Any:
    """Tickets by stored Message-ID: articles', and our answers' still in the outbox.

    An answer gets its outgoing article only once it is sent (autoresponse/sent.py),
    so until then the outbox row is where its Message-ID lives.
    """
    ids = _numbered("m", count)
    articles = (select(_A.c.message_id.label("found_message_id"), *_TICKET_COLUMNS)
                .select_from(_A).join(_T, _A.c.ticket_id == _T.c.id)
                .join(_Q, _T.c.queue_id == _Q.c.id)
                .where(_A.c.message_id.in_(ids)))
    outbox = (select(_O.c.message_id.label("found_message_id"), *_TICKET_COLUMNS)
              .select_from(_O).join(_T, _O.c.ticket_id == _T.c.id)
              .join(_Q, _T.c.queue_id == _Q.c.id)
              .where(_O.c.message_id.in_(ids)))
    if direction:
        articles = articles.where(_A.c.direction == bindparam("direction"))
        outbox = outbox.where(bindparam("direction") == literal("out"))
    return union_all(articles, outbox)


_BUILDERS: dict[str, Any] = {
    "duplicate": lambda _d: (
        select(_A.c.id, _T.c.number, _Q.c.name)
        .join(_T, _A.c.ticket_id == _T.c.id).join(_Q, _T.c.queue_id == _Q.c.id)
        .where(_A.c.message_id == bindparam("mid"), _A.c.content_hash == bindparam("chash"))
        .limit(1)),
    "ticket_by_thread_key": lambda _d: (
        _TICKET_SELECT.where(_T.c.thread_key == bindparam("key"), _T.c.state != "closed")
        .order_by(_T.c.id.desc()).limit(1)),
    "next_counter": _counter_upsert,
    "insert_ticket": lambda _d: insert_all(_T, _T.c.id),
    "insert_article": lambda _d: insert_all(_A, _A.c.id),
    "insert_event": lambda _d: insert_all(Event.__table__),
    "insert_outbox": lambda _d: insert_all(OutboxMessage.__table__),
}
for _n in range(1, MAX_NUMBERS + 1):
    _BUILDERS[f"tickets_by_numbers/{_n}"] = lambda _d, n=_n: _tickets_by_numbers(n)
for _n in range(1, MAX_MESSAGE_IDS + 1):
    _BUILDERS[f"tickets_of_messages/{_n}"] = lambda _d, n=_n: _tickets_of_messages(n, False)
    _BUILDERS[f"tickets_of_messages/{_n}/dir"] = lambda _d, n=_n: _tickets_of_messages(n, True)

STATEMENTS = Catalogue(_BUILDERS)


def numbered(prefix: str, values: list[str]) -> dict[str, str]:
    """Parameters for a `_numbered` IN list."""
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


def update_ticket(columns: frozenset[str]) -> str:
    """The name of an UPDATE of these ticket columns by id, registered on first use."""
    return STATEMENTS.define(
        "update_ticket/" + ",".join(sorted(columns)),
        lambda _d: (update(_T).where(_T.c.id == bindparam("ticket_id"))
                    .values({c: bindparam(c) for c in sorted(columns)})))


M = TypeVar("M", bound=Base)


def detached(cls: type[M], values: dict[str, Any]) -> M:
    """A model instance carrying `values`, never attached to a session.

    Filling the instance dict directly skips the attribute events that `cls(**values)`
    fires per column (~0.1 ms per object), which nothing needs for a read-only copy.
    """
    mapper = cls.__mapper__
    # What `cls(**values)` does first (the mapper's init event): configure the mappers
    # if any are new. `configure_mappers()` itself walks every registry, ~4 µs a call.
    mapper._check_configure()
    obj = mapper.class_manager.new_instance()
    obj.__dict__.update(values)
    return obj


_TICKET_KEYS = tuple(c.key for c in _T.columns)


def detached_ticket(values: dict[str, Any], queue_name: str) -> Ticket:
    """A detached Ticket carrying `values`, with its queue (id and name) attached."""
    ticket = detached(Ticket, values)
    ticket.__dict__["queue"] = detached(Queue, {"id": values["queue_id"], "name": queue_name})
    return ticket


def ticket_snapshot(row: dict[str, Any]) -> Ticket:
    return detached_ticket({k: row[k] for k in _TICKET_KEYS}, row["queue_name"])
