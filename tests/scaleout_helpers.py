"""Several `ticketgate serve` processes ("MX hosts") on one database, and LMTP clients.

Shared by the multi-writer tests (tests/test_scaleout_*.py). Each instance has its own
folder (config, spool, Unix socket), as each host of a scaled-out site has.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.pipe_helpers import ROOT, SUPPORT, write_config
from tests.server_helpers import send, short_socket_dir


def lmtp(sock: Path) -> smtplib.LMTP:
    client = smtplib.LMTP(str(sock), local_hostname="localhost", timeout=60)
    client.ehlo("localhost")
    return client


@contextlib.contextmanager
def serve_instances(base: Path, url: str, count: int, workers: int = 2,
                    **sections: dict[str, object]) -> Iterator[list[Path]]:
    """`count` serve processes on `url`; yields their LMTP sockets, stops them after."""
    sockets, procs = [], []
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        for i in range(count):
            folder = base / f"mx{i + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            sock = short_socket_dir() / "lmtp.sock"
            config = write_config(folder, url, **{
                "lmtp": {"listen": [f"unix:{sock}"], "workers": workers},
                "status": {"listen": "127.0.0.1:0"}, **sections})
            log = (folder / "serve.log").open("wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(config), "serve"],
                env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            sockets.append(sock)
        for sock, proc in zip(sockets, procs, strict=True):
            _wait_ready(sock, proc)
        yield sockets
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            lmtp(sock).quit()
            return
        time.sleep(0.1)
    raise AssertionError("serve did not start listening")


def deliver(sock: Path, messages: list[bytes]) -> list[tuple[int, bytes]]:
    """Send `messages` over one LMTP connection; the reply to each."""
    client = lmtp(sock)
    try:
        return [send(client, [SUPPORT], raw, sender="customer@sender.example")[0]
                for raw in messages]
    finally:
        client.quit()
