"""End to end through a real, private Postfix instance on loopback.

Postfix (its own config, queue and log folders in a temp dir; smtpd on a free
127.0.0.1 port, not 25, so parallel runs and a system Postfix don't collide) relays
four domains to ticketgate:

    helpdesk.example  lmtp:inet:127.0.0.1:<gateway port>
    unix.example      ticketgate-lmtp:unix:<gateway socket>  (as in docs/postfix.md)
    pipe.example      pipe(8) -> ticketgate pipe -> hand-off to the daemon
    inproc.example    pipe(8) -> ticketgate pipe, processing in-process
    small.example     pipe(8) -> ticketgate pipe with a 2 KiB size limit (bounces)

The gateway and pipe(8) run as `nobody` (pipe(8) refuses root), so the test makes the
interpreter, the virtualenv and the checkout traversable for other users when they
are not (e.g. a pyenv Python under /root) and keeps its files in a 0755 temp dir.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.ops_helpers import RUN_AS, TICKETGATE, as_user, free_port, prepare_code_for_user
from tests.support import integration_missing, wait_until

pytestmark = pytest.mark.integration

DOMAINS = ("helpdesk.example", "unix.example", "pipe.example", "inproc.example")


def _as_user() -> dict[str, Any]:
    """subprocess arguments to run as RUN_AS (the fixture made sure we are root)."""
    return as_user()


@dataclass
class Site:
    root: Path
    gateway_port: int
    smtpd_port: int
    gateway: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.root / "postfix"

    @property
    def gw(self) -> Path:
        return self.root / "gw"

    @property
    def maillog(self) -> str:
        path = self.root / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self) -> str:
        gwlog = self.gw / "serve.log"
        return ("--- postfix.log\n" + self.maillog[-4000:] + "\n--- serve.log\n"
                + (gwlog.read_text(errors="replace")[-4000:] if gwlog.exists() else ""))

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=60, check=False)

    def queue(self) -> list[dict[str, Any]]:
        out = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], capture_output=True,
                             text=True, timeout=60, check=True)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.conf), "-f"], timeout=60, check=True)

    def start_gateway(self) -> None:
        log = (self.gw / "serve.log").open("ab")
        self.gateway = subprocess.Popen(
            [str(TICKETGATE), "-c", str(self.gw / "tg.toml"), "serve"],
            **_as_user(), cwd=self.gw, stdout=log, stderr=log)
        log.close()

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.gateway_port), timeout=1).close()
            except OSError:
                return False
            return (self.gw / "run" / "handoff.sock").exists()

        wait_until("the gateway to listen", listening, diagnostics=self.diagnostics)

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            assert self.gateway.wait(60) == 0
        self.gateway = None

    def send(self, rcpts: list[str], message_id: str, subject: str = "Help") -> None:
        msg = EmailMessage()
        msg["From"] = "Carol Customer <carol@customer.example>"
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{message_id}>"
        msg.set_content("The printer is on fire.\n")
        with smtplib.SMTP("127.0.0.1", self.smtpd_port, local_hostname="localhost",
                          timeout=30) as s:
            s.send_message(msg, from_addr="carol@customer.example", to_addrs=rcpts)

    def tickets_for(self, message_id: str) -> tuple[int, int]:
        """(distinct tickets, inbound articles) for a Message-ID, read as the gateway user."""
        code = ("import sqlite3,sys,json;c=sqlite3.connect(sys.argv[1]);"
                "r=c.execute(\"select count(distinct ticket_id),count(*) from articles "
                "where message_id=? and direction='in'\",(sys.argv[2],)).fetchone();"
                "print(json.dumps(r))")
        out = subprocess.run([sys.executable, "-c", code, str(self.gw / "tg.db"), message_id],
                             **_as_user(), capture_output=True, text=True, timeout=60,
                             check=True, cwd="/")
        tickets, articles = json.loads(out.stdout)
        return int(tickets), int(articles)


def _gateway_config(site: Site, handoff: bool) -> str:
    addresses = ", ".join(f'"support@{d}"' for d in DOMAINS)
    billing = ", ".join(f'"billing@{d}"' for d in DOMAINS)
    handoff_socket = f"{site.gw}/run/handoff.sock" if handoff else ""
    return f"""
