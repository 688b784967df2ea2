"""The daemon's outbox worker: deliver due mail every few seconds until stopped.

SMTP and the database are blocking, so each round runs in a thread; the event loop
(LMTP listeners, status page) never waits on the smarthost. Delivery failures go to
`ctx.record_error` so the status page shows them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from .limits import prune_old_counts
from .outbox import Outbox

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from gateway.config import Config

log = logging.getLogger("ticketgate.outbox")

POLL_INTERVAL = 2.0
PRUNE_INTERVAL = 3600.0


class _Store(Protocol):
    @property
    def factory(self) -> sessionmaker[Session]: ...


class ServiceContext(Protocol):
    """What the worker uses of the daemon's context (a service is given one)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> _Store: ...

    @property
    def counters(self) -> collections.Counter[str]: ...

    @property
    def state(self) -> dict[str, Any]: ...

    def record_error(self, source: str, message: str) -> None: ...


async def run(ctx: ServiceContext, stopping: asyncio.Event,
              poll_interval: float = POLL_INTERVAL) -> None:
    outbox: Outbox | None = None
    pruned = -PRUNE_INTERVAL
    while not stopping.is_set():
        if time.monotonic() - pruned >= PRUNE_INTERVAL:  # answer counts of past days
            pruned = time.monotonic()
            try:
                await asyncio.to_thread(prune_old_counts, ctx.store.factory)
            except Exception:
                log.exception("pruning old answer counts failed")
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
