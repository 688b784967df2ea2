"""LMTP server throughput and memory against a bare aiosmtpd baseline, in one run.

Baseline: an aiosmtpd LMTP handler that writes each message to its own file, fsyncs
it and answers 250 — the least a durable LMTP server can do. Server under test:
`ticketgate serve` as a subprocess with a temp config (default SQLite settings).
For 1 and 4 connections, each server gets a fresh store and receives N new-ticket
messages of about 4 KB, then N follow-ups (In-Reply-To the first batch); the two
servers take turns phase by phase, and each line reports the fsync latency of the disk
just before that phase. Memory:
peak RSS (VmHWM) of a fresh `ticketgate serve` receiving one 25 MB message, above its
idle RSS.

Floors (issue 14): 1 connection >= 0.6x baseline msgs/s, 4 connections >= 0.8x,
25 MB message peak < 4x its size above idle.

    .venv/bin/python -m bench lmtp [--quick] [--messages=2000]
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import int_option

BASELINE_SERVER = r"""
import asyncio, os, sys, itertools
from aiosmtpd.lmtp import LMTP

class FsyncHandler:
    def __init__(self, folder):
        self.folder = folder
        self.n = itertools.count()
    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.folder, f"{next(self.n)}.eml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, envelope.original_content)
            os.fsync(fd)
        finally:
            os.close(fd)
        return "\r\n".join("250 2.0.0 Ok" for _ in envelope.rcpt_tos)

