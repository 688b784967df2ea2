"""`ticketgate serve`: the LMTP/SMTP daemon (see gateway/server/)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .runtime import load_or_exit, setup_logging

EX_CONFIG = 78  # sysexits.h: configuration error


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if not args.verbose:
        # aiosmtpd logs every command line (addresses included) at INFO: customer data.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = load_or_exit(args.config)
    from .server.app import serve
    from .server.malloc import fix_mmap_threshold

    fix_mmap_threshold()

    from rules.errors import RulesError
    from ticketstore.db import StoreUnavailable

    try:
        if getattr(args, "worker", False):
            from .server.worker import run_worker

            return asyncio.run(run_worker(config, args.config))
        return asyncio.run(serve(config, args.config, args.verbose))
    except (RulesError, StoreUnavailable) as exc:
        # An admin's mistake, not a bug: say what to fix, no traceback (systemd shows stderr).
        print(f"ticketgate serve: not starting: {exc}", file=sys.stderr)
        return EX_CONFIG
