"""Gateways behind PgBouncer in transaction mode (docs/scale-out.md says what works).

Runs when pgbouncer is installed (Debian: `apt-get install pgbouncer`): a private
PgBouncer on loopback in front of the test run's PostgreSQL, two serve instances with two
workers each, new tickets and follow-ups. psycopg's prepared statements must be off there
(`[database] prepared_statements = false`): PgBouncer before 1.21 runs the next
transaction on whichever server connection is free.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, make_url, select

from tests.scaleout_helpers import deliver, serve_instances
from tests.support import integration_missing
from ticketstore.db import make_engine, upgrade
from ticketstore.models import Article


@contextlib.contextmanager
def pgbouncer(pg_url: str) -> Iterator[str]:
    """A transaction-mode PgBouncer in front of `pg_url`'s server; yields its URL."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        integration_missing("pgbouncer")
    url = make_url(pg_url)
    folder = Path(tempfile.mkdtemp(prefix="tg-pgb-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "users.txt").write_text(f'"{url.username}" "{url.password}"\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={url.host} port={url.port or 5432}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = md5\nauth_file = {folder}/users.txt\npool_mode = transaction\n"
        "max_client_conn = 200\ndefault_pool_size = 10\n"
        f"logfile = {folder}/log\npidfile = {folder}/pid\n")
    cmd = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.1)
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def _message(n: int, subject: str) -> bytes:
    return (f"From: c{n % 5}@sender.example\r\nTo: support@helpdesk.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <pgb-{n}@sender.example>\r\n\r\n{n}\r\n"
            ).encode()


def test_two_instances_behind_pgbouncer_in_transaction_mode(
        tmp_path: Path, pg_databases: object) -> None:
    direct = pg_databases.create()  # type: ignore[attr-defined]
    with pgbouncer(direct) as url:
        engine = make_engine(url, prepared_statements=False)
        upgrade(engine)  # the migrations run through PgBouncer too
        engine.dispose()
        with serve_instances(tmp_path, url, count=2, workers=2,
                             database={"prepared_statements": False}) as sockets:
            firsts = deliver(sockets[0], [_message(-i, f"new {i}") for i in range(1, 4)])
            numbers = [re.search(rb"ticket (\d+)", r[1]).group(1).decode()  # type: ignore[union-attr]
                       for r in firsts]
            work = [_message(n, f"Re: [Ticket#{numbers[n % 3]}] more" if n % 2 else f"new {n}")
                    for n in range(100)]
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = [a for rs in pool.map(
                    lambda c: deliver(sockets[c % 2], work[c::8]), range(8)) for a in rs]
    assert [a for a in answers if a[0] != 250] == []
    engine = make_engine(direct)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Article)) == 103
    finally:
        engine.dispose()
