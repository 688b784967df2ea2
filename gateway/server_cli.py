"""`ticketgate serve`: the LMTP/SMTP daemon (see gateway/server/)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from .runtime import load_or_exit, setup_logging


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if not args.verbose:
        # aiosmtpd logs every command line (addresses included) at INFO: customer data.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = load_or_exit(args.config)
    from .server.app import serve
    from .server.malloc import fix_mmap_threshold

    fix_mmap_threshold()

    return asyncio.run(serve(config, args.config))
