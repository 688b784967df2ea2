"""The daemon's life cycle in-process: listeners, stop and drain, reload, services."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.server.app import Daemon, listen_addresses
from gateway.server.listeners import ListenAddress, ListenError
from tests.server_helpers import (
    MESSAGE,
    RunningDaemon,
    daemon_config,
    prepare_database,
    short_socket_dir,
)
from tests.support import make_config
from ticketstore.models import Ticket


@pytest.fixture
def running(tmp_path: Path, db_url: str) -> Iterator[RunningDaemon]:
    prepare_database(db_url)
    d = RunningDaemon(daemon_config(tmp_path, db_url)).start()
    try:
        yield d
    finally:
        d.stop()


def test_daemon_accepts_mail_on_both_databases(running: RunningDaemon) -> None:
    client = running.lmtp()
    client.mail("alice@customer.example")
    client.rcpt("support@helpdesk.example")
    code, text = client.data(MESSAGE)
    client.quit()
    assert code == 250 and b"created ticket" in text
    assert running.count(Ticket) == 1


def test_listen_addresses_add_the_handoff_socket_once(tmp_path: Path, sqlite_url: str) -> None:
    cfg = make_config(tmp_path, sqlite_url, lmtp={"listen": ["127.0.0.1:8024"]},
                      pipe={"handoff_socket": "run/lmtp.sock"})
    found = listen_addresses(cfg)
    assert found[0] == ListenAddress("lmtp", host="127.0.0.1", port=8024)
    assert found[1] == ListenAddress("lmtp", path=tmp_path / "run/lmtp.sock")
    cfg = make_config(tmp_path, sqlite_url,
                      lmtp={"listen": [f"unix:{tmp_path}/run/lmtp.sock"]},
                      smtp={"listen": ["[::1]:2525"]},
                      pipe={"handoff_socket": "run/lmtp.sock"})
    assert [str(a) for a in listen_addresses(cfg)] == [
        f"lmtp unix:{tmp_path}/run/lmtp.sock", "smtp [::1]:2525"]


def test_unix_listener_replaces_a_stale_socket_but_not_a_live_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    sock_dir = short_socket_dir()
    path = sock_dir / "lmtp.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    cfg = daemon_config(tmp_path, sqlite_url, pipe={"handoff_socket": str(path)})
    first = RunningDaemon(cfg).start()
    try:
        client = smtplib.LMTP(str(path), local_hostname="localhost", timeout=10)
        assert client.ehlo("localhost")[0] == 250
        client.quit()
        second = RunningDaemon(cfg)
        with pytest.raises(ListenError, match="already listening"):
            second.start()
        second.stop()
    finally:
        first.stop()
    assert not path.exists(), "the socket is removed on stop"


def test_stop_finishes_a_message_in_data_and_refuses_new_connections(
    tmp_path: Path, sqlite_url: str
) -> None:
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url)).start()
    port = d.port
    busy = d.lmtp()
    idle = d.lmtp()
    try:
        busy.mail("alice@customer.example")
        busy.rcpt("support@helpdesk.example")
        busy.putcmd("data")
        assert busy.getreply()[0] == 354
        busy.send(MESSAGE[:40])  # half a message: the session is in DATA
        assert d.daemon is not None
        stopping = asyncio.run_coroutine_threadsafe(d.daemon.stop(), d.loop)
        # The idle session is closed with 421; the busy one may finish.
        assert idle.getreply()[0] == 421
        busy.send(MESSAGE[40:] + b".\r\n")
        code, text = busy.getreply()
        assert code == 250, text
        assert busy.getreply()[0] == 421, "closed once its message is answered"
        stopping.result(20)
        d.daemon = None
        assert d.count_in(sqlite_url, Ticket) == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        busy.close()
        idle.close()
        d.stop()


def test_a_connection_accepted_while_draining_is_told_421_and_closed(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A connection that slips in between the drain and the listener closing gets 421."""
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url)).start()
    try:
        assert d.daemon is not None and d.daemon.handler is not None
        handler = d.daemon.handler

        async def drain() -> None:
            handler.draining = True

        d.call(drain())
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            received = b""
            for _ in range(50):  # bounded: the server closes after one line
                chunk = s.recv(4096)
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"421 4.3.2"), received
        assert not handler.connections
    finally:
        d.stop()


def test_reload_swaps_the_config_and_keeps_it_when_the_new_one_is_bad(
    tmp_path: Path, sqlite_url: str
) -> None:
    cfg_file = tmp_path / "tg.toml"
    cfg_file.write_text(f'[database]\nurl = "{sqlite_url}"\n[lmtp]\nlisten = ["127.0.0.1:0"]\n'
                        '[pipe]\nhandoff_socket = ""\n')
    from gateway.config import load_config

    config = load_config(str(cfg_file), env={})
    d = RunningDaemon(config)
    d.thread.start()
    d.daemon = Daemon(config, str(cfg_file), services=[])
    d.call(d.daemon.start())
    hooks: list[str] = []
    d.ctx.reload_hooks.append(lambda: hooks.append("called"))
    try:
        client = d.lmtp()
        client.mail("a@customer.example")
        assert client.rcpt("nobody@helpdesk.example")[0] == 250
        client.rset()
        cfg_file.write_text(
            cfg_file.read_text() + "[intake]\nstrict_recipients = true\n[[queues]]\n"
            'name = "Support"\naddresses = ["support@helpdesk.example"]\n')
        assert d.call(d.daemon.reload()) is True
        assert hooks == ["called"]
        # The same connection sees the new config: nothing dropped.
        client.mail("a@customer.example")
        assert client.rcpt("nobody@helpdesk.example")[0] == 550
        assert client.rcpt("support@helpdesk.example")[0] == 250
        client.rset()
        cfg_file.write_text("this is [not toml")
        assert d.call(d.daemon.reload()) is False
        assert d.ctx.errors[0].source == "config"
        client.mail("a@customer.example")
        assert client.rcpt("nobody@helpdesk.example")[0] == 550, "old config kept"
        client.quit()
    finally:
        d.stop()


def test_services_run_until_stopping(tmp_path: Path, sqlite_url: str) -> None:
    seen = _SEEN
    seen.clear()
    d = RunningDaemon(daemon_config(tmp_path, sqlite_url),
                      services=[f"{__name__}:_sample_service", "no.such.module:run"]).start()
    try:
        assert any("no.such.module" in e.message for e in d.ctx.errors)
    finally:
        d.stop()
    assert seen == ["started", "stopped"]


_SEEN: list[str] = []


async def _sample_service(ctx: Any, stopping: asyncio.Event) -> None:
    _SEEN.append("started")
    await stopping.wait()
    _SEEN.append("stopped")
