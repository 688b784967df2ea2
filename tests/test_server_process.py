"""`ticketgate serve` as a real process: systemd notifications, SIGHUP, SIGTERM."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_helpers import MESSAGE, process_config, short_socket_dir


def _until(rx: socket.socket, wanted: bytes, seen: list[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(rx.recv(4096))
        except TimeoutError:
            continue
        if wanted in seen[-1]:
            return
    raise AssertionError(f"no {wanted!r} from the daemon; got {seen}")


def test_serve_notifies_systemd_reloads_on_hup_and_exits_0_on_term(tmp_path: Path) -> None:
    sockdir = short_socket_dir()
    lmtp_sock, notify_sock = sockdir / "lmtp.sock", sockdir / "notify"
    cfg = tmp_path / "tg.toml"
    cfg.write_text(process_config(tmp_path, lmtp_sock))
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(notify_sock))
    rx.settimeout(0.5)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_sock), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(cfg), "serve"],
                            env=env, stderr=subprocess.PIPE)
    seen: list[bytes] = []
    try:
        _until(rx, b"READY=1", seen)
        _until(rx, b"WATCHDOG=1", seen)
        client = smtplib.LMTP(str(lmtp_sock), local_hostname="localhost", timeout=30)
        client.ehlo("localhost")
        client.mail("alice@customer.example")
        assert client.rcpt("nobody@helpdesk.example")[0] == 250
        client.rset()

        cfg.write_text(process_config(tmp_path, lmtp_sock, strict=True))
        proc.send_signal(signal.SIGHUP)
        _until(rx, b"RELOADING=1", seen)
        _until(rx, b"READY=1", seen)
        # Same connection, new config: the reload dropped nothing.
        client.mail("alice@customer.example")
        assert client.rcpt("nobody@helpdesk.example")[0] == 550
        assert client.rcpt("support@helpdesk.example")[0] == 250
        assert client.data(MESSAGE)[0] == 250
        client.quit()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _until(rx, b"STOPPING=1", seen, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rx.close()
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    proc.stderr.close()
    assert "configuration reloaded" in log
    assert "disposition=created" in log
    # Customer addresses stay out of the log unless -v.
    assert "alice@customer.example" not in log
    assert not lmtp_sock.exists()


def test_serve_exits_nonzero_with_a_clear_message_when_it_cannot_listen(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cfg = tmp_path / "tg.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/tg.db"\n'
                   f'[lmtp]\nlisten = ["127.0.0.1:{port}"]\n[pipe]\nhandoff_socket = ""\n'
                   '[status]\nlisten = "127.0.0.1:0"\n')
    try:
        out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(cfg), "serve"],
                             capture_output=True, timeout=60, check=False)
    finally:
        busy.close()
    assert out.returncode == 69
    assert b"cannot start" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_daemon_stops_promptly(tmp_path: Path, sig: signal.Signals) -> None:
    sock = short_socket_dir() / "lmtp.sock"
    cfg = tmp_path / "tg.toml"
    cfg.write_text(process_config(tmp_path, sock))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(cfg), "serve"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists()
        proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


LAUNCH_AS_SYSTEMD = """
import os, sys
tcp, unix = int(sys.argv[1]), int(sys.argv[2])
os.dup2(tcp, 3)
os.dup2(unix, 4)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="lmtp:smtp")
os.execv(sys.executable, [sys.executable, "-m", "gateway", *sys.argv[3:]])
"""


def test_socket_activation_uses_the_inherited_sockets(tmp_path: Path) -> None:
    sockdir = short_socket_dir()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    smtp_path = sockdir / "smtp.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(smtp_path))
    unix.listen()
    configured = sockdir / "configured.sock"
    cfg = tmp_path / "tg.toml"
    cfg.write_text(process_config(tmp_path, configured))
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_AS_SYSTEMD, str(tcp.fileno()), str(unix.fileno()),
         "-c", str(cfg), "serve"],
        pass_fds=(tcp.fileno(), unix.fileno()), stderr=subprocess.DEVNULL)
    try:
        port = tcp.getsockname()[1]
        tcp.close()
        unix.close()  # only the daemon holds them now
        client = smtplib.LMTP("127.0.0.1", port, local_hostname="localhost", timeout=30)
        assert client.ehlo("localhost")[0] == 250, "LMTP on the inherited TCP socket"
        client.mail("alice@customer.example")
        client.rcpt("support@helpdesk.example")
        assert client.data(MESSAGE)[0] == 250
        client.quit()
        with smtplib.SMTP(local_hostname="localhost", timeout=30) as s:
            s.sock = socket.socket(socket.AF_UNIX)
            s.sock.settimeout(30)
            s.sock.connect(str(smtp_path))
            assert s.getreply()[0] == 220
            assert s.ehlo("localhost")[0] == 250, "SMTP (FileDescriptorName=smtp)"
        assert not configured.exists(), "configured listeners are replaced"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert smtp_path.exists(), "systemd's socket file is left alone"