[database]
url = "sqlite:///{site.gw}/tg.db"
[lmtp]
listen = ["127.0.0.1:{site.gateway_port}", "unix:{site.gw}/run/postfix.sock"]
[pipe]
handoff_socket = "{site.gw}/run/handoff.sock"
require_daemon = false
[intake]
spool_dir = "{site.gw}/spool"
[rules]
dir = "{site.gw}/rules"
[templates]
dir = "{site.gw}/templates"
[autoresponse]
enabled = false
[status]
listen = "127.0.0.1:0"
[[queues]]
name = "Support"
addresses = [{addresses}]
[[queues]]
name = "Billing"
addresses = [{billing}]
""".replace(f'handoff_socket = "{site.gw}/run/handoff.sock"\nrequire',
            f'handoff_socket = "{handoff_socket}"\nrequire')


def _postfix_config(site: Site) -> tuple[str, str, str]:
    pipe = (f"pipe flags=DRX user={RUN_AS} argv={TICKETGATE} -c CFG pipe "
            "-f ${sender} -r ${recipient}")
    main = f"""
compatibility_level = 3.6
queue_directory = {site.root}/queue
data_directory = {site.root}/data
maillog_file = {site.root}/postfix.log
maillog_file_prefixes = {site.root}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.tgtest.invalid
mydomain = tgtest.invalid
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = {", ".join(DOMAINS)}, small.example
transport_maps = texthash:{site.conf}/transport
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery here
biff = no
# Retries happen only when the test flushes the queue.
minimal_backoff_time = 1h
maximal_backoff_time = 1h
queue_run_delay = 1h
lmtp_connect_timeout = 5s
# flags=D (Delivered-To) needs one recipient per pipe(8) delivery.
tgpipe_destination_recipient_limit = 1
tginproc_destination_recipient_limit = 1
tgsmall_destination_recipient_limit = 1
"""
    master = f"""
