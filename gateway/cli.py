"""`ticketgate` command line: one parser, handlers imported only when they run.

The parser names each handler as "module:function", so `ticketgate pipe` imports the
pipe and nothing of the server, templates or DKIM: process start-up is most of what a
pipe delivery costs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway.sysexits import EX_USAGE


def _handler(p: argparse.ArgumentParser, target: str) -> None:
    p.set_defaults(_handler=target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ticketgate", description="Turn support email into helpdesk tickets."
    )
    parser.add_argument("-c", "--config", help="config file (default: $TICKETGATE_CONFIG, "
                        "./ticketgate.toml, built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="write a commented starter config, rules and templates")
    p.add_argument("dir", help="folder to create the files in")
    _handler(p, "gateway.cli_core:cmd_init")

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    _handler(dbsub.add_parser("upgrade", help="create or upgrade the schema (Alembic)"),
             "gateway.cli_core:cmd_db_upgrade")

    p = sub.add_parser("pipe", help="read one message from stdin (pipe(8), procmail, .forward)")
    p.add_argument("-f", "--sender", help="envelope sender (${sender}); '' for <>")
    p.add_argument("-r", "--recipient", action="append", default=[],
                   help="envelope recipient (${recipient}); repeatable")
    p.add_argument("recipients", nargs="*", help="more envelope recipients")
    _handler(p, "gateway.pipe:cmd_pipe")

    p = sub.add_parser("spool", help="messages quarantined after an unexpected error")
    spsub = p.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    _handler(spsub.add_parser("list", help="list quarantined messages and their errors"),
             "gateway.cli_core:cmd_spool_list")
    _handler(spsub.add_parser("replay", help="process quarantined messages again"),
             "gateway.cli_core:cmd_spool_replay")

    p = sub.add_parser("tickets", help="ask about tickets")
    tsub = p.add_subparsers(dest="tickets_command", metavar="ACTION", required=True)
    q = tsub.add_parser("list", help="list tickets")
    q.add_argument("--queue")
    q.add_argument("--state", choices=["new", "open", "pending", "closed"])
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_tickets:cmd_list")
    q = tsub.add_parser("show", help="one ticket with its articles and history")
    q.add_argument("number")
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_tickets:cmd_show")
    q = tsub.add_parser("set", help="change state, queue or priority (recorded as events)")
    q.add_argument("number")
    q.add_argument("--state", choices=["new", "open", "pending", "closed"])
    q.add_argument("--queue")
    q.add_argument("--priority", type=int, choices=range(1, 6), metavar="1-5")
    _handler(q, "gateway.cli_tickets:cmd_set")

    q = tsub.add_parser("participants", help="who takes part in a ticket (add, remove, list)")
    q.add_argument("action", choices=["add", "remove", "list"])
    q.add_argument("number")
    q.add_argument("address", nargs="?")
    q.add_argument("--json", action="store_true", help="with list: JSON")
    _handler(q, "gateway.cli_tickets:cmd_participants")

    p = sub.add_parser("held", help="strangers' follow-ups held back (stranger_follow_up = hold)")
    hsub = p.add_subparsers(dest="held_command", metavar="ACTION", required=True)
    q = hsub.add_parser("list", help="list held messages")
    q.add_argument("--all", action="store_true", help="released and discarded ones too")
    q.add_argument("--json", action="store_true")
    _handler(q, "gateway.cli_held:cmd_list")
    q = hsub.add_parser("release", help="store a held message on its ticket (or --to another)")
    q.add_argument("id", type=int)
    q.add_argument("--to", metavar="NUMBER", help="the ticket to store it on")
    _handler(q, "gateway.cli_held:cmd_release")
    q = hsub.add_parser("discard", help="drop a held message (its record is kept)")
    q.add_argument("id", type=int)
    _handler(q, "gateway.cli_held:cmd_discard")

    p = sub.add_parser("article", help="articles")
    asub = p.add_subparsers(dest="article_command", metavar="ACTION", required=True)
    q = asub.add_parser("raw", help="write an article's original bytes to stdout")
    q.add_argument("id", type=int)
    _handler(q, "gateway.cli_tickets:cmd_article_raw")

    p = sub.add_parser("serve", help="run the LMTP/SMTP server, outbox worker and status page")
    # `ticketgate serve -v` (as `make run` writes it) as well as `ticketgate -v serve`.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging (envelope addresses included)")
    # Internal: an intake worker process started by the daemon (gateway/server/worker.py).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _handler(p, "gateway.server_cli:cmd_serve")

    p = sub.add_parser("rules", help="rule files")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    _handler(rsub.add_parser("check", help="validate every rule file"), "rules.cli:cmd_check")
    q = rsub.add_parser("test", help="dry-run the rules on a message; changes nothing")
    q.add_argument("message", help="an .eml file")
    q.add_argument("-f", "--sender", help="envelope sender to assume")
    q.add_argument("-r", "--recipient", action="append", default=[])
    q.add_argument("--json", action="store_true")
    _handler(q, "rules.cli:cmd_test")

    p = sub.add_parser("templates", help="auto-response templates")
    tpsub = p.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    _handler(tpsub.add_parser("check", help="render every template against a sample"),
             "autoresponse.cli:cmd_templates_check")

    p = sub.add_parser("outbox", help="outgoing mail")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    q = osub.add_parser("list", help="list outbox entries")
    q.add_argument("--state", choices=["pending", "sending", "sent", "failed"])
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    _handler(q, "autoresponse.cli:cmd_outbox_list")
    _handler(osub.add_parser("send", help="deliver due entries now (for pipe-only sites)"),
             "autoresponse.cli:cmd_outbox_send")
    q = osub.add_parser("retry", help="send a failed entry again")
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
    return int(func(args) or 0)
