"""Run the real status service (`gateway.status.server:run`) on 127.0.0.1:0 in a thread.

The service gets a DaemonContext as `ticketgate serve` builds it, runs in its own event
loop, and is reached through a real TCP socket with http.client or a raw socket.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.daemon import DaemonContext
from gateway.intake.core import Intake
from gateway.intake.outcome import Disposition
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.support import make_config


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class StatusService:
    """The status service running in a background event loop."""

    def __init__(self, ctx: DaemonContext) -> None:
        from gateway.status.server import run

        self.ctx = ctx
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.future = asyncio.run_coroutine_threadsafe(self._run(run), self.loop)
        deadline = time.monotonic() + 10
        while "status" not in ctx.state:
            if self.future.done():
                self.future.result()  # raises what the service raised
            if time.monotonic() > deadline:
                raise TimeoutError("status service did not start")
            time.sleep(0.01)
        host, _, port = ctx.state["status"]["listen"].rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    async def _run(self, run: Any) -> None:
        self.stopping = asyncio.Event()
        await run(self.ctx, self.stopping)

    def request(self, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        finally:
            conn.close()

    def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send raw bytes, read until the server closes (for malformed requests)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.stopping.set)
        try:
            self.future.result(timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def status_config(tmp_path: Path, db_url: str, **status: Any) -> Config:
    return make_config(tmp_path, db_url, status={"listen": "127.0.0.1:0", **status},
                       database={"url": db_url, "busy_timeout": 2.0})


def make_context(config: Config) -> tuple[DaemonContext, Store]:
    from ticketstore.db import upgrade

    store = open_store(config, create=False)
    upgrade(store.engine)
    intake = Intake(config, store.factory)
    intake.sync_queues()
    return DaemonContext(config, store, intake), store


def message(subject: str, sender: str = "Alice Example <alice@customer.example>",
            to: str = "support@helpdesk.example", msgid: str | None = None,
            extra: str = "") -> bytes:
    msgid = msgid or f"<{uuid.uuid4().hex}@customer.example>"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {msgid}\r\n"
        f"Date: Sun, 22 Nov 2026 09:00:00 +0000\r\n{extra}MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nHello, something is broken.\r\n"
    ).encode()


def deliver(intake: Intake, raw: bytes, rcpt: str = "support@helpdesk.example",
            mail_from: str = "alice@customer.example") -> Disposition:
    return intake.process(raw, Envelope(mail_from, (rcpt,)))
