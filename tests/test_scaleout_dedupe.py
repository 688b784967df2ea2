"""Two MX hosts, each with its own gateway, one PostgreSQL: one message, one ticket.

The sending MTA hands the message to MX 1, times out after DATA and hands it to MX 2;
each MX added its own trace, SPF/DKIM/ARC verdicts and spam scores. Each "host" is a
`ticketgate pipe` process with its own config and spool.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from tests.pipe_helpers import SUPPORT, ticketgate, write_config
from ticketstore.models import Article, Ticket

MESSAGE = (b"From: Customer <customer@sender.example>\r\nTo: " + SUPPORT.encode()
           + b"\r\nSubject: printer on fire\r\nMessage-ID: <fire-1@sender.example>\r\n"
           b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1; b=QUJD\r\n"
           b"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\nIt is on fire.\r\n")


def through(mx: str, spam: str) -> bytes:
    """The message as the gateway on MX host `mx` receives it."""
    return (f"Return-Path: <customer@sender.example>\r\nDelivered-To: {SUPPORT}\r\n"
            f"Received: from mail.sender.example by {mx}.helpdesk.example with ESMTPS\r\n"
            f"\tid 4F{mx}; Mon, 07 Dec 2026 10:00:0{len(mx)} +0000\r\n"
            f"Received-SPF: pass ({mx}.helpdesk.example: 192.0.2.7 is allowed)\r\n"
            f"Authentication-Results: {mx}.helpdesk.example; dkim=pass header.d=sender.example\r\n"
            f"ARC-Seal: i=1; a=rsa-sha256; d=helpdesk.example; s={mx}; cv=none; b={mx}AA\r\n"
            f"ARC-Authentication-Results: i=1; {mx}.helpdesk.example; spf=pass\r\n"
            f"X-Spam-Status: {spam}\r\nX-Virus-Scanned: clamav at {mx}\r\n"
            f"X-Rspamd-Server: {mx}\r\n").encode() + MESSAGE


@pytest.fixture
def hosts(tmp_path: Path, pg_databases: object) -> tuple[Path, Path, str]:
    url = pg_databases.migrated()  # type: ignore[attr-defined]
    configs = []
    for mx in ("mx1", "mx2"):
        (tmp_path / mx).mkdir()
        configs.append(write_config(tmp_path / mx, url))
    return configs[0], configs[1], url


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(Ticket)).scalar_one(),
                    conn.execute(select(func.count()).select_from(Article)).scalar_one())
    finally:
        engine.dispose()


def test_a_retry_through_the_other_mx_host_is_a_duplicate(hosts: tuple[Path, Path, str]) -> None:
    mx1, mx2, url = hosts
    first = ticketgate(mx1, "pipe", stdin=through("mx1", "No, score=0.1"))
    assert first.returncode == 0, first.stderr
    assert _counts(url) == (1, 1)
    second = ticketgate(mx2, "pipe", stdin=through("mx2", "No, score=1.3"))
    assert second.returncode == 0, second.stderr
    assert _counts(url) == (1, 1)


def test_both_mx_hosts_at_once_store_one_ticket(hosts: tuple[Path, Path, str]) -> None:
    mx1, mx2, url = hosts
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # each call is its own process
        runs = list(pool.map(lambda args: ticketgate(args[0], "pipe", stdin=args[1]),
                             [(mx1, through("mx1", "No")), (mx2, through("mx2", "No")),
                              (mx1, through("mx1", "No")), (mx2, through("mx2", "Yes"))]))
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert _counts(url) == (1, 1)
