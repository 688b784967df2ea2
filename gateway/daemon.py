"""What the `serve` daemon shares with the services that run beside the listeners.

The LMTP/SMTP listeners, the outbox worker, the status page and the rule-file watcher
all run in one asyncio loop. Each background service is an `async def run(ctx, stopping)`
named in SERVICES ("module:function"); it runs until `stopping` is set. SIGHUP calls
every function in `ctx.reload_hooks` (config/rules reload) without dropping connections.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.intake.core import Intake
from ticketstore.models import utcnow

from .config import Config
from .runtime import Store
from .tempfails import TempfailTracker

# Background services started by `ticketgate serve`, in this order.
SERVICES: list[str] = ["autoresponse.worker:run", "rules.watch:run", "gateway.status.server:run"]


@dataclass
class RecentError:
    at: dt.datetime
    source: str  # "rules", "outbox", "intake", ...
    message: str


@dataclass
class DaemonContext:
    config: Config
    store: Store
    intake: Intake
    started_at: dt.datetime = field(default_factory=utcnow)
    # Called on SIGHUP (and by watchers); each must keep the old state if the new one is bad.
    reload_hooks: list[Callable[[], None]] = field(default_factory=list)
    # Awaited when rule files changed, before this process reloads them (the intake
    # worker processes reload first; see gateway/server/workers.py). True: all did.
    rules_changed: list[Callable[[], Awaitable[bool]]] = field(default_factory=list)
    # The latest errors worth showing an admin (rule reload errors, delivery failures).
    errors: collections.deque[RecentError] = field(
        default_factory=lambda: collections.deque(maxlen=50)
    )
    # In-memory counters for what the database cannot tell (e.g. temp-failed deliveries).
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    # Each delivery's result (stored or 451), for /healthz's temp-failure checks.
    tempfails: TempfailTracker = field(default_factory=TempfailTracker)
    # Free-form state services publish for the status page (e.g. "rules": {...}).
    state: dict[str, Any] = field(default_factory=dict)

    def record_error(self, source: str, message: str) -> None:
        self.errors.appendleft(RecentError(utcnow(), source, message))
