"""`ticketgate serve` with intake worker processes (`[lmtp] workers = 2`), as a real process.

What must hold with workers as without: every message stored once and acknowledged
after its commit, SIGHUP reaching the sessions, SIGTERM draining to exit 0; plus what
workers add: connections spread over the workers, their counters on the status page,
a killed worker replaced, and no worker left behind when the master dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.server.workers import worker_count
from tests.server_helpers import MESSAGE, process_config, short_socket_dir
from tests.support import wait_until
from ticketstore.db import make_engine
from ticketstore.models import Ticket
from ticketstore.writelock import WriterLock


def _config(tmp_path: Path, sock: Path, strict: bool = False, lmtp: str = "") -> str:
    """The daemon config of tests/test_server_process.py, with two intake workers."""
    return process_config(tmp_path, sock, strict).replace("[lmtp]\n",
                                                          f"[lmtp]\nworkers = 2\n{lmtp}")


class Served:
    """A `ticketgate serve` process with two workers on a Unix socket."""

    def __init__(self, tmp_path: Path, lmtp: str = "") -> None:
        self.tmp_path = tmp_path
        self.sock = short_socket_dir() / "lmtp.sock"
        self.cfg = tmp_path / "tg.toml"
        self.cfg.write_text(_config(tmp_path, self.sock, lmtp=lmtp))
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.cfg), "serve"],
                stderr=err, cwd=Path(__file__).parent.parent)
        wait_until("the daemon to start", lambda: "worker processes serve" in self.log.read_text()
                   and "status page listening" in self.log.read_text())

    def lmtp(self) -> smtplib.LMTP:
        client = smtplib.LMTP(str(self.sock), local_hostname="localhost", timeout=30)
        client.ehlo("localhost")
        return client

    def status(self) -> dict[str, Any]:
        port = int(self.log.read_text().split("status page listening on http://127.0.0.1:")[1]
                   .split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status.json", timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def tickets(self) -> int:
        engine = make_engine(f"sqlite:///{self.tmp_path}/tg.db")
        try:
            with engine.connect() as conn:
                return int(conn.scalar(select(func.count()).select_from(Ticket)) or 0)
        finally:
            engine.dispose()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """Extra `[lmtp]` lines come from `parametrize("served", [...], indirect=True)`."""
    s = Served(tmp_path, getattr(request, "param", ""))
    try:
        yield s
    finally:
        pids = [w["pid"] for w in s.status()["workers"]] if s.proc.poll() is None else []
        s.stop()
        for pid in pids:  # never leave a worker behind, whatever the test did
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def message(i: int) -> bytes:
    return MESSAGE.replace(b"<app-1@", f"<w-{i}@".encode())


def test_four_connections_are_spread_over_both_workers_and_counted(served: Served) -> None:
    clients = [served.lmtp() for _ in range(4)]  # all open before any mail: 2 per worker
    codes: list[int] = []

    def send(client: smtplib.LMTP, first: int) -> None:
        for i in range(first, first + 10):
            client.mail("alice@customer.example")
            client.rcpt("support@helpdesk.example")
            codes.append(client.data(message(i))[0])
        client.quit()

    threads = [threading.Thread(target=send, args=(c, k * 10)) for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [250] * 40
    assert served.tickets() == 40
    status = wait_until("the workers' counters on the status page",
                        lambda: (s := served.status())["counters"].get("server.created") == 40
                        and s)
    workers = status["workers"]
    assert len(workers) == 2 and all(w["ready"] for w in workers)
    assert sorted(w["messages"] for w in workers) == [20, 20]
    assert len({w["pid"] for w in workers} | {served.proc.pid}) == 3
    assert served.stop() == 0
    log = served.log.read_text()
    assert log.count("disposition=created") == 40
    assert log.count("intake worker ready") == 2
    assert "(event loop: uvloop)" in log  # serve runs on uvloop where it is installed


def test_sighup_reaches_sessions_in_the_workers_before_ready(served: Served) -> None:
    client = served.lmtp()
    client.mail("alice@customer.example")
    assert client.rcpt("nobody@helpdesk.example")[0] == 250
    client.rset()
    served.cfg.write_text(_config(served.tmp_path, served.sock, strict=True))
    served.proc.send_signal(signal.SIGHUP)
    wait_until("master and both workers to reload",
               lambda: served.log.read_text().count("configuration reloaded") == 3)
    client.mail("alice@customer.example")
    assert client.rcpt("nobody@helpdesk.example")[0] == 550  # same connection, new config
    client.quit()


def test_a_killed_worker_is_replaced_and_mail_keeps_flowing(served: Served) -> None:
    victim = served.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    status = wait_until("the worker to be replaced",
                        lambda: (s := served.status())["workers"][0]["restarts"] == 1
                        and s["workers"][0]["ready"] and s)
    assert status["workers"][0]["pid"] != victim
    assert any("intake worker 0 exited" in e["message"] for e in status["latest_errors"])
    for i in range(4):  # whichever worker gets them
        client = served.lmtp()
        assert client.sendmail("a@customer.example", ["support@helpdesk.example"],
                               message(i)) == {}
        client.quit()
    assert served.tickets() == 4
    # Dying again soon after the restart: the next restart waits twice as long.
    os.kill(status["workers"][0]["pid"], signal.SIGKILL)
    wait_until("a longer restart delay", lambda: "restarting in 2 s" in served.log.read_text())


def test_a_message_in_flight_at_sigterm_is_answered_and_the_daemon_exits_0(
    served: Served,
) -> None:
    client = served.lmtp()
    client.mail("alice@customer.example")
    client.rcpt("support@helpdesk.example")
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(message(1)[:40])
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    client.send(message(1)[40:] + b".\r\n")
    code, _text = client.getreply()
    client.close()
    assert code == 250
    assert served.proc.wait(60) == 0
    assert served.tickets() == 1
    assert not served.sock.exists()


def test_workers_exit_when_the_master_dies(served: Served) -> None:
    pids = served.worker_pids()
    served.proc.kill()
    served.proc.wait()

    def gone() -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            # A zombie until init reaps it counts as gone.
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state != "Z":
                return False
        return True

    wait_until("the workers to notice the master has gone", gone)


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count(0) == max(1, min(os.cpu_count() or 1, 8))


def test_the_writer_lock_excludes_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "db-writer.lock"
    code = ("import sys, time; from pathlib import Path; "
            "from ticketstore.writelock import WriterLock; "
            "lock = WriterLock(Path(sys.argv[1])); print('waiting', flush=True); "
            "t = time.monotonic(); lock.__enter__(); print(time.monotonic() - t)")
    with WriterLock(path):
        other = subprocess.Popen([sys.executable, "-c", code, str(path)], text=True,
                                 stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
        assert other.stdout is not None
        assert other.stdout.readline() == "waiting\n"
        time.sleep(0.5)
        assert other.poll() is None  # still waiting for our lock
    waited = float(other.communicate(timeout=30)[0])
    assert waited >= 0.4


def test_sigint_is_for_the_master_alone(served: Served) -> None:
    """Ctrl-C in a terminal reaches the whole process group, workers first as often as
    not: a worker that stopped on its own would be "restarted" as if it had crashed."""
    pids = served.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(1.5)  # a worker stopping would have been noticed (and restarted) by now
    assert served.worker_pids() == pids
    assert all(w["restarts"] == 0 for w in served.status()["workers"])
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(60) == 0
    text = served.log.read_text()
    assert "restarting" not in text and text.count("stopped") == 3, text


def _greeting(path: Path) -> tuple[socket.socket, bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))
    return sock, sock.recv(512)


@pytest.mark.parametrize("served", ["max_connections = 4\n"], indirect=True)
def test_a_connection_flood_is_refused_with_421_while_a_client_is_served(
    served: Served,
) -> None:
    """The master counts every worker's connections against `[lmtp] max_connections`."""
    client = served.lmtp()  # the MTA's session, open before the flood
    flood: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(20):
            sock, greeting = _greeting(served.sock)
            flood.append(sock)
            greetings.append(greeting)
        assert sum(g.startswith(b"220 ") for g in greetings) == 3
        assert sum(g.startswith(b"421 4.3.2 ") for g in greetings) == 17, greetings
        for i in range(3):  # meanwhile the MTA's session is served
            assert client.sendmail("alice@customer.example", ["support@helpdesk.example"],
                                   message(i)) == {}
    finally:
        for sock in flood:
            sock.close()
    client.quit()

    def served_again() -> bool:
        sock, greeting = _greeting(served.sock)
        sock.close()
        return greeting.startswith(b"220 ")

    wait_until("new sessions once the flood has gone", served_again, timeout=20)
    assert served.tickets() == 3
    assert served.status()["counters"]["server.connections_refused"] >= 17


