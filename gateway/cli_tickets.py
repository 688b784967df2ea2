"""CLI handlers: tickets list/show/set/participants and article raw.

The `--json` shapes are documented in docs/cli-json.md and kept stable: fields are only
ever added, never renamed or removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ticketstore.models import (
    TICKET_STATES,
    Article,
    Event,
    Participant,
    Queue,
    Ticket,
    utcnow,
)

from .runtime import Store, cli_user, load_or_exit, open_existing_store
from .sysexits import EX_USAGE
from .terminal import printable


def ticket_json(t: Ticket, linked: dict[int, str] | None = None) -> dict[str, Any]:
    """`linked` maps ticket ids to numbers, for the ticket this one continues."""
    linked_number = None
    if t.linked_ticket_id is not None:
        linked_number = (linked or {}).get(t.linked_ticket_id)
    return {
        "number": t.number,
        "title": t.title,
        "queue": t.queue.name,
        "state": t.state,
        "priority": t.priority,
        "customer": {"address": t.customer_address, "name": t.customer_name,
                     "domain": t.customer_domain, "id": t.customer_id},
        "tags": list(t.tags or []),
        "thread_key": t.thread_key,
        "created_at": t.created_at.isoformat(),
        "updated_at": t.updated_at.isoformat(),
        "closed_at": t.closed_at.isoformat() if t.closed_at else None,
        "linked_ticket": linked_number,
    }


def article_json(a: Article) -> dict[str, Any]:
    return {
        "id": a.id,
        "message_id": a.message_id,
        "direction": a.direction,
        "kind": a.kind,
        "from": a.from_address,
        "from_name": a.from_name,
        "to": _split(a.to),
        "cc": _split(a.cc),
        "subject": a.subject,
        "size": a.size,
        "attachments": [
            {"id": x.id, "filename": x.filename, "content_type": x.content_type,
             "size": x.size, "sha256": x.sha256} for x in a.attachments
        ],
        "created_at": a.created_at.isoformat(),
        "verdict": {"dkim": a.dkim, "aligned": a.aligned, "dmarc": a.dmarc,
                    "aligned_failed": a.aligned_failed, "source": a.verdict_source},
        "from_stranger": a.from_stranger,
    }


def _sender(a: Article) -> str:
    """The verdict in a table cell: `-` when it was not checked."""
    if a.verdict_source == "off":
        return "-"
    return a.dkim + (" aligned" if a.aligned else " ALIGNED-FAILED" if a.aligned_failed else "")


def participant_json(p: Participant) -> dict[str, Any]:
    return {"address": p.address, "source": p.source, "added_at": p.added_at.isoformat()}


def _participants(session: Session, ticket_id: int) -> list[Participant]:
    return list(session.execute(select(Participant).where(Participant.ticket_id == ticket_id)
                                .order_by(Participant.id)).scalars())


def _split(addresses: str) -> list[str]:
    return [a.strip() for a in addresses.split(",") if a.strip()]


def _linked_numbers(session: Session, tickets: list[Ticket]) -> dict[int, str]:
    ids = {t.linked_ticket_id for t in tickets if t.linked_ticket_id is not None}
    if not ids:
        return {}
    rows = session.execute(select(Ticket.id, Ticket.number).where(Ticket.id.in_(ids))).all()
    return {r.id: r.number for r in rows}


def event_json(e: Event) -> dict[str, Any]:
    return {"id": e.id, "kind": e.kind, "article_id": e.article_id, "detail": e.detail,
            "created_at": e.created_at.isoformat()}


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[Store]:
    """The configured store, disposed of (connections closed) when the command ends."""
    store = open_existing_store(load_or_exit(args.config))
    try:
        yield store
    finally:
        store.dispose()


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(o.rstrip() for o in out)


def _short(text: str, n: int) -> str:
    text = printable(" ".join(text.split()))
    return text if len(text) <= n else text[: n - 1] + "…"


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store, store.factory() as session:
        q = select(Ticket).join(Queue).order_by(Ticket.id.desc()).limit(args.limit)
        if args.queue:
            if _unknown_queue(session, args.queue):
                return 1
            q = q.where(Queue.name == args.queue)
        if args.state:
            q = q.where(Ticket.state == args.state)
        tickets = session.execute(q).scalars().all()
        if args.json:
            linked = _linked_numbers(session, list(tickets))
            json.dump([ticket_json(t, linked) for t in tickets], sys.stdout, indent=2,
                      ensure_ascii=False)
            print()
            return 0
        rows = [[t.number, t.queue.name, t.state, str(t.priority), _short(t.customer_address, 30),
                 t.created_at.strftime("%Y-%m-%d %H:%M"), _short(t.title, 50)] for t in tickets]
        print(_table(rows, ["NUMBER", "QUEUE", "STATE", "PRIO", "CUSTOMER", "CREATED",
                            "TITLE"]))
    return 0


def _load_ticket(session: Session, number: str) -> Ticket | None:
    return session.execute(
        select(Ticket).where(Ticket.number == number).options(
            selectinload(Ticket.articles).selectinload(Article.attachments),
            selectinload(Ticket.events),
        )
    ).scalar_one_or_none()


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args) as store, store.factory() as session:
        t = _load_ticket(session, args.number)
        if t is None:
            print(f"ticketgate: no ticket {args.number}", file=sys.stderr)
            return 1
        if args.json:
            data = ticket_json(t, _linked_numbers(session, [t]))
            data["articles"] = [article_json(a) for a in t.articles]
            data["history"] = [event_json(e) for e in t.events]
            data["participants"] = [participant_json(p) for p in _participants(session, t.id)]
            json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
            print()
            return 0
        print(printable(f"Ticket {t.number}  [{t.state}]  queue {t.queue.name}  "
                        f"priority {t.priority}"))
        print(f"Title:    {printable(t.title)}")
        print(printable(f"Customer: {t.customer_name} <{t.customer_address}>"
                        + (f"  id {t.customer_id}" if t.customer_id else "")))
        if t.tags:
            print(f"Tags:     {printable(', '.join(t.tags))}")
        people = _participants(session, t.id)
        print("Participants: " + printable(", ".join(f"{p.address} ({p.source})" for p in people)
                                            or "-"))
        print(f"Created:  {t.created_at:%Y-%m-%d %H:%M:%S %Z}   Updated: "
              f"{t.updated_at:%Y-%m-%d %H:%M:%S %Z}")
        print("\nArticles:")
        rows = [[str(a.id), a.direction, a.kind + (" STRANGER" if a.from_stranger else ""),
                 a.created_at.strftime("%Y-%m-%d %H:%M"), _short(a.from_address, 30),
                 _sender(a), _short(a.subject, 40), _short(a.message_id, 40)]
                for a in t.articles]
        print(_table(rows, ["ID", "DIR", "KIND", "CREATED", "FROM", "SENDER", "SUBJECT",
                            "MESSAGE-ID"]))
        print("\nHistory:")
        rows = [[e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.kind,
                 _short(json.dumps(e.detail, ensure_ascii=False), 80)] for e in t.events]
        print(_table(rows, ["WHEN", "EVENT", "DETAIL"]))
    return 0


def _unknown_queue(session: Session, name: str) -> bool:
    """True (and said on stderr, with the valid names) when no queue is called `name`."""
    known = session.execute(select(Queue.name).order_by(Queue.name)).scalars().all()
    if name in known:
        return False
    print(f"ticketgate: unknown queue {name!r} (known: {', '.join(known) or 'none yet'})",
          file=sys.stderr)
    return True


def _ticket(session: Session, number: str) -> Ticket | None:
    """The ticket to change; None (and a message saying so) when there is none."""
    t = session.execute(select(Ticket).where(Ticket.number == number)).scalar_one_or_none()
    if t is None:
        print(f"ticketgate: no ticket {number}", file=sys.stderr)
    return t


def cmd_set(args: argparse.Namespace) -> int:
    if args.state is None and args.queue is None and args.priority is None:
        print("ticketgate: nothing to change (use --state, --queue or --priority)",
              file=sys.stderr)
        return EX_USAGE
    now, by = utcnow(), args.by or cli_user()
    with _store(args) as store, store.factory() as session, session.begin():
        t = _ticket(session, args.number)
        if t is None:
            return 1
        changes: list[Event] = []

        def change(what: str, old: object, new: object) -> None:
            changes.append(Event(ticket_id=t.id, kind=f"{what}-changed", created_at=now,
                                 detail={"from": old, "to": new, "by": by, "via": "cli"}))

        if args.state and args.state != t.state:
            assert args.state in TICKET_STATES
            change("state", t.state, args.state)
            t.state = args.state
            t.closed_at = now if args.state == "closed" else None
        if args.queue and args.queue != t.queue.name:
            if _unknown_queue(session, args.queue):
                return 1
            change("queue", t.queue.name, args.queue)
            t.queue_id = session.execute(
                select(Queue.id).where(Queue.name == args.queue)).scalar_one()
        if args.priority and args.priority != t.priority:
            change("priority", t.priority, args.priority)
            t.priority = args.priority
        if changes:
            t.updated_at = now
            session.add_all(changes)
        print(f"ticket {t.number}: " + (", ".join(
            f"{e.kind.removesuffix('-changed')} {e.detail['from']} -> {e.detail['to']}"
            for e in changes) or "unchanged"))
    return 0


def cmd_article_raw(args: argparse.Namespace) -> int:
    with _store(args) as store, store.factory() as session:
        raw = session.execute(select(Article.raw).where(Article.id == args.id)).scalar()
        if raw is None:
            print(f"ticketgate: no article {args.id}", file=sys.stderr)
            return 1
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return 0


def cmd_participants(args: argparse.Namespace) -> int:
    """`tickets participants add|remove|list NUMBER [ADDRESS]`: changes are history events."""
    from gateway.intake.participants import add_participants, mailbox, remove_participant

    if args.action != "list" and not args.address:
        print(f"ticketgate: participants {args.action} needs an ADDRESS", file=sys.stderr)
        return EX_USAGE
    box = mailbox(args.address or "")
    if args.action != "list" and (box.count("@") != 1 or box.startswith("@")
                                  or box.endswith("@")):
        print(f"ticketgate: {args.address!r} is not an address", file=sys.stderr)
        return EX_USAGE
    now = utcnow()
    with _store(args) as store, store.factory() as session, session.begin():
        t = _ticket(session, args.number)
        if t is None:
            return 1
        known = {p.address for p in _participants(session, t.id)}
        conn = session.connection()
        if args.action == "add" and box not in known:
            add_participants(conn, t.id, [(box, "admin")], now)
            session.add(Event(ticket_id=t.id, kind="participants-added", created_at=now,
                              detail={"added": [{"address": box, "source": "admin"}],
                                      "by": "cli"}))
            print(f"ticket {t.number}: {box} added")
        elif args.action == "add":
            print(f"ticket {t.number}: {box} is already a participant")
        elif args.action == "remove" and remove_participant(conn, t.id, box):
            session.add(Event(ticket_id=t.id, kind="participants-removed", created_at=now,
                              detail={"removed": [box], "by": "cli"}))
            print(f"ticket {t.number}: {box} removed")
        elif args.action == "remove":
            print(f"ticketgate: {box} is not a participant of {t.number}", file=sys.stderr)
            return 1
        else:
            people = _participants(session, t.id)
            if args.json:
                json.dump([participant_json(p) for p in people], sys.stdout, indent=2,
                          ensure_ascii=False)
                print()
            else:
                print(_table([[p.address, p.source, p.added_at.strftime("%Y-%m-%d %H:%M")]
                              for p in people], ["ADDRESS", "SOURCE", "ADDED"]))
    return 0