async def main():
    loop = asyncio.get_running_loop()
    handler = FsyncHandler(sys.argv[1])
    server = await loop.create_server(
        lambda: LMTP(handler, hostname="bench", data_size_limit=None, loop=loop),
        "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

RCPT = "support@helpdesk.example"
TICKETGATE = str(Path(sys.executable).with_name("ticketgate"))
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ticketgate.service"


def unit_environment() -> dict[str, str]:
    """`Environment=` of the systemd unit (the malloc setting): serve runs as deployed."""
    pairs = [line.partition("=")[2] for line in UNIT.read_text().splitlines()
             if line.startswith("Environment=")]
    return dict(pair.split("=", 1) for pair in pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


class Server:
    """A server subprocess on 127.0.0.1:port."""

    def __init__(self, kind: str, folder: Path, extra_config: str = "") -> None:
        self.kind = kind
        if kind == "baseline":
            (folder / "mail").mkdir(parents=True)
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BASELINE_SERVER, str(folder / "mail")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert self.proc.stdout is not None
            self.port = int(self.proc.stdout.readline())
        else:
            self.port = _free_port()
            cfg = folder / "ticketgate.toml"
            cfg.write_text(
                f'[database]\nurl = "sqlite:///{folder}/tg.db"\n'
                f'[lmtp]\nlisten = ["127.0.0.1:{self.port}"]\n'
                '[pipe]\nhandoff_socket = ""\n'
                + (extra_config or '[autoresponse]\nenabled = false\n') +
                '[status]\nlisten = "127.0.0.1:0"\n'
                f'[[queues]]\nname = "Support"\naddresses = ["{RCPT}"]\n')
            subprocess.run([TICKETGATE, "-c", str(cfg), "db", "upgrade"], check=True,
                           capture_output=True)
            self.proc = subprocess.Popen([TICKETGATE, "-c", str(cfg), "serve"],
                                         env={**os.environ, **unit_environment()},
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)

    def pids(self) -> list[int]:
        """The server and its intake worker processes (children)."""
        found = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def rss_kib(self, field: str = "VmRSS") -> dict[int, int]:
        """`field` of /proc/PID/status for each of the server's processes."""
        out = {}
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    out[pid] = int(line.split()[1])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (workers included)."""
        total = 0.0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def new_message(i: int, rnd: random.Random) -> bytes:
    words = " ".join(rnd.choice(("printer", "invoice", "login", "broken", "please", "help",
                                 "urgent", "thanks", "the", "since", "yesterday"))
                     for _ in range(560))
    body = "\r\n".join(words[k:k + 72] for k in range(0, len(words), 72))
    return (f"From: Customer {i} <c{i}@customer{i % 50}.example>\r\nTo: {RCPT}\r\n"
            f"Subject: Problem number {i}\r\nMessage-ID: <new-{i}@customer.example>\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def follow_up(i: int, rnd: random.Random) -> bytes:
    return new_message(i, rnd).replace(
        f"Message-ID: <new-{i}@".encode(),
        f"In-Reply-To: <new-{i}@customer.example>\r\nMessage-ID: <re-{i}@".encode()
    ).replace(b"Subject: ", b"Subject: Re: ")


def send_all(port: int, messages: list[bytes], connections: int) -> float:
    """Deliver every message (LMTP, `connections` sessions in parallel); seconds taken."""
    chunks = [messages[k::connections] for k in range(connections)]
    errors: list[str] = []

    def worker(chunk: list[bytes]) -> None:
        try:
            with smtplib.LMTP("127.0.0.1", port, local_hostname="bench", timeout=300) as c:
                c.ehlo("bench")
                for raw in chunk:
                    c.mail("customer@customer.example")
                    c.rcpt(RCPT)
                    code, text = c.data(raw)
                    if code != 250:
                        errors.append(f"{code} {text!r}")
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(ch,)) for ch in chunks]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} deliveries failed, first: {errors[0]}")
    return elapsed


def fsync_ms(folder: Path, samples: int = 20) -> float:
    """Median time of a 4 KiB write + fsync here: what a durable commit waits for at least."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(times)[len(times) // 2] * 1000


def throughput(n: int, connections: int, work: Path
               ) -> list[tuple[str, dict[str, tuple[float, float]], float]]:
    """Per phase (new tickets, then follow-ups): {server: (msgs/s, CPU ms per message)}
    and the fsync latency measured just before the phase.

    Both servers run side by side and take turns phase by phase, so the baseline and
    ticketgate see the same disk: fsync latency on a shared VM drifts by 10x and more
    within minutes, and it sets both servers' pace.
    """
    rnd = random.Random(3)
    news = [new_message(i, rnd) for i in range(n)]
    follows = [follow_up(i, rnd) for i in range(n)]
    servers = {}
    try:
        for kind in ("baseline", "ticketgate"):
            folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{connections}-", dir=work))
            servers[kind] = Server(kind, folder)
            send_all(servers[kind].port, news[:5], 1)  # warm-up (imports, first queries)
        results = []
        for phase, batch in (("new", news[5:]), ("follow-up", follows[5:])):
            probe = fsync_ms(work)
            rates = {}
            for kind, server in servers.items():
                cpu = server.cpu_seconds()
                elapsed = send_all(server.port, batch, connections)
                cpu = server.cpu_seconds() - cpu
                rates[kind] = (len(batch) / elapsed, cpu / len(batch) * 1000)
            results.append((phase, rates, probe))
    finally:
        for server in servers.values():
            server.stop()
    return results


def big_message(size: int) -> bytes:
    head = (b"From: Big Sender <big@customer.example>\r\nTo: " + RCPT.encode()
            + b"\r\nSubject: a large attachment\r\nMessage-ID: <big-1@customer.example>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--XX\r\n"
            b"Content-Type: application/octet-stream; name=big.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=big.bin\r\n\r\n")
    tail = b"\r\n--XX--\r\n"
    b64_len = size - len(head) - len(tail)
    payload = base64.encodebytes(os.urandom(b64_len * 3 // 4 * 77 // 78))
    lines = payload.replace(b"\n", b"\r\n")[:b64_len]
    lines = lines[:len(lines) - len(lines) % 78]
    return head + lines + tail


def memory(work: Path, size: int) -> tuple[int, int, int]:
    """(idle RSS, peak RSS, message size) in bytes for one large message.

    Per process: the message lands in one intake worker, so the figure is the
    process whose peak rose most above its own idle RSS.
    """
    folder = Path(tempfile.mkdtemp(prefix="mem-", dir=work))
    server = Server("ticketgate", folder)
    try:
        rnd = random.Random(5)
        send_all(server.port, [new_message(i, rnd) for i in range(3)], 1)
        time.sleep(0.5)
        idle = server.rss_kib("VmRSS")
        raw = big_message(size)
        send_all(server.port, [raw], 1)
        peak = server.rss_kib("VmHWM")
    finally:
        server.stop()
    pid = max(peak, key=lambda p: peak[p] - idle.get(p, peak[p]))
    return idle[pid] * 1024, peak[pid] * 1024, len(raw)


def memory_check(work: Path, size: int) -> tuple[bool, str]:
    """The memory floor for one message of `size` bytes: (met, report line)."""
    idle, peak, big = memory(work, size)
    factor = (peak - idle) / big
    ok = factor < 4
    return ok, (f"{big / 1e6:.1f} MB message: idle RSS {idle / 2**20:.0f} MiB, peak "
                f"{peak / 2**20:.0f} MiB, +{(peak - idle) / 2**20:.0f} MiB = {factor:.2f}x the "
                f"message (target < 4x) {'OK' if ok else 'MISSED'}")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n = int_option(argv, "messages", 200 if quick else 2000)
    size = int_option(argv, "big", 25_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench-lmtp-"))
    report: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    status = 0
    try:
        report(f"messages per phase: {n} (~{len(new_message(0, random.Random(1)))} bytes)")
        for connections, target in ((1, 0.6), (4, 0.8)):
            for phase, rates, probe in throughput(n, connections, work):
                (b_rate, b_cpu), (o_rate, o_cpu) = rates["baseline"], rates["ticketgate"]
                ratio = o_rate / b_rate
                ok = ratio >= target
                status |= 0 if ok else 1
                report(f"{connections} conn {phase:9s}: baseline {b_rate:7.1f} msg/s, "
                       f"ticketgate {o_rate:7.1f} msg/s, ratio {ratio:.2f} "
                       f"(target >= {target}) {'OK' if ok else 'MISSED'}; server CPU "
                       f"{b_cpu:.2f} vs {o_cpu:.2f} ms/msg; fsync {probe:.2f} ms")
        ok, line = memory_check(work, size)
        status |= 0 if ok else 1
        report(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
