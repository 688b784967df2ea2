"""The read-only status HTTP server: a daemon service on `[status] listen`.

A deliberately small HTTP/1.1 server on asyncio streams, GET and HEAD only, one request
per connection (`Connection: close`). It needs no framework: four fixed routes, no
bodies, no cookies, no state. The limits below bound what a client can make it hold
(request line and header sizes, header count, read timeouts, concurrent connections).

Database reads and rendering run in a worker thread (asyncio.to_thread) inside a
read-only DEFERRED transaction, so the page never blocks the event loop or intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ticketstore.models import utcnow

if TYPE_CHECKING:
    from gateway.daemon import DaemonContext

log = logging.getLogger("ticketgate.status")

MAX_LINE = 8192  # request line and each header line
MAX_HEADERS = 64
HEADER_TIMEOUT = 10.0  # seconds to send the whole request head
WRITE_TIMEOUT = 30.0
MAX_CONNECTIONS = 64
MAX_WORKERS = 2  # concurrent snapshot/render threads; more requests wait their turn
ALLOW = "GET, HEAD"
ROUTES = ("/", "/api/status.json", "/healthz", "/metrics")


class BadRequest(Exception):
    pass


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8025', '[::1]:8025', 'localhost:0' -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"status listen address {value!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"status listen address {value!r} has no host")
    return host, int(port)


def security_headers(style_source: str) -> dict[str, str]:
    return {
        # No scripts at all; the only style is the inline sheet allowed by its hash.
        "Content-Security-Policy": (
            f"default-src 'none'; style-src {style_source}; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _text(status: int, message: str | None = None) -> Response:
    phrase = HTTPStatus(status).phrase
    return Response(status, f"{status} {message or phrase}\n".encode())


def _json(status: int, doc: Any) -> Response:
    body = json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
    return Response(status, body, "application/json; charset=utf-8")


class StatusApp:
    """Routing and the handlers; independent of the socket so it is easy to reason about."""

    def __init__(self, ctx: DaemonContext) -> None:
        from .metrics import DatabaseCollector, build_registry
        from .page import style_hash

        self.ctx = ctx
        self.headers = security_headers(style_hash())
        self.workers = asyncio.Semaphore(MAX_WORKERS)
        from .queries import MonthCache

        self.months = MonthCache()
        self.registry = build_registry(DatabaseCollector(
            ctx.store.engine, lambda: self.spool_dir, lambda: dict(ctx.counters),
            ctx.started_at, _version()))

    # The config is read on every request: a SIGHUP reload swaps ctx.config (token,
    # thresholds); the listen address itself changes only with a restart.
    @property
    def token(self) -> str:
        return self.ctx.config.status.token

    @property
    def spool_dir(self) -> Path:
        config = self.ctx.config
        return config.path(config.intake.spool_dir)

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        if not self.token:
            return True
        offered = ""
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            offered = value.strip()
        elif query.get("token"):
            offered = query["token"][0]
        return hmac.compare_digest(offered.encode("utf-8"), self.token.encode("utf-8"))

    async def handle(self, method: str, target: str, headers: dict[str, str]) -> Response:
        if method not in ("GET", "HEAD"):
            resp = _text(405)
            resp.headers["Allow"] = ALLOW
            return resp
        if not target.startswith("/"):
            return _text(400, "Bad Request: origin-form target expected")
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        if not self.authorized(headers, query):
            resp = _text(401, "Unauthorized: send Authorization: Bearer <token> or ?token=")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="ticketgate status"'
            return resp
        route: dict[str, Callable[[], Awaitable[Response]]] = {
            "/": self.page,
            "/api/status.json": self.status_json,
            "/healthz": self.healthz,
            "/metrics": self.metrics,
        }
        handler = route.get(parts.path)
        if handler is None:
            return _text(404)
        async with self.workers:
            return await handler()

    # -- handlers (the blocking work runs in a thread) ------------------------------------

    def _sources(self) -> Any:
        from .queries import Sources

        errors = [{"at": e.at.astimezone(dt.UTC).isoformat(timespec="seconds"),
                   "source": e.source, "message": e.message} for e in list(self.ctx.errors)]
        return Sources(
            spool_dir=self.spool_dir,
            started_at=self.ctx.started_at,
            version=_version(),
            counters=dict(self.ctx.counters),
            errors=errors,
            rules=self.ctx.state.get("rules"),
            workers=self.ctx.state.get("workers"),
        )

    def _health(self) -> dict[str, Any]:
        from .health import health_document, run_checks

        cfg = self.ctx.config.status
        return health_document(run_checks(self.ctx.store.engine, self.spool_dir,
                                          cfg.max_outbox_backlog, cfg.max_spool_files,
                                          cfg, self.ctx.tempfails, self.ctx.state.get("rules"),
                                          self.ctx.state.get("workers")))

    def _snapshot(self) -> dict[str, Any]:
        from .queries import snapshot

        return snapshot(self.ctx.store.engine, self._sources(), utcnow(), self.months)

    async def warm_up(self) -> None:
        """Fill the month cache in the background, so the first page view is fast too."""
        try:
            await asyncio.to_thread(self._snapshot)
        except Exception as exc:
            log.debug("status warm-up failed: %s", type(exc).__name__)

    async def page(self) -> Response:
        from .page import render_page

        def work() -> Response:
            now = utcnow()
            health = self._health()
            try:
                data = self._snapshot()
            except Exception as exc:
                if not _is_db_error(exc):
                    raise
                log.warning("status page: database unavailable: %s", type(exc).__name__)
                return _text(503, "Service Unavailable: the database does not answer "
                                  "(see /healthz)")
            html = render_page(data, health, now)
            return Response(200, html.encode("utf-8"), "text/html; charset=utf-8")

        return await asyncio.to_thread(work)

    async def status_json(self) -> Response:
        def work() -> Response:
            try:
                data = self._snapshot()
            except Exception as exc:
                if not _is_db_error(exc):
                    raise
                return _json(503, {"error": "database unavailable"})
            data["health"] = self._health()
            return _json(200, data)

        return await asyncio.to_thread(work)

    async def healthz(self) -> Response:
        doc = await asyncio.to_thread(self._health)
        return _json(200 if doc["status"] == "ok" else 503, doc)

    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from .metrics import render

        body = await asyncio.to_thread(render, self.registry)
        return Response(200, body, CONTENT_TYPE_LATEST)


def _is_db_error(exc: BaseException) -> bool:
    from sqlalchemy import exc as sa_exc

    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


def _version() -> str:
    from gateway import __version__

    return __version__


class StatusServer:
    """The socket side: parse one request head, answer, close."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.app = StatusApp(ctx)
        self.server: asyncio.Server | None = None
        self.connections = asyncio.Semaphore(MAX_CONNECTIONS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.warming: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): useful with a configured port 0."""
        assert self.server is not None
        sock = self.server.sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        host, port = parse_listen(self.ctx.config.status.listen)
        self.server = await asyncio.start_server(self._client, host, port, limit=MAX_LINE)
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        self.ctx.state["status"] = {"listen": f"{shown}:{port}", "url": url}
        log.info("status page listening on %s", url)
        self.warming = asyncio.create_task(self.app.warm_up())

    async def close(self) -> None:
        if self.warming is not None:
            await asyncio.gather(self.warming, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            if self.connections.locked():
                await self._send(writer, "GET", _text(503, "Service Unavailable: busy"))
                return
            async with self.connections:
                await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("status server: unexpected error")
        finally:
            if task is not None:
                self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            method, target, headers = await asyncio.wait_for(
                read_head(reader), HEADER_TIMEOUT)
        except BadRequest as exc:
            await self._send(writer, "GET", _text(400, f"Bad Request: {exc}"))
            return
        except TimeoutError:
            await self._send(writer, "GET", _text(408))
            return
        try:
            resp = await self.app.handle(method, target, headers)
        except Exception:
            log.exception("status server: error answering %s %s", method, target.split("?")[0])
            resp = _text(500)
        await self._send(writer, method, resp)

    async def _send(self, writer: asyncio.StreamWriter, method: str, resp: Response) -> None:
        head = [f"HTTP/1.1 {resp.status} {HTTPStatus(resp.status).phrase}",
                f"Content-Type: {resp.content_type}",
                f"Content-Length: {len(resp.body)}",
                "Connection: close"]
        head += [f"{k}: {v}" for k, v in {**self.app.headers, **resp.headers}.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += resp.body
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """Request line and header fields, within MAX_LINE per line and MAX_HEADERS lines."""
    line = await _readline(reader)
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _readline(reader)
        if not line:
            return method, target, headers
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header field")
        headers[name.lower()] = value.strip()
    raise BadRequest("too many header fields")


async def _readline(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise BadRequest("line too long") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BadRequest("incomplete request") from None
        raise
    try:
        return raw.decode("latin-1").rstrip("\r\n")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request") from None


async def run(ctx: DaemonContext, stopping: asyncio.Event) -> None:
    """Daemon service entry point ("gateway.status.server:run")."""
    server = StatusServer(ctx)
    await server.start()
    try:
        await stopping.wait()
    finally:
        await server.close()
