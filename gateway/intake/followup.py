"""Follow-up detection: which stored ticket, if any, a message continues.

Tried in this order, the first hit wins (DESIGN.md, "Threading"):
1. a ticket number in the subject (and the body, with `[tickets] body_threading`) that
   exists and is plausible for the generator (its check digit is right);
2. In-Reply-To / References naming a stored Message-ID, nearest first: our own answers'
   too, even while they wait in the outbox;
3. for a bounce, the Message-ID of our mail it returns;
4. the rules' `thread_key`, on a ticket that is not closed.
"""

from __future__ import annotations

from sqlalchemy import CompoundSelect, Connection, bindparam, union_all

from gateway.config import TicketsConfig
from gateway.mail.classify import BOUNCE, bounced_message_ids
from gateway.mail.subject import find_numbers
from ticketstore import numbers
from ticketstore.models import Article, OutboxMessage, Ticket
from ticketstore.snapshots import SELECT_TICKETS, TicketSnapshot, ticket_snapshot

from .columns import message_id_key, thread_key
from .prepared import Prepared

# The most numbers and Message-IDs looked up for one message (a References header can be
# long; the nearest ones are the ones that matter).
MAX_NUMBERS = 20
MAX_MESSAGE_IDS = 50
# How much of the body is searched for ticket numbers with body_threading.
BODY_SEARCHED = 20000

_T, _A, _O = Ticket.__table__, Article.__table__, OutboxMessage.__table__
_BY_NUMBERS = SELECT_TICKETS.where(_T.c.number.in_(bindparam("numbers", expanding=True)))
_BY_THREAD_KEY = (SELECT_TICKETS.where(_T.c.thread_key == bindparam("key"), _T.c.state != "closed")
                  .order_by(_T.c.id.desc()).limit(1))


def _tickets_of_messages(outgoing: bool) -> CompoundSelect:
    """Tickets by stored Message-ID: of their articles (only outgoing ones if
    `outgoing`), and of our answers still in the outbox.

    An answer gets its outgoing article only once it is sent (autoresponse/sent.py), so
    until then its outbox row is where its Message-ID is found.
    """
    ids = bindparam("ids", expanding=True)
    articles = (SELECT_TICKETS.add_columns(_A.c.message_id.label("found"))
                .join(_A, _A.c.ticket_id == _T.c.id).where(_A.c.message_id.in_(ids)))
    if outgoing:
        articles = articles.where(_A.c.direction == "out")
    outbox = (SELECT_TICKETS.add_columns(_O.c.message_id.label("found"))
              .join(_O, _O.c.ticket_id == _T.c.id).where(_O.c.message_id.in_(ids)))
    return union_all(articles, outbox)


_OF_MESSAGES = _tickets_of_messages(outgoing=False)
_OF_OUTGOING = _tickets_of_messages(outgoing=True)


def find_ticket(conn: Connection, config: TicketsConfig, p: Prepared) -> TicketSnapshot | None:
    """The ticket `p` follows up, or None for a new ticket."""
    ticket = _by_number(conn, config, p)
    if ticket is None:
        # In-Reply-To names the parent; References ends with it: nearest first.
        ticket = _by_message_id(conn, p.msg.in_reply_to + tuple(reversed(p.msg.references)), p)
    if ticket is None and BOUNCE in p.classification.labels:
        ticket = _by_message_id(conn, tuple(bounced_message_ids(p.raw)), p, outgoing=True)
    if ticket is None and p.route.thread_key:
        row = conn.execute(_BY_THREAD_KEY, {"key": thread_key(p.route.thread_key)}
                           ).mappings().first()
        ticket = ticket_snapshot(row) if row is not None else None
    return ticket


def _by_number(conn: Connection, config: TicketsConfig, p: Prepared) -> TicketSnapshot | None:
    candidates = find_numbers(p.msg.subject, config.hook)
    if config.body_threading:
        candidates += find_numbers(p.msg.text[:BODY_SEARCHED], config.hook)
    plausible = list(dict.fromkeys(
        n for n in candidates if numbers.is_plausible(config.generator, n)))[:MAX_NUMBERS]
    if not plausible:
        return None
    rows = conn.execute(_BY_NUMBERS, {"numbers": plausible}).mappings()
    by_number = {row["number"]: row for row in rows}
    return next((ticket_snapshot(by_number[n]) for n in plausible if n in by_number), None)


def _by_message_id(conn: Connection, ids: tuple[str, ...], p: Prepared,
                   outgoing: bool = False) -> TicketSnapshot | None:
    """The ticket of the first of `ids` that is a stored Message-ID (not `p`'s own)."""
    keys = (message_id_key(i) for i in ids)  # as stored: a long one is cut (columns.py)
    wanted = [i for i in dict.fromkeys(keys) if i != p.message_id][:MAX_MESSAGE_IDS]
    if not wanted:
        return None
    rows = conn.execute(_OF_OUTGOING if outgoing else _OF_MESSAGES, {"ids": wanted}).mappings()
    by_id = {row["found"]: row for row in rows}
    return next((ticket_snapshot(by_id[i]) for i in wanted if i in by_id), None)
