"""`ticketgate held list|release|discard`: strangers' follow-ups held back by a queue's
`stranger_follow_up = "hold"` (docs/identity.md, "Participants and strangers")."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import select

from gateway.intake.release import ReleaseError, discard_held, release_held
from ticketstore.models import HeldMessage, Ticket, utcnow

from .runtime import build_intake, load_or_exit, open_store


def held_json(h: HeldMessage, number: str | None) -> dict[str, Any]:
    return {"id": h.id, "ticket": number, "state": h.state, "from": h.from_address,
            "subject": h.subject, "message_id": h.message_id, "size": len(h.raw),
            "created_at": h.created_at.isoformat(),
            "decided_at": h.decided_at.isoformat() if h.decided_at else None}


def cmd_list(args: argparse.Namespace) -> int:
    store = open_store(load_or_exit(args.config))
    try:
        with store.factory() as session:
            q = (select(HeldMessage, Ticket.number)
                 .outerjoin(Ticket, HeldMessage.ticket_id == Ticket.id).order_by(HeldMessage.id))
            if not args.all:
                q = q.where(HeldMessage.state == "held")
            rows = [held_json(h, number) for h, number in session.execute(q).all()]
    finally:
        store.dispose()
    if args.json:
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    if not rows:
        print("no held messages")
        return 0
    for r in rows:
        print(f"{r['id']:>6}  {r['state']:<9}  {r['created_at'][:16]}  ticket {r['ticket']}  "
              f"from {r['from'] or '(none)'}  {' '.join(r['subject'].split())[:60]!r}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    store = open_store(config)
    try:
        intake = build_intake(config, store)
        with store.engine.begin() as conn:
            d = release_held(intake, conn, args.id, args.to)
    except ReleaseError as exc:
        print(f"ticketgate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"held message {args.id} released onto ticket {d.ticket_number} "
          f"(article {d.article_id}, flagged as a stranger's)")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    store = open_store(load_or_exit(args.config))
    try:
        with store.engine.begin() as conn:
            discard_held(conn, args.id, utcnow())
    except ReleaseError as exc:
        print(f"ticketgate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"held message {args.id} discarded")
    return 0
