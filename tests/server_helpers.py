"""Helpers shared by the server tests: an in-process daemon, configs, socket folders."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import smtplib
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from gateway.config import Config
from gateway.handoff import lmtp_payload
from gateway.intake.core import Intake
from gateway.intake.outcome import Disposition
from gateway.intake.prepared import Prepared
from gateway.intake.transaction import Touches
from gateway.server.app import Daemon
from tests.support import make_config
from ticketstore.db import make_engine, upgrade

MESSAGE = (
    b"From: Alice <alice@customer.example>\r\n"
    b"To: support@helpdesk.example\r\n"
    b"Subject: Printer on fire\r\n"
    b"Message-ID: <app-1@customer.example>\r\n"
    b"\r\n"
    b"Please help.\r\n"
)


class Raw:
    """A client that writes bytes as given and reads replies line by line."""

    def __init__(self, port: int, greeting: str = "220 ") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        try:
            self.greeting = self.replies(1)[0]
            assert self.greeting.startswith(greeting), self.greeting
        except BaseException:
            self.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[str]:
        """The next `count` replies; a multi-line reply is joined with "|"."""
        got: list[str] = []
        lines: list[str] = []
        while len(got) < count:
            line = self.file.readline().decode().rstrip("\r\n")
            assert line, f"connection closed after {got}"
            lines.append(line)
            if line[3:4] != "-":
                got.append("|".join(lines))
                lines = []
        return got

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def send(client: smtplib.LMTP, rcpts: list[str], body: bytes,
         sender: str = "alice@customer.example") -> list[tuple[int, bytes]]:
    """MAIL, RCPT..., DATA, then read one reply per accepted recipient (RFC 2033)."""
    assert client.mail(sender, [] if sender.isascii() else ["SMTPUTF8"])[0] == 250
    accepted = [r for r in rcpts if client.rcpt(r)[0] == 250]
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(lmtp_payload(body))
    return [client.getreply() for _ in accepted]


class RunningDaemon:
    """A Daemon on a private loop thread; `lmtp()` opens a client to its TCP listener."""

    def __init__(self, config: Config, services: list[str] | None = None) -> None:
        self.config = config
        # No background services unless a test asks: they bind ports of their own.
        self.services = services or []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.daemon: Daemon | None = None

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> RunningDaemon:
        self.thread.start()

        self.daemon = Daemon(self.config, drain_timeout=10.0, services=self.services)
        self.call(self.daemon.start())  # on failure, stop() still cleans up
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.call(self.daemon.stop())
            self.daemon = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def ctx(self) -> Any:
        assert self.daemon is not None and self.daemon.ctx is not None
        return self.daemon.ctx

    @property
    def port(self) -> int:
        assert self.daemon is not None
        for name in self.daemon.bound():
            if isinstance(name, tuple):
                return int(name[1])
        raise AssertionError("no TCP listener")

    def lmtp(self) -> smtplib.LMTP:
        client = smtplib.LMTP("127.0.0.1", self.port, local_hostname="localhost", timeout=30)
        client.ehlo("localhost")
        return client

    @staticmethod
    def count_in(url: str, model: Any) -> int:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(model)) or 0)
        finally:
            engine.dispose()

    def count(self, model: Any) -> int:
        with self.ctx.store.factory() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


_SOCKET_DIRS: list[Path] = []


class FailsOnPoison(Intake):
    """Fails like a bug would after writing a message whose subject says "poison": what
    its SAVEPOINT (or its transaction) must undo."""

    def store(self, conn: Connection, p: Prepared, touches: Touches) -> Disposition:
        disposition = super().store(conn, p, touches)
        if "poison" in p.msg.subject:
            raise RuntimeError("bug after a partial write")
        return disposition


def short_socket_dir() -> Path:
    """Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.

    The folders are removed when the test process exits.
    """
    path = Path(tempfile.mkdtemp(prefix="tg-sock-", dir="/tmp"))
    if not _SOCKET_DIRS:
        atexit.register(_remove_socket_dirs)
    _SOCKET_DIRS.append(path)
    return path


def _remove_socket_dirs() -> None:
    for path in _SOCKET_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def prepare_database(db_url: str) -> None:
    """PostgreSQL test databases start empty; SQLite files are created by the daemon."""
    if db_url.startswith("postgresql"):
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()


def daemon_config(tmp_path: Path, db_url: str, **sections: Any) -> Config:
    lmtp = {"listen": ["127.0.0.1:0"], **sections.pop("lmtp", {})}
    return make_config(tmp_path, db_url, lmtp=lmtp, **sections)


def process_config(tmp_path: Path, sock: Path, strict: bool = False) -> str:
    return (f'[database]\nurl = "sqlite:///{tmp_path}/tg.db"\n'
            f'[lmtp]\nlisten = ["unix:{sock}"]\n'
            f'[pipe]\nhandoff_socket = ""\n'
            '[status]\nlisten = "127.0.0.1:0"\n[autoresponse]\nenabled = false\n'
            f'[intake]\nstrict_recipients = {"true" if strict else "false"}\n'
            f'spool_dir = "{tmp_path}/spool"\n'
            '[[queues]]\nname = "Support"\naddresses = ["support@helpdesk.example"]\n')


