"""The daemon's outbox worker: deliver due mail every few seconds until stopped.

SMTP and the database are blocking, so each round runs in a thread; the event loop
(LMTP listeners, status page) never waits on the smarthost. Delivery failures go to
`ctx.record_error` so the status page shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .outbox import Outbox

if TYPE_CHECKING:
    from gateway.daemon import DaemonContext

log = logging.getLogger("ticketgate.outbox")

POLL_INTERVAL = 2.0


async def run(ctx: DaemonContext, stopping: asyncio.Event,
              poll_interval: float = POLL_INTERVAL) -> None:
    outbox: Outbox | None = None
    while not stopping.is_set():
        if outbox is None or outbox.config is not ctx.config:  # new config after SIGHUP
            outbox = Outbox(ctx.config, ctx.store.factory)
            ctx.state["outbox"] = {"smarthost": ctx.config.outbound.smarthost}
        try:
            result = await asyncio.to_thread(outbox.run_until_idle)
        except Exception as exc:  # the database is away: keep the worker alive, say so
            log.exception("outbox worker round failed")
            ctx.record_error("outbox", f"{type(exc).__name__}: {exc}")
        else:
            ctx.counters["outbox_sent"] += result.sent
            ctx.counters["outbox_retried"] += result.retried
            ctx.counters["outbox_failed"] += result.failed
            for error in result.errors[:10]:
                ctx.record_error("outbox", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=poll_interval)
