"""`ticketgate` command line: one parser, handlers imported only when they run.

The parser names each handler as "module:function", so `ticketgate pipe` imports the
pipe and nothing of the server, templates or DKIM: process start-up is most of what a
pipe delivery costs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from gateway.sysexits import EX_USAGE

# `ticketgate tickets list -c FILE` as well as `ticketgate -c FILE tickets list`.
_CONFIG_AFTER = argparse.ArgumentParser(add_help=False)
_CONFIG_AFTER.add_argument("-c", "--config", default=argparse.SUPPRESS,
                           help="config file (also accepted before the command)")
# A number as pasted from a subject: `[Ticket#2026…]`, `Ticket#2026…`, `Ticket#: 2026…`.
_PASTED_NUMBER = re.compile(r"\[?\s*(?:[^\d\[\]]*[#:]\s*)?(\d+)\s*\]?")


def _handler(p: argparse.ArgumentParser, target: str) -> None:
    p.set_defaults(_handler=target)


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, parents=[_CONFIG_AFTER])
    return parser


def ticket_number(text: str) -> str:
    """A ticket number, also when pasted with its subject tag around it."""
    found = _PASTED_NUMBER.fullmatch(text.strip())
    return found.group(1) if found else text.strip()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticketgate", description="Turn support email into helpdesk tickets."
    )
    parser.add_argument("-c", "--config", help="config file (default: $TICKETGATE_CONFIG, "
                        "./ticketgate.toml, built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "init", "write a commented starter config, rules and templates")
    p.add_argument("dir", help="folder to create the files in; given as an absolute path, "
                   "the config gets absolute paths")
    p.add_argument("--state-dir", help="with an absolute DIR: the database and spool folder "
                   "(e.g. /var/lib/ticketgate; default DIR/var)")
    p.add_argument("--run-dir", help="with an absolute DIR: the hand-off socket's folder "
                   "(e.g. /run/ticketgate; default STATE_DIR/run)")
    p.add_argument("--secret-only", action="store_true",
                   help="write only the site secret (site.secret), for a site made before it")
    _handler(p, "gateway.cli_core:cmd_init")

    p = _command(sub, "db", "database schema")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    _handler(_command(dbsub, "upgrade", "create or upgrade the schema (Alembic)"),
             "gateway.cli_core:cmd_db_upgrade")

    p = _command(sub, "pipe", "read one message from stdin (pipe(8), procmail, .forward)")
    p.add_argument("-f", "--sender", help="envelope sender (${sender}); '' for <>")
    p.add_argument("-r", "--recipient", action="append", default=[],
                   help="envelope recipient (${recipient}); repeatable")
    p.add_argument("recipients", nargs="*", help="more envelope recipients")
    _handler(p, "gateway.pipe:cmd_pipe")

    p = _command(sub, "spool", "messages quarantined after an unexpected error")
    spsub = p.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    _handler(_command(spsub, "list", "list quarantined messages and their errors"),
             "gateway.cli_core:cmd_spool_list")
    _handler(_command(spsub, "replay", "process quarantined messages again"),
             "gateway.cli_core:cmd_spool_replay")

    p = _command(sub, "tickets", "ask about tickets")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    q = _command(tsub, "list", "list tickets")
    q.add_argument("--queue")
    q.add_argument("--state", choices=["new", "open", "pending", "closed"])
    q.add_argument("--limit", type=positive_int, default=100)
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_tickets:cmd_list")
    q = _command(tsub, "show", "one ticket with its articles and history")
    q.add_argument("number", type=ticket_number)
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_tickets:cmd_show")
    q = _command(tsub, "set", "change state, queue or priority (recorded as events)")
    q.add_argument("number", type=ticket_number)
    q.add_argument("--state", choices=["new", "open", "pending", "closed"])
    q.add_argument("--queue")
    q.add_argument("--priority", type=int, choices=range(1, 6), metavar="1-5",
                   help="1 (lowest) to 5 (highest)")
    q.add_argument("--by", metavar="NAME", help="who makes the change, for the history "
                   "(default: the Unix user)")
    _handler(q, "gateway.cli_tickets:cmd_set")

    q = _command(tsub, "participants", "who takes part in a ticket (add, remove, list)")
    q.add_argument("action", choices=["add", "remove", "list"])
    q.add_argument("number", type=ticket_number)
    q.add_argument("address", nargs="?")
    q.add_argument("--json", action="store_true", help="with list: JSON")
    _handler(q, "gateway.cli_tickets:cmd_participants")

    p = _command(sub, "held", "strangers' follow-ups held back (stranger_follow_up = hold)")
    hsub = p.add_subparsers(dest="held_command", metavar="ACTION", required=True)
    q = _command(hsub, "list", "list held messages")
    q.add_argument("--all", action="store_true", help="released and discarded ones too")
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_held:cmd_list")
    q = _command(hsub, "release", "store a held message on its ticket (or --to another)")
    q.add_argument("id", type=int)
    q.add_argument("--to", metavar="NUMBER", type=ticket_number, help="the ticket to store it on")
    _handler(q, "gateway.cli_held:cmd_release")
    q = _command(hsub, "discard", "drop a held message (its record is kept)")
    q.add_argument("id", type=int)
    _handler(q, "gateway.cli_held:cmd_discard")

    p = _command(sub, "article", "articles")
    asub = p.add_subparsers(dest="article_command", metavar="ACTION", required=True)
    q = _command(asub, "raw", "write an article's original bytes to stdout")
    q.add_argument("id", type=int)
    _handler(q, "gateway.cli_tickets:cmd_article_raw")

    p = _command(sub, "serve", "run the LMTP/SMTP server, outbox worker and status page")
    # `ticketgate serve -v` (as `make run` writes it) as well as `ticketgate -v serve`.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging (envelope addresses included)")
    # Internal: an intake worker process started by the daemon (gateway/server/worker.py).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _handler(p, "gateway.server_cli:cmd_serve")

    p = _command(sub, "rules", "rule files")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    _handler(_command(rsub, "check", "validate every rule file"), "rules.cli:cmd_check")
    q = _command(rsub, "test", "dry-run the rules on a message; changes nothing")
    q.add_argument("message", help="an .eml file")
    q.add_argument("-f", "--sender", help="envelope sender to assume")
    q.add_argument("-r", "--recipient", action="append", default=[])
    q.add_argument("--json", action="store_true")
    _handler(q, "rules.cli:cmd_test")

    p = _command(sub, "templates", "auto-response templates")
    tpsub = p.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    _handler(_command(tpsub, "check", "render every template against a sample"),
             "autoresponse.cli:cmd_templates_check")

    p = _command(sub, "outbox", "outgoing mail")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    q = _command(osub, "list", "list outbox entries")
    q.add_argument("--state", choices=["pending", "sending", "sent", "failed"])
    q.add_argument("--limit", type=positive_int, default=100)
    q.add_argument("--json", action="store_true")
    _handler(q, "autoresponse.cli:cmd_outbox_list")
    _handler(_command(osub, "send", "deliver due entries now (for pipe-only sites)"),
             "autoresponse.cli:cmd_outbox_send")
    q = _command(osub, "retry", "send a failed entry again")
    q.add_argument("id", type=int)
    _handler(q, "autoresponse.cli:cmd_outbox_retry")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        from gateway import __version__

        print(f"ticketgate {__version__}")
        return 0
    target = getattr(args, "_handler", None)
    if target is None:
        build_parser().print_help(sys.stderr)
        return EX_USAGE
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        status = int(func(args) or 0)
        sys.stdout.flush()  # here, not at exit, where a closed pipe cannot be caught
        return status
    except BrokenPipeError:
        # `ticketgate tickets list | head`: the reader has gone, end quietly like Unix
        # tools do (and keep Python from complaining when it flushes stdout at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE
    except Exception as exc:
        from gateway.cli_core import report_failure

        code = report_failure(exc, args)
        if code is None:
            raise
        return code
