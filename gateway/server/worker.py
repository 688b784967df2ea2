"""One intake worker process (`ticketgate serve --worker`, started by `WorkerPool`).

It runs the same `Daemon` as a single-process server, without listeners of its own:
connections arrive as file descriptors on the channel from the master. It reports to
the master what only it knows (see `workers.py`): readiness, closed connections, and
once a second its counters, recent errors and message durations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from typing import Any

from gateway.config import Config
from gateway.daemon import RecentError

from .app import Daemon
from .workers import PING, WORKER_CHANNEL_ENV

log = logging.getLogger("ticketgate.server")

REPORT_INTERVAL = 1.0
# Durations sent per report at most (a report must fit one SEQPACKET datagram).
MAX_DURATIONS = 2000


class Reporter:
    """Collects what the master merges; `flush` sends it as one datagram."""

    def __init__(self, daemon: Daemon, channel: socket.socket) -> None:
        self.daemon = daemon
        self.channel = channel
        self._sent_counters: dict[str, int] = {}
        self._newest_sent: RecentError | None = None

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.channel.send(json.dumps(message).encode())
        except OSError as exc:  # the master has gone: we stop when the channel closes
            log.debug("report not sent: %s", exc)

    def connection_closed(self) -> None:
        self.send({"closed": 1})

    def flush(self) -> None:
        ctx, handler = self.daemon.ctx, self.daemon.handler
        if ctx is None or handler is None:
            return
        counters = {k: v - self._sent_counters.get(k, 0) for k, v in ctx.counters.items()
                    if v != self._sent_counters.get(k, 0)}
        self._sent_counters = dict(ctx.counters)
        errors: list[RecentError] = []
        for error in ctx.errors:  # newest first, up to the newest one already sent
            if error is self._newest_sent:
                break
            errors.append(error)
        if ctx.errors:
            self._newest_sent = ctx.errors[0]
        durations = handler.durations[-MAX_DURATIONS:]
        handler.durations.clear()
        results = (handler.results or [])[-MAX_DURATIONS:]
        if handler.results:
            handler.results.clear()
        if counters or errors or durations or results:
            self.send({
                "deliveries": [int(ok) for ok in results],
                "counters": counters,
                # Oldest first: the master's appendleft keeps the newest first.
                "errors": [[e.at.isoformat(), e.source, e.message] for e in reversed(errors)],
                "seconds": durations,
            })


async def run_worker(config: Config, config_path: str | None) -> int:
    channel = socket.socket(fileno=int(os.environ.pop(WORKER_CHANNEL_ENV)))
    channel.setblocking(False)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # No services: the master runs them (status page, outbox, rule watcher) and tells
    # the workers to reload; each reload re-reads the rules with the config.
    daemon = Daemon(config, config_path, services=[], listen=False, drain_timeout=60.0)
    reporter = Reporter(daemon, channel)

    def on_channel() -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, 16, 8)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the master has gone
                loop.remove_reader(channel.fileno())
                stop.set()
                return
            if data == PING:
                reporter.send({"pong": True})
                continue
            for fd in fds:
                daemon.adopt(socket.socket(fileno=fd), lmtp=data != b"smtp")

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C in a terminal reaches the whole process group: the master alone decides
    # (a worker stopping by itself would be restarted as if it had crashed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        reporter.send({"reloaded": await daemon.reload()})

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # A SIGHUP before the daemon has started must not end the process (the default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    await daemon.start()
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    assert daemon.handler is not None
    daemon.handler.on_closed = reporter.connection_closed
    daemon.handler.durations = []
    daemon.handler.results = []
    loop.add_reader(channel.fileno(), on_channel)
    reporter.send({"ready": True})

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            reporter.flush()

    task = loop.create_task(report())
    await stop.wait()
    await daemon.stop()
    task.cancel()
    reporter.flush()
    channel.close()
    return 0
