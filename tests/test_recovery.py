"""Recovery without a restart, against a real `ticketgate serve` with worker processes.

The database is broken under the running daemon (SQLite file and folder made read-only;
a private PostgreSQL stopped), deliveries are answered 451 with the cause, and once the
cause is fixed the next delivery on every worker is stored: no SIGHUP, no restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gateway.sysexits import EX_CANTCREAT
from tests.ops_helpers import (
    Serve,
    deliver,
    free_port,
    give_to_user,
    healthz,
    lmtp,
    message,
    prepare_code_for_user,
    site_dir,
    status_json,
)
from tests.support import integration_missing, wait_until

pytestmark = pytest.mark.integration

STREAK = 2  # [status] max_tempfail_streak in these sites


def write_site(root: Path, db_url: str, status_port: int, workers: int = 2) -> Path:
    cfg = root / "tg.toml"
    cfg.write_text(f"""
[database]
url = "{db_url}"
busy_timeout = 1.0
[lmtp]
listen = ["unix:{root}/lmtp.sock"]
workers = {workers}
[pipe]
handoff_socket = ""
[intake]
spool_dir = "{root}/spool"
[autoresponse]
enabled = false
[status]
listen = "127.0.0.1:{status_port}"
max_tempfail_streak = {STREAK}
[[queues]]
name = "Support"
addresses = ["support@helpdesk.example"]
""")
    return cfg


def start(cfg: Path, stack: ExitStack) -> Serve:
    serve = Serve(cfg)
    stack.callback(serve.stop)
    sock = cfg.parent / "lmtp.sock"
    wait_until("serve to listen", lambda: sock.exists() or serve.proc.poll() is not None,
               diagnostics=lambda: serve.log)
    assert serve.proc.poll() is None, serve.log
    return serve


def messages_per_worker(port: int) -> list[int]:
    return [w["messages"] for w in status_json(port).get("workers") or []]


def both_workers(cfg: Path, stack: ExitStack, serve: Serve, port: int) -> list[smtplib.LMTP]:
    """Two connections kept open: the master gives each to a different worker (the one
    with the fewest connections). Each stores one message (messages 1 and 2), and the
    status page shows that each worker took one."""
    clients = []
    for n in (1, 2):
        client = lmtp(cfg.parent / "lmtp.sock")
        stack.callback(client.close)
        clients.append(client)
        assert deliver(client, message(n))[0] == 250, serve.log
    wait_until("both workers to have stored one", lambda: messages_per_worker(port) == [1, 1])
    return clients


def _read_only(paths: list[Path]) -> None:
    for p in paths:
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~0o222)


def _writable(paths: list[Path]) -> None:
    for p in paths:
        os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o200)


@pytest.fixture
def user_site() -> Iterator[Path]:
    prepare_code_for_user()
    with site_dir() as root:
        yield root


def test_sqlite_made_read_only_and_fixed_under_a_running_daemon(user_site: Path) -> None:
    root = user_site
    port = free_port()
    cfg = write_site(root, f"sqlite:///{root}/db/tg.db", port)
    (root / "db").mkdir()
    give_to_user(root)
    with ExitStack() as stack:
        serve = start(cfg, stack)
        clients = both_workers(cfg, stack, serve, port)
        n = len(clients)

        broken = [root / "db" / "tg.db", root / "db"]
        _read_only(broken)
        try:
            for client in clients:
                n += 1
                code, text = deliver(client, message(n))
                assert (code, text) == (451, "4.3.0 database read-only, try again later"), \
                    serve.log
            # The log names the file and SQLite's own words, once per failure.
            wait_until("the cause in the log", lambda: serve.count(
                f"answered 451: database at {root}/db/tg.db is read-only "
                "(attempt to write a readonly database)") >= 2, diagnostics=lambda: serve.log)
            # /healthz fails on the streak; "Latest errors" names the cause.
            _status, doc = wait_until("healthz to fail", lambda: (
                r := healthz(port))[0] == 503 and r)
            assert doc["failing"] == ["intake"], doc
            assert "the last 2 deliveries were answered 451" in doc["checks"]["intake"]["detail"]
            errors = [e["message"] for e in status_json(port)["latest_errors"]]
            assert any(m.startswith("451 database read-only: database at ") for m in errors)
        finally:
            _writable(broken)

        for client in clients:  # fixed: both workers store again, nothing restarted
            n += 1
            assert deliver(client, message(n))[0] == 250, serve.log
        wait_until("healthz to clear", lambda: healthz(port)[0] == 200)
        assert serve.count("exited with code") == 0
    assert "alice@customer.example" not in serve.log  # customer data only with -v


def test_serve_refuses_to_start_on_a_read_only_database_or_spool(user_site: Path) -> None:
    root = user_site
    cfg = write_site(root, f"sqlite:///{root}/db/tg.db", free_port(), workers=1)
    (root / "db").mkdir()
    (root / "spool").mkdir()
    give_to_user(root)
    with ExitStack() as stack:  # create the schema, then stop
        start(cfg, stack)
    db = root / "db" / "tg.db"
    _read_only([db, root / "db"])
    try:
        serve = Serve(cfg)
        assert serve.proc.wait(60) == EX_CANTCREAT, serve.log
        serve.stop()
        assert (f"cannot start: database at {db} is read-only (attempt to write a readonly "
                "database)") in serve.log
        assert "ready" not in serve.log
    finally:
        _writable([db, root / "db"])
    _read_only([root / "spool", root / "spool" / "failed"])
    try:
        serve = Serve(cfg)
        assert serve.proc.wait(60) == EX_CANTCREAT, serve.log
        serve.stop()
        assert f"cannot start: quarantine spool: Permission denied: {root}/spool" in serve.log
    finally:
        _writable([root / "spool", root / "spool" / "failed"])


# -- PostgreSQL: a private, throw-away cluster (never the shared one on 5432) -------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.data, self.port = bindir, root / "data", port
        self.logfile = root / "pg.log"

    def _run(self, *args: str) -> None:
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                             cwd="/", **kwargs)
        assert out.returncode == 0, out.stdout + out.stderr

    def initdb(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                  "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.data} -c fsync=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                  "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                  "-t", "60", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    bindir = _pg_bin()
    if bindir is None:
        integration_missing("PostgreSQL's initdb/pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="tg-pg-", dir="/tmp"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(bindir, root, free_port())
    running = False
    try:
        pg.initdb()
        pg.start()
        running = True
        yield pg
    finally:
        if running and (pg.data / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_stopped_and_started_under_a_running_daemon(
        private_pg: PrivatePostgres) -> None:
    with site_dir() as root, ExitStack() as stack:
        port = free_port()
        cfg = write_site(root, private_pg.url, port)
        give_to_user(root)
        subprocess.run([sys.executable, "-m", "gateway", "-c", str(cfg), "db", "upgrade"],
                       check=True, capture_output=True, timeout=120)
        serve = start(cfg, stack)
        clients = both_workers(cfg, stack, serve, port)
        n = len(clients)

        private_pg.stop()
        for client in clients:
            n += 1
            assert deliver(client, message(n)) == (
                451, "4.3.0 database unavailable, try again later"), serve.log
        wait_until("the cause in the log", lambda: serve.count(
            f"answered 451: PostgreSQL at 127.0.0.1:{private_pg.port} refused the connection")
            >= 2, diagnostics=lambda: serve.log)
        status, doc = healthz(port)
        assert status == 503 and "database" in doc["failing"], doc
        assert doc["checks"]["database"]["detail"] == (
            f"PostgreSQL at 127.0.0.1:{private_pg.port} refused the connection")

        private_pg.start()
        for client in clients:
            n += 1
            assert deliver(client, message(n))[0] == 250, serve.log
        wait_until("healthz to clear", lambda: healthz(port)[0] == 200)
        assert serve.count("exited with code") == 0
        assert "postgres@" not in serve.log.replace(private_pg.url, "")


def test_a_reload_error_is_logged_once_as_one_line_not_per_process(user_site: Path) -> None:
    """Master and two workers read the same broken rule file: the daemon says so once,
    on a file change and again on SIGHUP, each time as one line."""
    root = user_site
    cfg = write_site(root, f"sqlite:///{root}/tg.db", free_port())
    cfg.write_text(cfg.read_text() + '[rules]\ndir = "rules"\nwatch_interval = 0.1\n')
    (root / "rules").mkdir()
    (root / "rules" / "10-main.toml").write_text(
        '[[rule]]\nname = "billing"\nsubject_matches = "invoice"\nqueue = "Support"\n')
    give_to_user(root)
    with ExitStack() as stack:
        serve = start(cfg, stack)
        wait_until("both workers", lambda: serve.count("intake worker ready") == 2
                   or serve.count("worker processes serve") == 1, diagnostics=lambda: serve.log)
        broken = root / "rules" / "20-broken.toml"
        broken.write_text('[[rule]]\nname = "broken"\nsubject_matches = "(unclosed"\n'
                          'queue = "Support"\n')
        problem = "20-broken.toml:3: rule 'broken'"
        wait_until("the reload error", lambda: serve.count(problem) >= 1,
                   diagnostics=lambda: serve.log)
        serve.proc.send_signal(signal.SIGHUP)
        wait_until("the SIGHUP's reload error", lambda: serve.count(problem) >= 2,
                   diagnostics=lambda: serve.log)
        time.sleep(2)  # a late duplicate from a worker would show by now
        lines = [line for line in list(serve.lines) if problem in line]
        assert len(lines) == 2, serve.log
        assert all("rule reload failed, keeping the 1 rules loaded before: " in line
                   for line in lines), lines
        following = [serve.lines[serve.lines.index(line) + 1] for line in lines
                     if serve.lines.index(line) + 1 < len(serve.lines)]
        assert all(line[:4].isdigit() for line in following), following  # no continuation
