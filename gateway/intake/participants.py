"""Who takes part in a ticket, and whether a message's sender is one of them.

A ticket's participants are its customer (From, and Reply-To when present), the To/Cc
addresses of the mail that opened it and of later mail from participants (never our own
queue addresses, the auto-responder's From, or agents), the sender of a reply by proof,
and addresses an admin adds. With `[participants] same_domain` anyone at the customer's
domain counts too, except at free-mail domains (data/freemail.txt), where only the exact
address does. A follow-up by ticket number from anyone else is a stranger's
(docs/identity.md, "Participants and strangers").

Addresses are compared as mailboxes: case-insensitively (local part included: no mail
system in practice hands `Ana@` and `ana@` to different people), without a trailing dot
on the domain, and without a `+tag` (`ana+support@x` is ana@x's mailbox).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, bindparam, select

from gateway.config import Config
from ticketstore.db import dialect_insert
from ticketstore.models import Participant
from ticketstore.snapshots import TicketSnapshot

from .prepared import Prepared
from .recipients import QueueMap

_P = Participant.__table__
_OF_TICKET = select(_P.c.address, _P.c.source).where(_P.c.ticket_id == bindparam("ticket_id"))
# Sources whose domain is "the customer's domain" for same_domain.
CUSTOMER_SOURCES = ("customer", "reply-to")
# The most addresses one message adds (a Cc list of hundreds is a mailing, not a thread).
MAX_ADDED = 50


def mailbox(address: str) -> str:
    """The mailbox `address` names, as participants are compared and stored."""
    addr = address.strip().strip("<>").strip().lower()
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        return addr
    return f"{local.partition('+')[0] or local}@{domain.rstrip('.')}"


def domain_of(address: str) -> str:
    return mailbox(address).rpartition("@")[2]


@lru_cache(maxsize=8)
def _read_domains(path: str) -> frozenset[str]:
    text = (Path(path).read_text(encoding="utf-8") if path else
            resources.files("gateway.intake").joinpath("data/freemail.txt")
            .read_text(encoding="utf-8"))
    return frozenset(d for line in text.splitlines()
                     if (d := line.partition("#")[0].strip().lower().rstrip(".")))


def freemail_domains(config: Config) -> frozenset[str]:
    """The shipped list (or `freemail_file` instead), plus `freemail_domains`."""
    pc = config.participants
    path = str(config.path(pc.freemail_file)) if pc.freemail_file else ""
    return _read_domains(path) | {d.lower().rstrip(".") for d in pc.freemail_domains}


@dataclass(frozen=True)
class Circle:
    """A ticket's participants, as read for one message."""

    addresses: dict[str, str]  # mailbox -> how it became a participant
    domains: frozenset[str]  # everyone at these counts (same_domain)

    def why(self, address: str) -> str | None:
        """Why `address` takes part, or None when it does not."""
        box = mailbox(address)
        if not box:
            return None
        if box in self.addresses:
            return f"{box} is a participant ({self.addresses[box]})"
        dom = box.rpartition("@")[2]
        if dom in self.domains:
            return f"{box} is at the customer's domain {dom} (same_domain)"
        return None


@dataclass(frozen=True)
class SenderCheck:
    participant: bool
    why: str


class ParticipantRules:
    """The configured participant rules; built once per intake, shared between threads."""

    def __init__(self, config: Config, queues: QueueMap) -> None:
        self.same_domain = config.participants.same_domain
        self.freemail = freemail_domains(config)
        self.queues = queues
        ours = set(config.participants.agents)
        ours.update(a for q in config.queues for a in q.notify)
        if config.autoresponse.from_address:
            ours.add(config.autoresponse.from_address)
        self.ours = frozenset(mailbox(a) for a in ours)

    def is_ours(self, address: str) -> bool:
        """A queue address (with or without +tag), the responder's From, or an agent."""
        return self.queues.lookup(address) is not None or mailbox(address) in self.ours

    def circle(self, conn: Connection, ticket: TicketSnapshot) -> Circle:
        rows = conn.execute(_OF_TICKET, {"ticket_id": ticket.id}).all()
        addresses = {mailbox(r.address): r.source for r in rows}
        if ticket.customer_address:  # a ticket from before participants were stored
            addresses.setdefault(mailbox(ticket.customer_address), "customer")
        domains: set[str] = set()
        if self.same_domain:
            domains = {a.rpartition("@")[2] for a, source in addresses.items()
                       if source in CUSTOMER_SOURCES}
            domains = {d for d in domains if d and d not in self.freemail}
        return Circle(addresses, frozenset(domains))

    def judge(self, circle: Circle, p: Prepared) -> SenderCheck:
        """Is `p`'s From a participant (or one of our agents, who may write to every
        ticket) whose identity nothing contradicts?"""
        address = p.msg.from_address
        hit = circle.why(address) if address else None
        if hit is None and address and mailbox(address) in self.ours:
            hit = f"{mailbox(address)} is one of our agents"
        if hit is None:
            return SenderCheck(False, f"{address or '(no From)'} is not a participant")
        if p.verdict.aligned_failed:
            return SenderCheck(False, f"{hit}, but a DKIM signature for its domain failed: "
                                      "treated as a stranger")
        if p.verdict.aligned:
            return SenderCheck(True, f"{hit}; identity proven by an aligned DKIM pass")
        return SenderCheck(True, hit)

    def from_message(self, p: Prepared, known: Iterable[str] = (), sender: str = "",
                     ) -> list[tuple[str, str]]:
        """(mailbox, source) of the addresses `p` makes participants, but `known` ones.

        `sender` "customer": the From and Reply-To are the new ticket's customer; "from":
        the From of a reply by proof; "": To and Cc only.
        """
        m = p.msg
        pairs: list[tuple[str, str]] = []
        if sender and m.from_address:
            pairs.append((m.from_address, sender))
        if sender == "customer":
            pairs += [(a, "reply-to") for a in m.reply_to]
        pairs += [(a, "to") for a in m.to] + [(a, "cc") for a in m.cc]
        seen = set(known)
        out: list[tuple[str, str]] = []
        for address, source in pairs:
            box = mailbox(address)
            if "@" not in box or box in seen or self.is_ours(box):
                continue
            seen.add(box)
            out.append((box, source))
        return out[:MAX_ADDED]


def add_participants(conn: Connection, ticket_id: int, pairs: list[tuple[str, str]],
                     now: dt.datetime) -> None:
    """Insert (mailbox, source) pairs; one already there (a concurrent writer) is kept."""
    if not pairs:
        return
    stmt = dialect_insert(conn.dialect.name)(_P).on_conflict_do_nothing()
    conn.execute(stmt, [{"ticket_id": ticket_id, "address": a[:320], "source": s,
                         "added_at": now} for a, s in pairs])


def remove_participant(conn: Connection, ticket_id: int, address: str) -> bool:
    result = conn.execute(_P.delete().where(_P.c.ticket_id == ticket_id,
                                            _P.c.address == mailbox(address)))
    return bool(result.rowcount)
