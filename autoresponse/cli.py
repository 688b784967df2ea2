"""`ticketgate templates check` and `ticketgate outbox list|send|retry`."""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import select

from gateway.runtime import load_or_exit, open_existing_store, open_store, setup_logging
from gateway.terminal import printable
from ticketstore.models import OutboxMessage, Ticket

from .templates import (
    EVENTS,
    TemplateError,
    Templates,
    render_one,
    sample_context,
    stranger_context,
)


def check_templates(templates: Templates) -> list[str]:
    """Every problem found, as "file:line: message"; empty when all is well."""
    problems: list[str] = []
    for name in templates.all_files():
        event = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if event not in EVENTS:
            problems.append(f"{templates.directory / name}: unknown event {event!r} "
                            f"(expected one of {', '.join(EVENTS)})")
            continue
        contexts = [sample_context(templates.language) | {"event": event}]
        if event != "agent-notification":  # also as answered to a non-participant
            contexts.append(stranger_context(contexts[0]))
        try:
            for context in contexts:
                render_one(templates, templates.env.get_template(name), context)
        except TemplateError as exc:
            problems.append(str(exc))
        except Exception as exc:  # a syntax error surfaces while loading
            lineno = getattr(exc, "lineno", None)
            where = f"{templates.directory / name}:{lineno}" if lineno else \
                f"{templates.directory / name}"
            problems.append(f"{where}: {type(exc).__name__}: {exc}")
    for event in EVENTS:
        if not any(True for _ in _existing(templates, event)):
            problems.append(f"{templates.directory}: no text template for {event!r} "
                            f"(default/{templates.language}/{event}.txt)")
    return problems


def _existing(templates: Templates, event: str) -> list[str]:
    files = set(templates.all_files())
    return [n for n in templates.candidates("default", event, "txt") if n in files]


def cmd_templates_check(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    tcfg = config.templates
    templates = Templates(config.path(tcfg.dir), tcfg.language, tcfg.overrides)
    problems = check_templates(templates)
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(templates.all_files())
    if problems:
        print(f"{len(problems)} problem(s) in {count} template(s) under {templates.directory}",
              file=sys.stderr)
        return 1
    print(f"{count} template(s) under {templates.directory}: OK")
    return 0


def _row(r: OutboxMessage, number: str | None) -> dict[str, object]:
    return {
        "id": r.id, "kind": r.kind, "state": r.state, "attempts": r.attempts,
        "mail_from": r.mail_from, "rcpt_to": r.rcpt_to, "message_id": r.message_id,
        "ticket_id": r.ticket_id, "ticket": number, "created_at": r.created_at.isoformat(),
        "next_attempt_at": r.next_attempt_at.isoformat(),
        "sent_at": r.sent_at.isoformat() if r.sent_at else None, "last_error": r.last_error,
    }


def cmd_outbox_list(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    store = open_existing_store(config)
    try:
        with store.factory() as session:
            query = (select(OutboxMessage, Ticket.number)
                     .outerjoin(Ticket, Ticket.id == OutboxMessage.ticket_id)
                     .order_by(OutboxMessage.id.desc()).limit(args.limit))
            if args.state:
                query = query.where(OutboxMessage.state == args.state)
            rows = [_row(r, number) for r, number in session.execute(query)]
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("outbox is empty" + (f" (state {args.state})" if args.state else ""))
        return 0
    print(f"{'ID':>6} {'STATE':<8} {'TRY':>3} {'TICKET':<18} {'KIND':<20} RECIPIENT")
    for r in rows:
        err = f"  {r['last_error']}" if r["last_error"] else ""
        print(printable(f"{r['id']:>6} {r['state']:<8} {r['attempts']:>3} "
                        f"{r['ticket'] or '-':<18} {r['kind']:<20} {r['rcpt_to']}{err}"))
    return 0


def cmd_outbox_send(args: argparse.Namespace) -> int:
    """Deliver what is due. Exit 0 even when some entries wait for a retry (they are
    safe in the outbox; a timer runs this every minute and should not fail each time the
    smarthost is down); the summary line says how many."""
    from .limits import prune_old_counts
    from .outbox import Outbox

    config = load_or_exit(args.config)
    setup_logging(args.verbose)
    store = open_store(config)
    try:
        result = Outbox(config, store.factory).run_until_idle()
        prune_old_counts(store.factory)  # sites without the daemon: the timer does it
    finally:
        store.dispose()
    print(f"sent {result.sent}, retry later {result.retried}, failed {result.failed}")
    for error in result.errors:
        print(error, file=sys.stderr)
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from .outbox import Outbox

    config = load_or_exit(args.config)
    store = open_store(config)
    try:
        ok = Outbox(config, store.factory).retry(args.id)
    finally:
        store.dispose()
    if not ok:
        print(f"outbox entry {args.id} does not exist or is not failed/pending", file=sys.stderr)
        return 1
    print(f"outbox entry {args.id} queued for delivery")
    return 0
