"""A real aiosmtpd smarthost for the auto-response and outbox tests, and mail builders.

aiosmtpd's Controller cannot bind port 0 (it probes the configured port), so the sink
runs `loop.create_server` on 127.0.0.1:0 in its own thread and reports the port it got.
It can be stopped and started again on the same port ("smarthost down for a while"),
and told to answer 4xx or 5xx.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support import toml_value

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.intake.core import Intake
    from gateway.runtime import Store


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    reply: str = "250 OK"  # what DATA answers; "451 ..." or "550 ..." to refuse

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reply.startswith("250"):
            self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b"")))
        return self.reply


class SmtpSink:
    """`with SmtpSink() as sink:` -> sink.port, sink.received, sink.stop()/start()."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.handler = _Handler()
        self.credentials = credentials
        self.port = 0
        self.auth_seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[SMTP] = []

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def set_reply(self, reply: str) -> None:
        self.handler.reply = reply

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_seen.append(user)
        return AuthResult(success=(user, password) == self.credentials)

    def _factory(self) -> SMTP:
        if self.credentials:
            # aiosmtpd warns about AUTH without TLS; on loopback in a test that is the point.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                proto = SMTP(self.handler, hostname="sink.test", authenticator=self._authenticate,
                             auth_require_tls=False, auth_required=True)
        else:
            proto = SMTP(self.handler, hostname="sink.test")
        self._protocols.append(proto)
        return proto

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

        async def create() -> asyncio.base_events.Server:
            return await self._loop.create_server(self._factory, "127.0.0.1", self.port,
                                                  reuse_address=True)

        self._server = asyncio.run_coroutine_threadsafe(create(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener: connections are refused until `start` again."""
        if self._server is None:
            return
        server = self._server
        self._server = None

        async def close() -> None:
            server.close()
            for proto in self._protocols:  # and drop open sessions, like a crashed MTA
                if proto.transport is not None:
                    proto.transport.close()
            self._protocols.clear()
            await asyncio.sleep(0)
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def smarthost(self) -> str:
        return f"127.0.0.1:{self.port}"


def build_mail(
    subject: str = "Printer on fire",
    sender: str = "Ana Customer <ana@customer.example>",
    to: str = "support@helpdesk.example",
    message_id: str = "m1@customer.example",
    headers: dict[str, str] | None = None,
    body: str = "Hello,\nthe printer is on fire.\n",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{message_id}>", "Date: Sun, 22 Nov 2026 10:00:00 +0000",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


def write_toml(path: Any, data: dict[str, Any]) -> None:
    """Enough TOML for a ticketgate config: tables, [[queues]], nested [a.b] tables."""
    out: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) or k == "overrides"}
        out.append(f"[{prefix}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in values.items():
            if isinstance(v, dict) and k != "overrides":
                table(f"{prefix}.{k}", v)

    for section, values in data.items():
        if section == "queues":
            for q in values:
                out.append("[[queues]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in q.items())
        else:
            table(section, values)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def answering_intake(config: Config, store: Store) -> Intake:
    """The intake core with the auto-responder, its queues created."""
    from autoresponse.autoresponder import AutoResponder
    from gateway.intake.core import Intake

    intake = Intake(config, store.factory, responder=AutoResponder(config))
    intake.sync_queues()
    return intake


def outbox_rows(store: Store) -> list[Any]:
    """Every outbox row, oldest first."""
    from sqlalchemy import select

    from ticketstore.models import OutboxMessage

    with store.factory() as s:
        return list(s.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def suppressed_events(store: Store) -> list[dict[str, Any]]:
    """The details of every `autoresponse-suppressed` event, oldest first."""
    from sqlalchemy import select

    from ticketstore.models import Event

    with store.factory() as s:
        return [e.detail for e in s.execute(
            select(Event).where(Event.kind == "autoresponse-suppressed").order_by(Event.id)
        ).scalars()]


def answer_text(data: bytes) -> str:
    """An answer as a reader sees it: decoded headers, then every text part decoded."""
    import email.policy

    msg = message_from_bytes(data, policy=email.policy.default)
    head = "\n".join(f"{k}: {v}" for k, v in msg.items())
    parts = [p.get_content() for p in msg.walk()  # type: ignore[attr-defined]
             if p.get_content_maintype() == "text"]
    return "\n".join([head, *parts])


def answer_flood(base_dir: str, db_url: str, sections: dict[str, Any], ticket: str,
                 senders: list[str], barrier: Any) -> None:
    """One writer process of the concurrency tests: follow-ups to `ticket` from each of
    `senders` (spellings of one mailbox), each acknowledged unless a limit says no.
    Module level so multiprocessing's spawn can import it."""
    from pathlib import Path

    from gateway.mail.envelope import Envelope
    from gateway.runtime import open_store
    from tests.support import make_config

    config = make_config(Path(base_dir), db_url, **sections)
    store = open_store(config, create=False)
    intake = answering_intake(config, store)
    mails = [(build_mail(subject=f"Re: [Ticket#{ticket}] more", sender=sender,
                         message_id=f"flood-{sender}-{i}@x"),
              Envelope(sender, ("support@helpdesk.example",)))
             for i, sender in enumerate(senders)]
    barrier.wait(60)
    try:
        for raw, env in mails:
            intake.process(raw, env)
    finally:
        store.dispose()