HEARTBEAT = "heartbeat_interval = 0.2\nheartbeat_timeout = 5.0\n"


@pytest.mark.parametrize("served", [HEARTBEAT], indirect=True)
def test_a_stopped_worker_gets_no_connections_and_is_restarted(served: Served) -> None:
    victim = served.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_until("the master to stop counting on the silent worker",
                   lambda: not served.status()["workers"][0]["ready"], timeout=20)
        for i in range(6):  # none of them waits for the stopped worker
            client = served.lmtp()
            assert client.sendmail("alice@customer.example", ["support@helpdesk.example"],
                                   message(i)) == {}
            client.quit()
        status = wait_until("the silent worker to be replaced",
                            lambda: (s := served.status())["workers"][0]["pid"] != victim
                            and s["workers"][0]["ready"] and s, timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)  # never leave it behind, stopped

    def reaped() -> bool:
        try:
            os.kill(victim, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until("the stopped worker to be killed", reaped, timeout=10)
    assert any("intake worker 0 hung" in e["message"] for e in status["latest_errors"])
    assert served.tickets() == 6
    client = served.lmtp()  # both workers serve again
    assert client.sendmail("alice@customer.example", ["support@helpdesk.example"],
                           message(7)) == {}
    client.quit()
    assert served.stop() == 0
    log = served.log.read_text()
    assert f"intake worker 0 (pid {victim}) does not answer" in log
    assert f"intake worker 0 (pid {victim}) hung for" in log


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _worker_started(pid: int) -> bool:
    """Past exec: the child runs `serve --worker` (stopped between fork and exec, it
    would stop the master too, which waits there for the exec)."""
    try:
        return b"--worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _health(served: Served) -> dict[str, Any]:
    port = int(served.log.read_text().split("status page listening on http://127.0.0.1:")[1]
               .split("/")[0])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:  # 503: failing
        return json.loads(exc.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("served", [HEARTBEAT], indirect=True)
def test_a_restarted_worker_that_never_gets_ready_is_killed(served: Served) -> None:
    assert _health(served)["checks"]["workers"] == {"ok": True,
                                                    "detail": "2 of 2 intake workers serve"}
    before = _children(served.proc.pid)
    victim = served.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # Its replacement is stopped as soon as it runs: long before it could be ready.
    hung = wait_until("the replacement worker", lambda: next(
        (c for c in _children(served.proc.pid) - before - {victim} if _worker_started(c)),
        None), timeout=20)
    os.kill(hung, signal.SIGSTOP)
    try:
        health = _health(served)
        assert health["status"] == "fail" and "workers" in health["failing"]
        assert health["checks"]["workers"]["detail"].startswith(
            "1 of 2 intake workers serve; not serving: 0")
        status = wait_until("the never-ready worker to be replaced",
                            lambda: (s := served.status())["workers"][0]["pid"] not in
                            (victim, hung) and s["workers"][0]["ready"] and s, timeout=40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)
    assert any("intake worker 0 not ready" in e["message"] for e in status["latest_errors"])
    assert f"intake worker 0 (pid {hung}) not ready" in served.log.read_text()
    assert _health(served)["checks"]["workers"]["ok"] is True
