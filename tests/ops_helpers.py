"""Helpers for the operations tests: a real `ticketgate serve` process, run as an
unprivileged user when the tests run as root (root ignores file permissions), and LMTP
deliveries over connections kept open (so each worker process takes one)."""

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
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.handoff import lmtp_payload

PROJECT = Path(__file__).resolve().parent.parent
TICKETGATE = Path(sys.executable).with_name("ticketgate")
RUN_AS = "nobody"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_user() -> dict[str, Any]:
    """subprocess arguments to run as RUN_AS (when root) with its own group only."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(RUN_AS)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _traversable_for_others(path: Path) -> None:
    for folder in [path, *path.parents]:
        if folder.is_dir():
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(folder, mode | stat.S_IXOTH)


def prepare_code_for_user() -> None:
    """Let RUN_AS run this interpreter and checkout (a pyenv Python under /root...)."""
    if os.geteuid() != 0:
        return
    probe = [str(TICKETGATE), "--version"]

    def works() -> bool:
        try:
            return subprocess.run(probe, **as_user(), capture_output=True, timeout=60,
                                  check=False, cwd="/").returncode == 0
        except PermissionError:
            return False

    if works():
        return
    for p in (Path(os.path.realpath(sys.executable)), Path(sys.prefix), Path(sys.base_prefix),
              PROJECT):
        _traversable_for_others(p if p.is_dir() else p.parent)
    if not works():
        pytest.fail(f"user {RUN_AS} cannot run {TICKETGATE}: make the checkout and the "
                    "virtualenv readable for it")


@contextmanager
def site_dir() -> Iterator[Path]:
    """A 0755 folder in /tmp (short Unix socket paths) owned by the gateway's user."""
    root = Path(tempfile.mkdtemp(prefix="tg-ops-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        yield root
    finally:
        for path in [root, *root.rglob("*")]:  # undo any chmod a test left behind
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o755)
        shutil.rmtree(root, ignore_errors=True)


def give_to_user(root: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(RUN_AS)
        for path in [root, *root.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)


class Serve:
    """`python -m gateway -c CFG serve` as RUN_AS; stderr lines collected."""

    def __init__(self, config: Path, *args: str) -> None:
        self.lines: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
        env.update(PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config), *args, "serve"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, cwd=config.parent, env=env, **as_user())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(list(self.lines))

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def message(n: int, extra: str = "") -> bytes:
    return (f"{extra}From: Alice <alice@customer.example>\r\nTo: support@helpdesk.example\r\n"
            f"Subject: Printer {n}\r\nMessage-ID: <ops-{n}@customer.example>\r\n\r\n"
            "Please help.\r\n").encode()


def deliver(client: smtplib.LMTP, body: bytes) -> tuple[int, str]:
    """One message to support@; the one recipient's reply."""
    assert client.mail("alice@customer.example")[0] == 250
    assert client.rcpt("support@helpdesk.example")[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(lmtp_payload(body))
    code, text = client.getreply()
    return code, text.decode()


def lmtp(sock: Path) -> smtplib.LMTP:
    client = smtplib.LMTP(str(sock), local_hostname="localhost", timeout=60)
    client.ehlo("localhost")
    return client


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def status_json(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status.json", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]
