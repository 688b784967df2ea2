"""The `serve` service that reloads the rules on SIGHUP and when a rule file changes.

It registers a reload in `ctx.reload_hooks` (SIGHUP), then polls the rule files' names,
mtimes and sizes every `[rules] watch_interval` seconds (0 = SIGHUP only). Each reload
publishes `ctx.state["rules"]` for the status page; a failed one records its problems
with `ctx.record_error("rules", ...)` and the old rules stay in force. The rules in
force at start and after each reload are checked for what `rules check` warns of
(rules/advice.py), logged as warnings. The router is
looked up on `ctx.intake` every time: a config reload swaps in a new intake.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.config import Config
from gateway.intake.ports import Router

from .advice import identity_warnings
from .router import ReloadingRouter

log = logging.getLogger("ticketgate.rules")


class _HasRouter(Protocol):
    router: Router


class Context(Protocol):
    """What the watcher uses of the daemon's context (gateway.daemon.DaemonContext)."""

    config: Config
    intake: _HasRouter
    reload_hooks: list[Callable[[], None]]
    rules_changed: list[Callable[[], Awaitable[bool]]]
    counters: collections.Counter[str]
    state: dict[str, Any]

    def record_error(self, source: str, message: str) -> None: ...


def current_router(ctx: Context) -> ReloadingRouter | None:
    router = ctx.intake.router
    return router if isinstance(router, ReloadingRouter) else None


def reload_and_publish(ctx: Context) -> bool:
    """Reload the rules; True if the new ones are in force (or there is nothing to reload)."""
    router = current_router(ctx)
    if router is None:
        return True
    problems = router.reload()
    for p in problems:
        ctx.record_error("rules", str(p))
    ctx.counters["rules_reloads_failed" if problems else "rules_reloads"] += 1
    ctx.state["rules"] = router.status()
    if not problems:
        warn_about(router)
    return not problems


def warn_about(router: ReloadingRouter) -> None:
    """Log what `rules check` warns of (rules/advice.py): the rules load all the same."""
    for warning in identity_warnings(router.ruleset):
        log.warning("%s", warning)


async def run(ctx: Context, stopping: asyncio.Event) -> None:
    router = current_router(ctx)
    if router is not None:
        ctx.state["rules"] = router.status()
        warn_about(router)
    def on_sighup() -> None:
        reload_and_publish(ctx)

    ctx.reload_hooks.append(on_sighup)
    interval = ctx.config.rules.watch_interval
    if interval <= 0:
        await stopping.wait()
        return
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
        if stopping.is_set():
            break
        try:
            router = current_router(ctx)
            if router is not None and router.changed():
                log.info("rule files changed in %s, reloading", router.directory)
                for propagate in list(ctx.rules_changed):
                    await propagate()
                await loop.run_in_executor(None, reload_and_publish, ctx)
        except Exception as exc:  # the watcher must outlive a surprise (e.g. a vanished dir)
            log.exception("rule watcher error")
            ctx.record_error("rules", f"watcher: {type(exc).__name__}: {exc}")
