"""Follow-up detection: which stored ticket, if any, a message continues, and how.

A message is linked by **proof** when In-Reply-To/References name a Message-ID this
ticket sent or received (our answers too, even while they wait in the outbox), and by
**number** when only a ticket number (subject, and body with `[tickets] body_threading`)
that exists and is plausible for the generator links it. Tried in this order:
1. the number's ticket, by proof when the message also proves it;
2. the number's ticket, when the sender is one of its participants;
3. the ticket the message proves (a client that kept the thread but not the subject);
4. for a bounce, the ticket of our mail it returns (the Message-ID in it);
5. the number's ticket, as a stranger's follow-up: the queue's `stranger_follow_up`
   decides (gateway/intake/policy.py);
6. the rules' `thread_key`, on a ticket that is not closed.
A From that is a participant but whose aligned DKIM signature failed is a stranger's on
paths 1-3 and 5 (docs/identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import CompoundSelect, Connection, bindparam, union_all

from gateway.config import TicketsConfig
from gateway.mail.classify import BOUNCE, bounced_message_ids
from gateway.mail.subject import find_numbers
from ticketstore import numbers
from ticketstore.models import Article, OutboxMessage, Ticket
from ticketstore.snapshots import SELECT_TICKETS, TicketSnapshot, ticket_snapshot

from .columns import message_id_key, thread_key
from .participants import Circle, ParticipantRules, SenderCheck
from .prepared import Prepared

# The most numbers and Message-IDs looked up for one message. A References header can be
# long (60+ IDs in corporate threads); RFC 5322 keeps the thread's root first and clients
# trim the middle, so the newest and the oldest IDs are looked at.
MAX_NUMBERS = 20
NEWEST_REFERENCES = 30
OLDEST_REFERENCES = 20
MAX_MESSAGE_IDS = 60
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


PROOF, NUMBER, BOUNCE_PATH, THREAD_KEY = "proof", "number", "bounce", "thread-key"
# The paths on which the sender's participation is judged (and its To/Cc join).
THREADED_PATHS = (PROOF, NUMBER)


@dataclass(frozen=True)
class FollowUp:
    """The ticket a message follows up, the path that linked it, and its sender."""

    ticket: TicketSnapshot
    path: str  # proof | number | bounce | thread-key
    why: str  # what linked it, for history and `rules test`
    # Whether the From takes part in the ticket (None on the bounce/thread-key paths).
    sender: SenderCheck | None = None
    circle: Circle | None = None

    @property
    def stranger(self) -> bool:
        return self.sender is not None and not self.sender.participant


def find_follow_up(conn: Connection, config: TicketsConfig, rules: ParticipantRules,
                   p: Prepared) -> FollowUp | None:
    """The ticket `p` follows up and how (module docstring), or None for a new ticket."""
    by_number = _by_number(conn, config, p)
    proof = _by_message_id(conn, reference_ids(p), p)
    bounced = None
    if proof is None and BOUNCE in p.classification.labels:
        bounced = _by_message_id(conn, tuple(bounced_message_ids(p.raw)), p, outgoing=True)
    if by_number is not None:
        ticket, number = by_number
        circle = rules.circle(conn, ticket)
        if proof is not None and proof[0].id == ticket.id:
            return _proven(conn, proof, rules, circle, p)
        sender = rules.judge(circle, p)
        if sender.participant or (proof is None and bounced is None):
            return FollowUp(ticket, NUMBER, f"ticket number {number}", sender, circle)
    if proof is not None:
        return _proven(conn, proof, rules, None, p)
    if bounced is not None:
        return FollowUp(bounced[0], BOUNCE_PATH, f"a bounce of our message <{bounced[1]}>")
    if p.route.thread_key:
        row = conn.execute(_BY_THREAD_KEY,
                           {"key": thread_key(p.route.thread_key)}).mappings().first()
        if row is not None:
            return FollowUp(ticket_snapshot(row), THREAD_KEY,
                            f"the rules' thread_key {p.route.thread_key!r}")
    return None


def _proven(conn: Connection, proof: tuple[TicketSnapshot, str], rules: ParticipantRules,
            circle: Circle | None, p: Prepared) -> FollowUp:
    """A reply by proof threads whoever sent it, unless its From is forged (a participant
    whose aligned signature failed); the From of a proven reply becomes a participant."""
    ticket, found = proof
    circle = circle or rules.circle(conn, ticket)
    sender = rules.judge(circle, p)
    if not sender.participant and not p.verdict.aligned_failed:
        sender = SenderCheck(True, f"{p.msg.from_address or '(no From)'} replied to "
                                   "a message of the ticket")
    return FollowUp(ticket, PROOF, f"In-Reply-To/References name <{found}>, a message of "
                                   "this ticket", sender, circle)


def reference_ids(p: Prepared) -> tuple[str, ...]:
    """In-Reply-To (the parent), then References newest first, then its oldest (the
    thread's root): bounded on both ends of a long header."""
    refs = p.msg.references
    newest = tuple(reversed(refs[-NEWEST_REFERENCES:]))
    oldest = refs[:max(0, min(OLDEST_REFERENCES, len(refs) - NEWEST_REFERENCES))]
    return p.msg.in_reply_to[:10] + newest + oldest


def _by_number(conn: Connection, config: TicketsConfig, p: Prepared,
               ) -> tuple[TicketSnapshot, str] | None:
    candidates = find_numbers(p.msg.subject, config.hook)
    if config.body_threading:
        candidates += find_numbers(p.msg.text[:BODY_SEARCHED], config.hook)
    plausible = list(dict.fromkeys(
        n for n in candidates if numbers.is_plausible(config.generator, n)))[:MAX_NUMBERS]
    if not plausible:
        return None
    rows = conn.execute(_BY_NUMBERS, {"numbers": plausible}).mappings()
    by_number = {row["number"]: row for row in rows}
    return next(((ticket_snapshot(by_number[n]), n) for n in plausible if n in by_number),
                None)


def _by_message_id(conn: Connection, ids: tuple[str, ...], p: Prepared,
                   outgoing: bool = False) -> tuple[TicketSnapshot, str] | None:
    """The ticket of the first of `ids` that is a stored Message-ID (not `p`'s own)."""
    keys = (message_id_key(i) for i in ids)  # as stored: a long one is cut (columns.py)
    wanted = [i for i in dict.fromkeys(keys) if i != p.message_id][:MAX_MESSAGE_IDS]
    if not wanted:
        return None
    rows = conn.execute(_OF_OUTGOING if outgoing else _OF_MESSAGES, {"ids": wanted}).mappings()
    by_id = {row["found"]: row for row in rows}
    return next(((ticket_snapshot(by_id[i]), i) for i in wanted if i in by_id), None)
