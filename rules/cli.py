"""`ticketgate rules check` and `ticketgate rules test MESSAGE.eml [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.runtime import load_or_exit

from .advice import identity_warnings
from .evaluate import MATCHED, NOT_MATCHED
from .reader import check_rules, rule_files


def cmd_check(args: argparse.Namespace) -> int:
    """Report every problem as `file:line: rule 'name': what is wrong`; exit 1 if any.
    Warnings (rules.advice) are printed too and do not change the exit code."""
    config = load_or_exit(args.config)
    directory = config.path(config.rules.dir)
    if not directory.is_dir():
        print(f"{directory}: no rule directory: no rules, mail is routed by recipient")
        return 0
    ruleset, problems = check_rules(directory, config.queue_names, config.rules.max_match_chars)
    for p in problems:
        print(p)
    for warning in identity_warnings(ruleset):
        print(warning)
    files = len(rule_files(directory))
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"ok: {len(ruleset.rules)} rules in {files} files in {directory}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Dry run: explain every rule's verdict and the final route. Changes nothing."""
    from gateway.mail.envelope import Envelope

    from .dryrun import dry_run

    config = load_or_exit(args.config)
    try:
        raw = Path(args.message).read_bytes()
    except OSError as exc:
        print(f"ticketgate rules test: {exc}", file=sys.stderr)
        return 66
    envelope = Envelope(mail_from=args.sender, rcpt_tos=tuple(args.recipient))
    result = dry_run(config, raw, envelope)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return 1 if result.problems else 0
    out = []
    for p in result.problems:
        out.append(f"problem: {p}")
    if result.problems:
        out.append("(rules with problems are left out below)")
    p = result.prepared
    out.append(f"message: from {p.msg.from_address or '(none)'}, subject {p.msg.subject!r}, "
               f"{len(p.raw)} bytes")
    out.append("classification: " + ("; ".join(p.classification.reasons) or "none"))
    out.append(f"sender: {p.verdict.summary()}")
    out.append(f"rules: {len(result.ruleset.rules)} loaded from "
               f"{config.path(config.rules.dir)}")
    for t in result.decision.trace:
        mark = {MATCHED: "MATCH", NOT_MATCHED: "no   "}.get(t.status, "skip ")
        where = f"{Path(t.file).name}:{t.line}"
        out.append(f"  {mark} {t.rule} ({where}): {t.reason}")
        if t.applied:
            out.append(f"        sets {', '.join(t.applied)}")
        if t.overruled:
            out.append(f"        kept earlier value of {', '.join(t.overruled)} "
                       "(first rule wins; use override = true)")
    r = result.decision.route
    out.append("route:")
    out.append(f"  queue:        {result.queue} ({result.queue_source})")
    out.append(f"  priority:     {r.priority if r.priority is not None else '3 (default)'}")
    out.append(f"  state:        {r.state or 'new (default)'}")
    out.append(f"  tags:         {', '.join(r.tags) or '-'}")
    out.append(f"  customer:     {r.customer or '-'}")
    out.append(f"  thread_key:   {r.thread_key or '-'}")
    out.append(f"  ignore:       {'yes' if r.ignore else 'no'}")
    out.append(f"  ticket:       {result.ticket_note}")
    if result.threading:
        th = result.threading
        out.append(f"  threaded by:  {th['path']}: {th['why']}")
        if th["sender"]:
            out.append(f"  sender:       {th['sender']}")
    out.append(f"  auto-response: {'yes' if result.auto_response else 'no'}: "
               f"{result.auto_response_why}")
    for n in result.notes:
        out.append(f"note: {n}")
    out.append("(dry run: nothing was stored or sent)")
    print("\n".join(out))
    return 1 if result.problems else 0
