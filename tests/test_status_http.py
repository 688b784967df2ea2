"""The status service through a real TCP socket: routes, methods, token, headers, limits."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.daemon import DaemonContext
from gateway.mail.envelope import Envelope
from gateway.spool import quarantine
from gateway.status import server as status_server
from gateway.status.server import parse_listen
from tests.status_helpers import (
    StatusService,
    deliver,
    make_context,
    message,
    status_config,
)
from ticketstore.models import OutboxMessage, Ticket, utcnow

ALL_PATHS = ("/", "/api/status.json", "/healthz", "/metrics")


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> Iterator[DaemonContext]:
    context, store = make_context(status_config(tmp_path, sqlite_url))
    yield context
    store.dispose()


@pytest.fixture
def service(ctx: DaemonContext) -> Iterator[StatusService]:
    svc = StatusService(ctx)
    yield svc
    svc.stop()


def assert_security_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp  # falls back to default-src 'none': no script runs
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["connection"] == "close"


def test_page_is_html_with_security_headers_and_a_hashed_inline_style(
    service: StatusService,
) -> None:
    r = service.request("/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(r.headers)
    # The CSP allows exactly the inline stylesheet the page carries, by its hash.
    style = re.search(r"<style>(.*?)</style>", r.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in r.headers["content-security-policy"]
    assert "<script" not in r.text.lower()
    assert 'style="' not in r.text  # style attributes would need 'unsafe-inline'
    assert int(r.headers["content-length"]) == len(r.body)


@pytest.mark.parametrize("path", [*ALL_PATHS, "/nope", "/?x=1"])
def test_every_response_carries_the_security_headers(service: StatusService, path: str) -> None:
    r = service.request(path)
    assert r.status in (200, 404)
    assert_security_headers(r.headers)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_only_get_and_head_are_allowed(service: StatusService, ctx: DaemonContext,
                                       method: str) -> None:
    for path in ALL_PATHS:
        r = service.request(path, method=method)
        assert r.status == 405, (method, path)
        assert r.headers["allow"] == "GET, HEAD"
        assert_security_headers(r.headers)
    with ctx.store.factory() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 0


def test_head_has_the_headers_of_get_but_no_body(service: StatusService) -> None:
    get = service.request("/healthz")
    head = service.request("/healthz", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == get.headers["content-type"]


def test_unknown_path_is_404(service: StatusService) -> None:
    assert service.request("/admin").status == 404
    assert service.request("/api/status.json/").status == 404


def test_token_is_required_on_every_endpoint_when_configured(
    tmp_path: Path, sqlite_url: str
) -> None:
    ctx, store = make_context(status_config(tmp_path, sqlite_url, token="s3cret-token"))
    svc = StatusService(ctx)
    try:
        for path in ALL_PATHS:
            r = svc.request(path)
            assert r.status == 401, path
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert_security_headers(r.headers)
            assert b"s3cret" not in r.body
            assert svc.request(path, headers={"Authorization": "Bearer wrong"}).status == 401
            assert svc.request(path, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}
                               ).status == 401
            sep = "&" if "?" in path else "?"
            assert svc.request(f"{path}{sep}token=s3cret-toke").status == 401
            assert svc.request(path, headers={"Authorization": "Bearer s3cret-token"}
                               ).status == 200, path
            assert svc.request(f"{path}{sep}token=s3cret-token").status == 200, path
        # The method check does not depend on the token: nothing changes data either way.
        assert svc.request("/", method="POST").status == 405
    finally:
        svc.stop()
        store.dispose()


def test_no_token_configured_means_open(service: StatusService) -> None:
    assert service.request("/healthz", headers={"Authorization": "Bearer anything"}).status == 200


def test_malformed_and_oversized_requests_are_400(service: StatusService) -> None:
    assert service.raw(b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert service.raw(b"GET / SPDY/3\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert service.raw(b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    long_line = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"
    assert service.raw(long_line).startswith(b"HTTP/1.1 400 ")
    many = b"GET /healthz HTTP/1.1\r\n" + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(200)) + b"\r\n"
    assert service.raw(many).startswith(b"HTTP/1.1 400 ")
    assert service.raw(b"GET http://example.org/ HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    # ... and the server still answers afterwards.
    assert service.request("/healthz").status == 200


def test_a_client_that_sends_nothing_gets_408(
    service: StatusService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_server, "HEADER_TIMEOUT", 0.3)
    reply = service.raw(b"GET /healthz HTTP/1.1\r\n", timeout=10)
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_http_1_0_client_is_answered(service: StatusService) -> None:
    reply = service.raw(b"GET /healthz HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["status"] == "ok"


def test_json_reflects_delivered_mail(service: StatusService, ctx: DaemonContext) -> None:
    d = deliver(ctx.intake, message("Printer on fire"))
    deliver(ctx.intake, message(f"Re: [Ticket#{d.ticket_number}] Printer on fire"))
    r = service.request("/api/status.json")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert_security_headers(r.headers)
    doc = json.loads(r.body)
    assert doc["mail_flow"]["received"] == {"hour": 1 + 1, "day": 2, "month": 2}
    assert doc["mail_flow"]["created"]["hour"] == 1
    assert doc["mail_flow"]["follow_ups"]["hour"] == 1
    assert doc["latest_tickets"][0]["number"] == d.ticket_number
    assert doc["latest_tickets"][0]["subject"] == "Printer on fire"
    assert doc["health"]["status"] == "ok"
    support = next(q for q in doc["queues"] if q["queue"] == "Support")
    assert support["open"] == 1


def test_healthz_names_the_failing_check(
    tmp_path: Path, sqlite_url: str
) -> None:
    ctx, store = make_context(status_config(tmp_path, sqlite_url, max_outbox_backlog=1,
                                            max_spool_files=0))
    svc = StatusService(ctx)
    try:
        assert svc.request("/healthz").status == 200
        # Outbox backlog over the limit.
        with ctx.store.factory() as s, s.begin():
            for i in range(2):
                s.add(OutboxMessage(kind="auto-reply", rcpt_to=f"c{i}@x.example",
                                    message_id=f"m{i}@x", message=b"x", state="pending"))
        r = svc.request("/healthz")
        doc = json.loads(r.body)
        assert r.status == 503
        assert doc["failing"] == ["outbox"]
        assert doc["checks"]["outbox"]["detail"] == "2 pending (limit 1)"
        # A quarantined message fails the spool check too.
        quarantine(ctx.config.path(ctx.config.intake.spool_dir), b"Subject: x\r\n\r\nx",
                   Envelope("a@b.example", ("support@helpdesk.example",)), ValueError("bug"))
        doc = json.loads(svc.request("/healthz").body)
        assert doc["failing"] == ["outbox", "spool"]
        assert doc["status"] == "fail"
        page = svc.request("/")
        assert page.status == 200
        assert "failing: outbox, spool" in page.text
    finally:
        svc.stop()
        store.dispose()


def test_database_down_is_503_on_healthz_and_page(tmp_path: Path) -> None:
    # A directory is not a database file: every query fails with OperationalError.
    broken = tmp_path / "not-a-db"
    broken.mkdir()
    good_url = f"sqlite:///{tmp_path / 'tg.db'}"
    ctx, store = make_context(status_config(tmp_path, good_url))
    from ticketstore.db import make_engine

    ctx.store.engine = make_engine(f"sqlite:///{broken}")
    svc = StatusService(ctx)
    try:
        r = svc.request("/healthz")
        doc = json.loads(r.body)
        assert r.status == 503
        assert doc["failing"][0] == "database"
        # The cause, not a class name (gateway/causes.py).
        assert doc["checks"]["database"]["detail"] == (
            f"database at {broken} cannot be opened (unable to open database file)")
        page = svc.request("/")
        assert page.status == 503 and b"database" in page.body
        assert_security_headers(page.headers)
        assert svc.request("/api/status.json").status == 503
        metrics = svc.request("/metrics")
        assert metrics.status == 200
        assert "ticketgate_database_up 0.0" in metrics.text
    finally:
        svc.stop()
        ctx.store.engine.dispose()
        store.dispose()


def test_service_stops_when_asked_and_frees_the_port(ctx: DaemonContext) -> None:
    svc = StatusService(ctx)
    port = svc.port
    assert svc.request("/healthz").status == 200
    svc.stop()
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_ipv6_loopback(tmp_path: Path, sqlite_url: str) -> None:
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1")
    ctx, store = make_context(status_config(tmp_path, sqlite_url, listen="[::1]:0"))
    svc = StatusService(ctx)
    try:
        assert ctx.state["status"]["listen"].startswith("[::1]:")
        assert svc.request("/healthz").status == 200
    finally:
        svc.stop()
        store.dispose()


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:8025", ("127.0.0.1", 8025)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8025", ":8025", "127.0.0.1:", "host:port"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_started_at_and_errors_are_shown(service: StatusService, ctx: DaemonContext) -> None:
    ctx.record_error("outbox", "smarthost refused: 554 go away")
    ctx.state["rules"] = {"count": 7, "loaded_at": utcnow().isoformat(),
                          "errors": ["rules/10-spam.toml: line 3: unknown key 'qeue'"]}
    doc = json.loads(service.request("/api/status.json").body)
    assert doc["latest_errors"][0]["message"] == "smarthost refused: 554 go away"
    assert doc["rules"]["count"] == 7
    page = service.request("/").text
    assert "smarthost refused: 554 go away" in page
    assert "unknown key &#39;qeue&#39;" in page
    assert "7 loaded" in page


def test_a_reloaded_config_changes_the_token_without_a_restart(
    service: StatusService, ctx: DaemonContext
) -> None:
    import dataclasses

    assert service.request("/healthz").status == 200
    ctx.config = dataclasses.replace(
        ctx.config, status=dataclasses.replace(ctx.config.status, token="new-token"))
    assert service.request("/healthz").status == 401
    assert service.request("/healthz?token=new-token").status == 200


def test_connections_over_the_limit_get_503_and_the_server_recovers(
    ctx: DaemonContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr(status_server, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(status_server, "HEADER_TIMEOUT", 3.0)
    svc = StatusService(ctx)
    try:
        # A client that connects and sends nothing holds the only slot ...
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.3)
            busy = svc.raw(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert busy.startswith(b"HTTP/1.1 503 ")
            assert b"nosniff" in busy
        # ... until it goes away; then requests are served again.
        deadline = time.monotonic() + 10
        while svc.request("/healthz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        svc.stop()
