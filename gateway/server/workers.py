"""Intake worker processes: the master accepts connections and hands each to a worker.

Why processes: one Python process parses and stores on one core at a time (the GIL),
so `[lmtp] workers` processes are what lets four connections go faster than one on a
machine with several cores. Why the master accepts instead of letting every worker
accept on the shared socket: LMTP clients keep their connections open, and a worker
that wakes first would take all of them; the master gives each new connection to the
worker with the fewest open ones.

The master (`WorkerPool`) talks to each worker over a SOCK_SEQPACKET socket pair:
- master -> worker: b"lmtp" or b"smtp" with the accepted connection's fd attached;
  b"ping" every `[lmtp] heartbeat_interval`;
- worker -> master: JSON messages, `{"ready": true}` once it serves, `{"closed": n}`
  when connections end, `{"reloaded": ok}` after a SIGHUP, `{"pong": true}` for a ping,
  and every second `{"counters": {...}, "errors": [...], "seconds": [...],
  "deliveries": [1, 0, ...]}` so the status page, /metrics and /healthz show the whole
  daemon.

The master counts the open connections of all workers: past `[lmtp] max_connections`
a new one is answered `421 4.3.2` and closed. A worker that dies is restarted (its open
connections are lost; the MTA retries). One whose event loop stops answering (stopped,
deadlocked, stuck in a loop) gets no new connections once three pings went unanswered,
shows as not ready, and is killed and restarted after `[lmtp] heartbeat_timeout`; so is
a restarted one that is not ready that long after its launch. The
master forwards SIGHUP to the workers and, on stop, lets them drain before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import failures
from gateway.daemon import DaemonContext, RecentError
from gateway.intake.outcome import Outcome
from gateway.status.metrics import PROCESSING_SECONDS

from .handler import Refusals
from .listeners import ListenAddress

log = logging.getLogger("ticketgate.server")

START_TIMEOUT = 60.0
RESTART_DELAY = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long before dying starts the backoff afresh
WORKER_CHANNEL_ENV = "TICKETGATE_WORKER_CHANNEL"
# The per-message outcome counters (what the status page counts as a worker's messages).
MESSAGE_COUNTERS = frozenset(f"server.{o.value}" for o in Outcome)
PING = b"ping"
MISSED_PINGS = 3  # unanswered pings after which a worker gets no new connections


def worker_count(configured: int) -> int:
    """`[lmtp] workers`: 0 means one per CPU (at most 8); 1 means no worker processes."""
    if configured > 0:
        return configured
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(eq=False)
class Worker:
    index: int
    proc: asyncio.subprocess.Process
    channel: socket.socket
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    messages: int = 0
    restarts: int = 0
    reloaded: asyncio.Event = field(default_factory=asyncio.Event)
    reload_ok: bool = True
    heard_at: float = 0.0  # loop time of its latest message (any message is a sign of life)
    responsive: bool = True  # answered a recent ping: may get connections

    @property
    def serving(self) -> bool:
        """Ready, running, answering: what dispatch and the status page count on."""
        return (self.ready.is_set() and self.responsive and self.proc.returncode is None
                and self.channel.fileno() >= 0)


class WorkerPool:
    """Starts `count` workers, dispatches connections to them, merges their reports."""

    def __init__(self, ctx: DaemonContext, config_path: str | None, count: int,
                 verbose: bool = False) -> None:
        self.ctx = ctx
        self.config_path = config_path
        self.count = count
        self.verbose = verbose
        self.workers: list[Worker] = []
        self.stopping = False
        self.refusals = Refusals(ctx)
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, listeners: Sequence[tuple[ListenAddress, socket.socket]]) -> None:
        """Start every worker, wait until each serves, then start accepting."""
        for index in range(self.count):
            self.workers.append(await self._spawn(index))
        try:
            await asyncio.wait_for(self._all_ready(), START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"intake workers not ready after {START_TIMEOUT:.0f} s") from None
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            worker.heard_at = loop.time()
            self._tasks.append(loop.create_task(self._supervise(worker)))
        self._tasks.append(loop.create_task(self._heartbeat()))
        for address, sock in listeners:
            sock.setblocking(False)
            self._tasks.append(loop.create_task(self._accept(address, sock)))
        self._publish()

    async def _all_ready(self) -> None:
        for worker in self.workers:
            waiter = asyncio.ensure_future(worker.ready.wait())
            exited = asyncio.ensure_future(worker.proc.wait())
            await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            exited.cancel()
            if not worker.ready.is_set():
                raise RuntimeError(f"intake worker {worker.index} exited with code "
                                   f"{worker.proc.returncode} before it was ready (see its log)")

    async def _spawn(self, index: int) -> Worker:
        worker = Worker(index, *await self._launch(index))
        self._attach(worker)
        return worker

    async def _launch(self, index: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env[WORKER_CHANNEL_ENV] = str(theirs.fileno())
        cmd = [sys.executable, "-m", "gateway"]
        if self.config_path:
            cmd += ["-c", self.config_path]
        cmd += ["serve", "--worker"] + (["-v"] if self.verbose else [])
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        log.info("intake worker %d started (pid %d)", index, proc.pid)
        return proc, ours

    def _attach(self, worker: Worker) -> None:
        asyncio.get_running_loop().add_reader(worker.channel.fileno(), self._receive, worker)

    async def _supervise(self, worker: Worker) -> None:
        """Restart a worker that exits while the daemon is not stopping.

        One that keeps dying young (a broken database, say) is restarted after 1, 2, 4 ...
        up to 30 s; meanwhile the watchdog stops vouching for the daemon.
        """
        loop = asyncio.get_running_loop()
        started, failures = loop.time(), 0
        while True:
            code = await worker.proc.wait()
            self._close_channel(worker)
            if self.stopping:
                return
            failures = failures + 1 if loop.time() - started < STABLE_AFTER else 1
            delay = min(RESTART_MAX, RESTART_DELAY * 2 ** (failures - 1))
            log.error("intake worker %d (pid %d) exited with code %s; restarting in %.0f s",
                      worker.index, worker.proc.pid, code, delay)
            self.ctx.record_error("daemon", f"intake worker {worker.index} exited with {code}")
            self.ctx.counters["server.worker_restarts"] += 1
            worker.ready = asyncio.Event()
            worker.connections = 0
            self._publish()
            await asyncio.sleep(delay)
            while not self.stopping:
                try:
                    worker.proc, worker.channel = await self._launch(worker.index)
                    break
                except OSError as exc:  # out of processes or fds: try again later
                    log.error("cannot restart intake worker %d: %s", worker.index, exc)
                    await asyncio.sleep(RESTART_MAX)
            if self.stopping:
                return
            started = worker.heard_at = loop.time()
            worker.responsive = True
            worker.restarts += 1
            self._attach(worker)

    async def _heartbeat(self) -> None:
        """Ping every worker; stop dispatching to a silent one, kill one silent too long.

        A worker's reports come from its event loop, the same loop that serves its
        connections: no answer means its sessions get none either.
        """
        loop = asyncio.get_running_loop()
        while True:
            lmtp = self.ctx.config.lmtp
            await asyncio.sleep(lmtp.heartbeat_interval)
            now = loop.time()
            for worker in self.workers:
                if worker.proc.returncode is not None:
                    worker.heard_at = now  # gone: _supervise restarts it
                    continue
                if not worker.ready.is_set():  # restarted: heard_at is when it was launched
                    if now - worker.heard_at > lmtp.heartbeat_timeout:
                        self._kill(worker, f"not ready {now - worker.heard_at:.0f} s after "
                                           "its restart")
                        worker.heard_at = now
                    continue
                with contextlib.suppress(OSError):  # full: the worker is not reading
                    worker.channel.send(PING)
                silent = now - worker.heard_at
                if worker.responsive and silent > MISSED_PINGS * lmtp.heartbeat_interval:
                    worker.responsive = False
                    log.warning("intake worker %d (pid %d) does not answer: no new "
                                "connections for it", worker.index, worker.proc.pid)
                    self._publish()
                if silent > lmtp.heartbeat_timeout:
                    self._kill(worker, f"hung for {silent:.0f} s")
                    worker.heard_at = now  # one kill per hang, not one per tick

    def _kill(self, worker: Worker, why: str) -> None:
        """Kill a hung worker; `_supervise` restarts it."""
        log.error("intake worker %d (pid %d) %s: killed", worker.index, worker.proc.pid, why)
        self.ctx.record_error("daemon", f"intake worker {worker.index} {why}: killed")
        self.ctx.counters["server.worker_hung"] += 1
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()

    @property
    def alive(self) -> bool:
        """Every worker is running (what the systemd watchdog vouches for)."""
        return all(w.proc.returncode is None for w in self.workers)

    async def reload(self, timeout: float = 30.0) -> bool:
        """SIGHUP every worker and wait until each has reloaded (True if all did)."""
        waiting = []
        for worker in self.workers:
            # One still starting (after a restart) reads the config as it is anyway.
            if worker.ready.is_set() and worker.proc.returncode is None:
                worker.reloaded = asyncio.Event()
                worker.reload_ok = False
                worker.proc.send_signal(signal.SIGHUP)
                waiting.append(worker)
        if not waiting:
            return True
        _done, pending = await asyncio.wait(
            [asyncio.ensure_future(w.reloaded.wait()) for w in waiting], timeout=timeout)
        for task in pending:
            task.cancel()
        return not pending and all(w.reload_ok for w in waiting)

    async def stop(self, timeout: float) -> None:
        """Stop accepting; each worker finishes its messages and exits (SIGKILL at timeout)."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [w for w in self.workers if w.proc.returncode is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        if running:
            waits = [asyncio.ensure_future(w.proc.wait()) for w in running]
            _done, pending = await asyncio.wait(waits, timeout=timeout)
            for worker in running:
                if worker.proc.returncode is None:
                    log.error("intake worker %d did not stop in %.0f s: killed",
                              worker.index, timeout)
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=10)
        for worker in self.workers:
            self._receive(worker)  # the final reports
            self._close_channel(worker)

    def _close_channel(self, worker: Worker) -> None:
        if worker.channel.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            worker.channel.close()

    # -- connections ------------------------------------------------------------------------

    async def _accept(self, address: ListenAddress, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        protocol = address.protocol.encode()
        while True:
            try:
                conn, _peer = await loop.sock_accept(sock)
            except (ConnectionAbortedError, BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.error("accept on %s failed: %s", address, exc)
                await asyncio.sleep(0.5)
                continue
            self._dispatch(protocol, conn)

    def _dispatch(self, protocol: bytes, conn: socket.socket) -> None:
        """Hand `conn` to the least busy serving worker; 421 if none or too many are open."""
        with conn:
            open_now = sum(w.connections for w in self.workers)
            if open_now >= self.ctx.config.lmtp.max_connections:
                self.refusals.refused(open_now)
                with contextlib.suppress(OSError):
                    conn.send(failures.S421_TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                return
            ready = [w for w in self.workers if w.serving]
            for worker in sorted(ready, key=lambda w: (w.connections, w.index)):
                try:
                    socket.send_fds(worker.channel, [protocol], [conn.fileno()])
                except OSError:
                    continue  # that worker's channel is gone or full: try the next
                worker.connections += 1
                return
            with contextlib.suppress(OSError):
                conn.send(failures.S421_NO_WORKER.encode() + b"\r\n")

    # -- reports ----------------------------------------------------------------------------

    def _receive(self, worker: Worker) -> None:
        while worker.channel.fileno() >= 0:
            try:
                data = worker.channel.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the worker has gone: _supervise sees its exit
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
                return
            try:
                message: dict[str, Any] = json.loads(data)
            except ValueError:
                log.warning("intake worker %d sent an unreadable report", worker.index)
                continue
            self._apply(worker, message)

    def _apply(self, worker: Worker, message: dict[str, Any]) -> None:
        worker.heard_at = asyncio.get_running_loop().time()
        if not worker.responsive:
            worker.responsive = True
            log.info("intake worker %d answers again", worker.index)
            self._publish()
        if message.get("ready"):
            worker.ready.set()
            self._publish()
        if "reloaded" in message:
            worker.reload_ok = bool(message["reloaded"])
            worker.reloaded.set()
        worker.connections = max(0, worker.connections - int(message.get("closed", 0)))
        counters = message.get("counters") or {}
        self.ctx.counters.update({str(k): int(v) for k, v in counters.items()})
        worker.messages += sum(int(v) for k, v in counters.items() if k in MESSAGE_COUNTERS)
        for at, source, text in message.get("errors") or []:
            self.ctx.errors.appendleft(RecentError(dt.datetime.fromisoformat(at), source, text))
        for ok in message.get("deliveries") or []:  # in order: /healthz's 451 streak
            self.ctx.tempfails.record(bool(ok))
        if message.get("seconds"):
            child = PROCESSING_SECONDS.labels(entry="lmtp")
            for seconds in message["seconds"]:
                child.observe(float(seconds))
        if counters or message.get("closed"):
            self._publish()

    def _publish(self) -> None:
        """Per-worker figures for the status page."""
        self.ctx.state["workers"] = [
            {"index": w.index, "pid": w.proc.pid, "ready": w.serving,
             "connections": w.connections, "messages": w.messages, "restarts": w.restarts}
            for w in self.workers
        ]
