"""The `serve` daemon's life cycle: start, reload on SIGHUP, drain and stop on SIGTERM.

Start: open the store, build the intake, start the group-commit writer, bind every
listener, start the background services named in `gateway.daemon.SERVICES`, then
tell systemd READY=1. Stop: stop accepting, let messages already in DATA finish and
get their replies, close the rest with 421, stop the services, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.causes import cause_of
from gateway.config import Config, load_config
from gateway.daemon import SERVICES, DaemonContext
from gateway.failures import S421_SHUTTING_DOWN
from gateway.runtime import build_intake, open_store
from gateway.sysexits import EX_UNAVAILABLE
from ticketstore.writelock import WriterLock, writer_lock_for

from . import sdnotify
from .activation import inherited_sockets
from .groupcommit import GroupCommitter
from .handler import DeliveryHandler
from .listeners import ListenAddress, ListenError, bind, parse_listen
from .preflight import CannotStart, check_can_write, exit_code_for
from .protocol import IntakeLMTP, IntakeSMTP
from .workers import WorkerPool, worker_count

log = logging.getLogger("ticketgate.server")


def listen_addresses(config: Config) -> list[ListenAddress]:
    """Configured LMTP and SMTP listeners, plus the pipe hand-off socket (LMTP).

    The hand-off socket is always served when `[pipe] handoff_socket` is set, so a
    `ticketgate pipe` on the same host finds the daemon without extra configuration.
    """
    base = Path(config.base_dir)
    found = [parse_listen(a, "lmtp", base) for a in config.lmtp.listen]
    found += [parse_listen(a, "smtp", base) for a in config.smtp.listen]
    if config.pipe.handoff_socket:
        handoff = ListenAddress("lmtp", path=config.path(config.pipe.handoff_socket))
        if not any(a.path is not None and a.path.resolve() == handoff.path.resolve()  # type: ignore[union-attr]
                   for a in found):
            found.append(handoff)
    return found


class Daemon:
    """One running `ticketgate serve`; usable in-process (tests) or from the CLI."""

    def __init__(self, config: Config, config_path: str | None = None,
                 drain_timeout: float = 60.0, services: list[str] | None = None,
                 inherited: list[tuple[str, socket.socket]] | None = None,
                 listen: bool = True, verbose: bool = False,
                 spawn_workers: bool = False) -> None:
        self.config = config
        # `[lmtp] workers` applies to `ticketgate serve` only: workers read the config
        # the way the command did, which a daemon built from a Config object (tests,
        # benchmarks) cannot promise; those serve in-process.
        self.spawn_workers = spawn_workers
        # False in a worker process: connections arrive through `adopt` instead.
        self.listen = listen
        self.verbose = verbose
        # Listening sockets from systemd (socket activation); they replace the configured
        # [lmtp]/[smtp] listeners, and systemd, not we, removes their socket files.
        self.inherited = inherited or []
        # None: every service in gateway.daemon.SERVICES (read at start, not import time).
        self.services = services
        self.config_path = config_path
        self.drain_timeout = drain_timeout
        self.stopping = asyncio.Event()
        self.servers: list[tuple[ListenAddress, asyncio.AbstractServer]] = []
        self.sockets: list[tuple[ListenAddress, socket.socket]] = []  # every listening socket
        self.pool: WorkerPool | None = None
        self.ctx: DaemonContext | None = None
        self.committer: GroupCommitter | None = None
        self.handler: DeliveryHandler | None = None
        self._executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                            thread_name_prefix="prepare")
        self._tasks: list[asyncio.Task[None]] = []
        self._created: list[ListenAddress] = []  # listeners we bound (and clean up)
        self._service_tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._hostname = socket.gethostname()
        self._lock: WriterLock | None = None

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        addresses = listen_addresses(config) if self.listen else []
        if self.inherited:
            activated = [(_address_of(proto, sock), sock) for proto, sock in self.inherited]
            paths = {a.path.resolve() for a, _s in activated if a.path is not None}
            # Of our own listeners only the pipe hand-off socket, unless systemd has it.
            ours = [a for a in addresses if a.path is not None
                    and a.path.resolve() not in paths
                    and a.path == config.path(config.pipe.handoff_socket)]
        else:
            activated, ours = [], addresses
        store = await asyncio.to_thread(open_store, config)
        if self.listen:  # the master (or the only process) checks once for the daemon
            try:
                await asyncio.to_thread(check_can_write, store.engine, config)
            except BaseException:
                store.dispose()
                raise
        intake = await asyncio.to_thread(build_intake, config, store)
        if intake.loop_secret is None:
            log.warning("no site secret (%s): our loop header is neither signed nor trusted; "
                        "`ticketgate init --secret-only DIR` makes one (docs/identity.md)",
                        config.verify.site_secret_file)
        self.ctx = DaemonContext(config, store, intake)
        workers = worker_count(config.lmtp.workers) if self.spawn_workers else 1
        if workers == 1:
            # Worker processes (listen=False) write side by side: queue them in the kernel.
            self._lock = None if self.listen else writer_lock_for(store.engine)
            self.committer = GroupCommitter(store.engine, config.lmtp.group_commit_max,
                                            lock=self._lock)
            self.committer.start()
            self.handler = DeliveryHandler(self.ctx, self.committer, self._executor)
        for address, sock in activated:
            self.sockets.append((address, sock))
            log.info("listening (socket activation): %s", address)
        for address in ours:
            self.sockets += [(address, sock) for sock in bind(address)]
            self._created.append(address)
            log.info("listening: %s", address)
        if workers > 1:
            self.pool = WorkerPool(self.ctx, self.config_path, workers, self.verbose)
            await self.pool.start(self.sockets)
            # Edited rule files: the workers reload before the watcher reports it.
            self.ctx.rules_changed.append(self._reload_workers)
            log.info("%d intake worker processes serve the listeners", workers)
        else:
            await asyncio.to_thread(self._warm_up)
            for address, sock in self.sockets:
                self.servers.append((address, await self._serve(address, sock)))
        for name in SERVICES if self.services is None else self.services:
            self._start_service(name)
        interval = sdnotify.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.get_running_loop().create_task(self._watchdog(interval)))
        if self.listen:
            sdnotify.notify(f"READY=1\nSTATUS=accepting mail on {len(self.sockets)} socket(s)")
            log.info("ticketgate %s ready (event loop: %s)", __version__,
                     type(asyncio.get_running_loop()).__module__.partition(".")[0])
        else:
            log.info("intake worker ready (pid %d)", os.getpid())

    def _warm_up(self) -> None:
        """Pay the first message's one-off costs (imports, template and statement
        compilation) now rather than while a client waits for its reply."""
        assert self.ctx is not None
        with self.ctx.store.engine.connect() as conn:
            self.ctx.intake.responder.warm_up(conn)

    def bound(self) -> list[Any]:
        """The socket names actually bound (ports chosen by the OS for `:0`)."""
        return [sock.getsockname() for _a, sock in self.sockets]

    def _factory(self, lmtp: bool) -> Callable[[], asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        cls = IntakeLMTP if lmtp else IntakeSMTP
        ident = f"ticketgate {__version__}"

        def factory() -> asyncio.BaseProtocol:
            assert self.handler is not None
            # No data_size_limit: the handler checks the configured one (a reload may
            # change it) and answers 552 5.3.4 per recipient with the refusal recorded.
            return cls(self.handler, data_size_limit=None, enable_SMTPUTF8=True,
                       hostname=self._hostname, ident=ident, loop=loop)

        return factory

    async def _serve(self, address: ListenAddress, sock: socket.socket) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        factory = self._factory(address.protocol == "lmtp")
        if sock.family == socket.AF_UNIX:
            return await loop.create_unix_server(factory, sock=sock)
        return await loop.create_server(factory, sock=sock)

    def adopt(self, sock: socket.socket, lmtp: bool) -> None:
        """Serve a connection accepted by the master process (worker processes)."""
        loop = asyncio.get_running_loop()

        async def connect() -> None:
            try:
                await loop.connect_accepted_socket(self._factory(lmtp), sock)
            except OSError as exc:
                log.debug("handed-over connection lost before it started: %s", exc)
                sock.close()

        task = loop.create_task(connect())
        assert self.handler is not None
        self.handler.background.add(task)
        task.add_done_callback(self.handler.background.discard)

    def _start_service(self, name: str) -> None:
        assert self.ctx is not None
        try:
            module_name, func_name = name.split(":")
            func: Callable[[DaemonContext, asyncio.Event], Awaitable[None]] = getattr(
                importlib.import_module(module_name), func_name)
        except Exception as exc:
            log.error("service %s cannot start: %s", name, exc)
            self.ctx.record_error("daemon", f"service {name} cannot start: {exc}")
            return
        self._service_tasks.append(
            asyncio.get_running_loop().create_task(self._run_service(name, func))
        )

    async def _run_service(
        self, name: str, func: Callable[[DaemonContext, asyncio.Event], Awaitable[None]]
    ) -> None:
        assert self.ctx is not None
        try:
            await func(self.ctx, self.stopping)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("service %s failed", name)
            self.ctx.record_error("daemon", f"service {name} failed: {type(exc).__name__}")

    async def _watchdog(self, interval: float) -> None:
        while True:
            # Only claim to be alive while the writer thread (or every worker) is.
            if (self.committer is not None and self.committer.alive) or (
                    self.pool is not None and self.pool.alive):
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config, rebuild the intake and swap it in; run the reload hooks.

        A bad new config is logged and the running one kept. Listeners and the database
        URL are not changed by a reload (restart for those).
        """
        assert self.ctx is not None
        ctx = self.ctx
        async with self._reload_lock:
            sdnotify.notify("RELOADING=1")
            # Workers first: what this process then reports (and READY=1) is in force
            # in every process that takes mail.
            workers_ok = await self._reload_workers()
            ok = True
            try:
                new_config = await asyncio.to_thread(load_config, self.config_path)
                new_intake = await asyncio.to_thread(build_intake, new_config, ctx.store)
            except Exception as exc:
                ok = False
                self._reload_failed(exc)
            else:
                if not workers_ok:
                    ok = False
                    log.error("an intake worker did not reload; it keeps its running "
                              "configuration (`serve -v` logs why)")
                    ctx.record_error("config", "an intake worker did not reload")
                if new_config.database_url != ctx.config.database_url:
                    log.warning("database URL changed: takes effect after a restart")
                if listen_addresses(new_config) != listen_addresses(ctx.config):
                    log.warning("listen addresses changed: take effect after a restart")
                if new_config.lmtp.workers != ctx.config.lmtp.workers:
                    log.warning("[lmtp] workers changed: takes effect after a restart")
                ctx.config, ctx.intake = new_config, new_intake
                self.config = new_config
                log.info("configuration reloaded from %s", new_config.source)
            for hook in list(ctx.reload_hooks):
                try:
                    await asyncio.to_thread(hook)
                except Exception as exc:
                    ok = False
                    log.exception("reload hook %r failed", hook)
                    ctx.record_error("config", f"reload hook failed: {exc}")
            if self.listen:
                sdnotify.notify("READY=1")
            return ok

    def _reload_failed(self, exc: Exception) -> None:
        """Report a failed reload once for the daemon, as one line.

        Every process reads the same files and fails alike, so a worker says it only at
        debug level and the master reports it; a rule-file problem is reported by the
        rules service (rules/watch.py), which reloads the rules in the master's hooks.
        """
        from rules.errors import RulesError

        assert self.ctx is not None
        text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        text = text.replace(":; ", ": ")  # "invalid rule files:" then its list
        if not self.listen or (isinstance(exc, RulesError) and self.ctx.reload_hooks):
            log.debug("reload failed, keeping the running configuration: %s", text)
            return
        log.error("reload failed, keeping the running configuration: %s", text)
        self.ctx.record_error("config", f"reload failed: {text}")

    async def _reload_workers(self) -> bool:
        """Have every intake worker re-read the config (and so the rules); True if all did."""
        return self.pool is None or await self.pool.reload()

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        if self.listen:
            sdnotify.notify("STOPPING=1")
        self.stopping.set()
        for _address, server in self.servers:
            server.close()
        if self.pool is not None:
            await self.pool.stop(self.drain_timeout + 5)
        for _address, sock in self.sockets:
            sock.close()
        if self.handler is not None:
            self.handler.start_draining()
            deadline = time.monotonic() + self.drain_timeout
            while not self.handler.idle() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self.handler.connections):
                conn.close_with(S421_SHUTTING_DOWN)
        if self._service_tasks:
            _done, pending = await asyncio.wait(self._service_tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.committer is not None:
            await asyncio.to_thread(self.committer.stop)
            c = self.committer
            log.info("group commit: %d messages in %d transactions (largest %d)",
                     c.messages, c.batches, c.largest_batch)
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()
        if self.ctx is not None:
            self.ctx.store.dispose()
        for address in self._created:
            if address.path is not None:
                with contextlib.suppress(OSError):
                    address.path.unlink()
        log.info("stopped")


def _address_of(protocol: str, sock: socket.socket) -> ListenAddress:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return ListenAddress(protocol, path=Path(name if isinstance(name, str) else "?"))
    return ListenAddress(protocol, host=str(name[0]), port=int(name[1]))


async def serve(config: Config, config_path: str | None, verbose: bool = False) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    daemon = Daemon(config, config_path, inherited=inherited_sockets(), verbose=verbose,
                    spawn_workers=True)
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await daemon.start()
    except CannotStart as exc:
        log.error("cannot start: %s", exc)
        await daemon.stop()
        return exc.exit_code
    except (ListenError, OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        await daemon.stop()
        return EX_UNAVAILABLE
    except Exception as exc:
        from ticketstore.db import StoreUnavailable, is_transient

        if isinstance(exc, StoreUnavailable) or not is_transient(exc):
            raise  # a schema to upgrade: server_cli says so (EX_CONFIG)
        cause = cause_of(exc, config.database_url, config.database.busy_timeout)
        log.error("cannot start: %s", cause)
        await daemon.stop()
        return exit_code_for(cause)
    await stop.wait()
    log.info("SIGTERM: draining")
    await asyncio.gather(*reloads, return_exceptions=True)
    await daemon.stop()
    return 0