127.0.0.1:{site.smtpd_port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
ticketgate-lmtp unix - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tgpipe    unix  - n n - - {pipe.replace("CFG", str(site.gw / "tg.toml"))}
tginproc  unix  - n n - - {pipe.replace("CFG", str(site.gw / "inproc.toml"))}
tgsmall   unix  - n n - - {pipe.replace("CFG", str(site.gw / "small.toml"))}
"""
    transport = (f"helpdesk.example lmtp:inet:127.0.0.1:{site.gateway_port}\n"
                 f"unix.example ticketgate-lmtp:unix:{site.gw}/run/postfix.sock\n"
                 "pipe.example tgpipe:\n"
                 "inproc.example tginproc:\n"
                 "small.example tgsmall:\n")
    return main, master, transport


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if shutil.which("postfix") is None or shutil.which("postqueue") is None:
        integration_missing("postfix")
    if os.geteuid() != 0:
        integration_missing("postfix (starting a private instance needs root)")
    user = pwd.getpwnam(RUN_AS)
    prepare_code_for_user()
    root = Path(tempfile.mkdtemp(prefix="tg-postfix-", dir="/tmp"))
    s = Site(root, free_port(), free_port())
    started = False
    try:
        os.chmod(root, 0o755)
        for d in (s.conf, root / "queue", root / "data", s.gw, s.gw / "rules",
                  s.gw / "templates", s.gw / "run", s.gw / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(root / "data", "postfix")
        (s.gw / "tg.toml").write_text(_gateway_config(s, handoff=True))
        (s.gw / "inproc.toml").write_text(_gateway_config(s, handoff=False))
        (s.gw / "small.toml").write_text(_gateway_config(s, handoff=True).replace(
            "[intake]\n", "[intake]\nmax_message_size = 2048\n"))
        for path in [s.gw, *s.gw.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        main, master, transport = _postfix_config(s)
        (s.conf / "main.cf").write_text(main)
        (s.conf / "master.cf").write_text(master)
        (s.conf / "transport").write_text(transport)
        s.start_gateway()
        out = s.postfix("start")
        started = True
        assert out.returncode == 0, out.stdout + out.stderr + s.diagnostics()
        yield s
    finally:
        if started:
            s.postfix("stop")
            wait_until("postfix to stop", lambda: s.postfix("status").returncode != 0, 30)
        if s.gateway is not None and s.gateway.poll() is None:
            s.gateway.send_signal(signal.SIGTERM)
            try:
                s.gateway.wait(30)
            except subprocess.TimeoutExpired:
                s.gateway.kill()
                s.gateway.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_mail_reaches_tickets_over_lmtp_tcp_lmtp_unix_and_pipe(site: Site) -> None:
    for domain in DOMAINS:
        site.send([f"support@{domain}"], f"route-{domain}@customer.example",
                  subject=f"via {domain}")
    for domain in DOMAINS:
        mid = f"route-{domain}@customer.example"
        wait_until(f"a ticket from {domain}", lambda m=mid: site.tickets_for(m) == (1, 1),
              diagnostics=site.diagnostics)
    wait_until("an empty queue", lambda: site.queue() == [], diagnostics=site.diagnostics)
    assert "status=bounced" not in site.maillog


def test_one_message_to_many_of_our_addresses_is_one_ticket(site: Site) -> None:
    mid = "multi-1@customer.example"
    rcpts = ["support@helpdesk.example", "billing@helpdesk.example",
             "support@pipe.example", "billing@pipe.example", "support@inproc.example"]
    site.send(rcpts, mid)
    wait_until("every recipient delivered",
          lambda: site.maillog.count("status=sent") >= 4 + len(rcpts) and site.queue() == [],
          diagnostics=site.diagnostics)
    assert site.tickets_for(mid) == (1, 1), site.diagnostics()


def test_gateway_down_means_deferred_not_bounced_then_delivered_on_flush(site: Site) -> None:
    mid = "while-down-1@customer.example"
    site.stop_gateway()
    site.send(["support@helpdesk.example"], mid)

    def deferred() -> bool:
        return any(e["queue_name"] == "deferred" for e in site.queue())

    wait_until("postfix to defer the message", deferred, diagnostics=site.diagnostics)
    assert "status=deferred" in site.maillog
    assert "status=bounced" not in site.maillog
    site.start_gateway()
    site.flush()
    wait_until("delivery after the flush", lambda: site.tickets_for(mid) == (1, 1),
          diagnostics=site.diagnostics)
    wait_until("an empty queue", lambda: site.queue() == [], diagnostics=site.diagnostics)


def test_a_read_only_database_is_named_in_postfixs_log_and_clears_once_fixed(
        site: Site) -> None:
    """The gateway's database and its folder made read-only under the running gateway:
    Postfix defers each message with the cause in its log line, over LMTP (the 451's
    category), through the pipe handing over to the daemon and through the pipe working
    in-process (their one stderr line); after the fix a flush delivers everything."""
    routes = {"helpdesk.example": "lmtp", "pipe.example": "pipe", "inproc.example": "inproc"}
    db, folder = site.gw / "tg.db", site.gw
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (db, folder)}
    for path, mode in modes.items():
        os.chmod(path, mode & ~0o222)
    seen = len(site.maillog)  # earlier tests' deferrals do not count
    try:
        for domain in routes:
            site.send([f"support@{domain}"], f"ro-{domain}@customer.example")

        def deferred_lines() -> list[str]:
            return [line for line in site.maillog[seen:].splitlines()
                    if "status=deferred" in line and "support@" in line
                    and any(f"@{d}" in line for d in routes)]

        wait_until("three deferrals", lambda: len(deferred_lines()) >= 3,
                   diagnostics=site.diagnostics)
        lines = deferred_lines()
        lmtp = next(line for line in lines if "@helpdesk.example" in line)
        assert "451 4.3.0 database read-only, try again later" in lmtp, lmtp
        handed = next(line for line in lines if "@pipe.example" in line)
        assert "database read-only (the daemon's reply)" in handed, handed
        inproc = next(line for line in lines if "@inproc.example" in line)
        assert f"database at {db} is read-only" in inproc, inproc
        assert "status=bounced" not in site.maillog[seen:]
    finally:
        for path, mode in modes.items():
            os.chmod(path, mode)
    site.flush()
    for domain in routes:
        mid = f"ro-{domain}@customer.example"
        wait_until(f"delivery via {domain} after the fix",
                   lambda m=mid: site.tickets_for(m) == (1, 1), diagnostics=site.diagnostics)


def test_oversize_mail_through_the_pipe_is_bounced_with_5_3_4(site: Site) -> None:
    """Issue 17: pipe(8) bounces it to the sender with the DSN status the pipe printed,
    instead of the pipe's old exit 0 that discarded it. (Last in this file: the other
    tests check that nothing bounced.)"""
    mid = "too-big-1@customer.example"
    site.send(["support@small.example"], mid, subject="A small one")
    site_big = EmailMessage()
    site_big["From"] = "carol@customer.example"
    site_big["To"] = "support@small.example"
    site_big["Subject"] = "A big one"
    site_big["Message-ID"] = "<too-big-2@customer.example>"
    site_big.set_content("line of text\n" * 400)
    with smtplib.SMTP("127.0.0.1", site.smtpd_port, local_hostname="localhost",
                      timeout=30) as s:
        s.send_message(site_big, from_addr="carol@customer.example",
                       to_addrs=["support@small.example"])

    def bounced() -> list[str]:
        return [line for line in site.maillog.splitlines()
                if "to=<support@small.example>" in line and "status=bounced" in line]

    (line,) = wait_until("the bounce", bounced, diagnostics=site.diagnostics)
    assert "dsn=5.3.4" in line and "exceeds the limit of 2048 bytes" in line, line
    assert site.tickets_for("too-big-2@customer.example") == (0, 0)
    # The small one went through the same transport.
    wait_until("the small one", lambda: site.tickets_for(mid) == (1, 1),
               diagnostics=site.diagnostics)
