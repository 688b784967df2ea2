"""`ticketgate serve`: the LMTP/SMTP daemon (see gateway/server/)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable

from .runtime import load_or_exit, setup_logging
from .sysexits import EX_CONFIG


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (a dependency on POSIX), else asyncio's own.

    uvloop costs the listeners less CPU per message (docs/benchmarks.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if not args.verbose:
        # aiosmtpd logs every command line (addresses included) at INFO: customer data.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = load_or_exit(args.config)
    from rules.errors import RulesError
    from ticketstore.db import StoreUnavailable

    from .server.app import serve

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            if getattr(args, "worker", False):
                from .server.worker import run_worker

                return runner.run(run_worker(config, args.config))
            return runner.run(serve(config, args.config, args.verbose))
    except (RulesError, StoreUnavailable) as exc:
        # An admin's mistake, not a bug: say what to fix, no traceback (systemd shows stderr).
        print(f"ticketgate serve: not starting: {exc}", file=sys.stderr)
        return EX_CONFIG
