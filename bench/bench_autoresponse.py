"""What auto-responses cost the intake: LMTP throughput at 4 connections, on vs off.

Floor (issue 14): enabling auto-responses costs less than 40% of intake throughput at 4
connections. Two `ticketgate serve` (default settings: intake worker processes,
SQLite), one with `[autoresponse] enabled = false` (off) and one answering (on), run
side by side on 127.0.0.1, each with 4 `smtplib.LMTP` connections from this process
kept open. They take slices of --messages mails in turn, in ABBA order (off on, on
off, ...), one at a time, so that each pair of neighbouring slices sees the same
machine; each pair gives one cost, 1 - on/off, and the verdict is the median of
--pairs of them. Rounds minutes apart, each on a fresh server, differed by more than
the effect on this shared 2-core VM (docs/benchmarks.md, session 7).

Every message comes from a different customer, so every one is answered (the
per-address daily limit would otherwise make "on" look cheaper). In "on" the answer is
checked, rendered, composed and written as an outbox row in the intake transaction,
once the ticket is stored; the smarthost accepts TCP but never greets, so delivery waits
(no delivery work is measured). For information, `on+send` runs a fresh answering
server whose outbox worker delivers to a local aiosmtpd sink meanwhile (the sink runs
on the same cores, so this overstates the cost). CPU per message is that of the
server's processes (master and workers).

Mails (--mail): `small` (the default, and what the target is judged on) is a 1 KB mail
with one long paragraph, where the answer weighs most against the intake; `typical` is
a 2 KB text + HTML mail with a signature, reported for information.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import smtplib
import socket
import statistics
import tempfile
import textwrap
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.bench_lmtp import RCPT, Server

CONNECTIONS = 4
WARM_UP = 40  # messages per server before measuring


def _mail(i: int, subject: str, message_id: str) -> tuple[str, EmailMessage]:
    """Customer i's sender address and a mail from them (a customer each: all answered)."""
    m = EmailMessage()
    sender = f"customer{i}@c{i % 97}.example"
    m["From"] = f"Customer {i} <{sender}>"
    m["To"] = RCPT
    m["Subject"] = subject
    m["Message-ID"] = message_id
    return sender, m


def corpus(n: int) -> list[tuple[str, bytes]]:
    """Small mails: one text part, one long paragraph (the answer's share is largest)."""
    out = []
    for i in range(n):
        sender, m = _mail(i, f"Question number {i} about my order", f"<bench-ar-{i}@c.example>")
        m.set_content("Hello,\n\n" + "my order did not arrive, please help. " * 20 + "\n")
        out.append((sender, m.as_bytes()))
    return out


_PARAGRAPHS = (
    "I ordered a replacement charger for my laptop on Monday and paid for next-day "
    "delivery, but the tracking page still says that the label was created and "
    "nothing else.",
    "Could you check whether the parcel left your warehouse? If it is lost, please send "
    "another one or refund the delivery fee; I need the charger for work next week.",
    "The order number is in the subject line. I attach nothing, but I can send a photo "
    "of the receipt if that helps.",
)


def typical_corpus(n: int) -> list[tuple[str, bytes]]:
    """Mails as a mail program writes them: text and HTML alternatives, a signature."""
    out = []
    for i in range(n):
        sender, m = _mail(i, f"Order {100000 + i}: charger not delivered",
                          f"<bench-ar-t{i}@c.example>")
        m["Date"] = "Sun, 22 Nov 2026 10:00:00 +0000"
        text = "\n\n".join(textwrap.fill(p, 72) for p in ("Hello,", *_PARAGRAPHS))
        m.set_content(f"{text}\n\nBest regards,\nCustomer {i}\nPhone +1 555 0100 {i:04d}\n")
        html = "".join(f'<p style="margin:0 0 12px 0;font-family:Calibri,sans-serif;'
                       f'font-size:11pt">{p}</p>\n' for p in ("Hello,", *_PARAGRAPHS))
        m.add_alternative(
            f'<html><head><meta charset="utf-8"></head><body lang="EN-US">\n'
            f'<div class="WordSection1">\n{html}<p>Best regards,<br>Customer {i}<br>'
            f"Phone +1 555 0100 {i:04d}</p>\n</div></body></html>\n", subtype="html")
        out.append((sender, m.as_bytes()))
    return out


class _Sink:
    """A minimal aiosmtpd smarthost on its own loop thread (for the on+send variant)."""

    def __init__(self) -> None:
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"

    def start(self) -> int:
        self.thread.start()

        async def make() -> Any:
            return await self.loop.create_server(lambda: SMTP(self), "127.0.0.1", 0)

        self.server = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return int(self.server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def server_config(enabled: bool, smarthost: str) -> str:
    return (f"[autoresponse]\nenabled = {'true' if enabled else 'false'}\nmax_per_day = 10\n"
            f'[outbound]\nsmarthost = "{smarthost}"\nretry_base = 1.0\ntimeout = 600.0\n')


def _connect(port: int) -> list[smtplib.LMTP]:
    clients = []
    for _ in range(CONNECTIONS):
        lmtp = smtplib.LMTP("127.0.0.1", port, local_hostname="localhost", timeout=60)
        lmtp.ehlo("localhost")
        clients.append(lmtp)
    return clients


def _quit(clients: list[smtplib.LMTP]) -> None:
    for lmtp in clients:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            lmtp.quit()


def _send_all(clients: list[smtplib.LMTP], mails: list[tuple[str, bytes]]) -> float:
    """Send `mails`, a share on each open connection, all at once; the seconds from the
    common start until the last reply."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients) + 1)

    def client(lmtp: smtplib.LMTP, chunk: list[tuple[str, bytes]]) -> None:
        try:
            barrier.wait(30)
            for sender, raw in chunk:
                lmtp.sendmail(sender, [RCPT], raw)
        except BaseException as exc:  # reported after the run
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(lmtp, mails[k::len(clients)]))
               for k, lmtp in enumerate(clients)]
    for t in threads:
        t.start()
    barrier.wait(30)
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(repr(errors[0]))
    return elapsed


class Live:
    """A server kept running with its 4 connections open, fed slice by slice."""

    def __init__(self, variant: str, smarthost: str) -> None:
        self.variant = variant
        self.base = Path(tempfile.mkdtemp(prefix=f"bench-autoresponse-{variant}-"))
        self.server = Server("ticketgate", self.base,
                             server_config(variant != "off", smarthost))
        self.clients = _connect(self.server.port)

    def send(self, mails: list[tuple[str, bytes]]) -> tuple[float, float]:
        """(messages per second, server CPU ms per message) for this slice."""
        c0 = self.server.cpu_seconds()
        elapsed = _send_all(self.clients, mails)
        cpu = self.server.cpu_seconds() - c0
        return len(mails) / elapsed, cpu / len(mails) * 1000

    def close(self) -> None:
        _quit(self.clients)
        self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def run_send(mails: list[tuple[str, bytes]]) -> tuple[float, float]:
    """on+send, on a fresh server of its own: (messages per second, CPU ms per message)."""
    base = Path(tempfile.mkdtemp(prefix="bench-autoresponse-send-"))
    sink = _Sink()
    server = Server("ticketgate", base, server_config(True, f"127.0.0.1:{sink.start()}"))
    try:
        clients = _connect(server.port)
        c0 = server.cpu_seconds()
        elapsed = _send_all(clients, mails)
        cpu = server.cpu_seconds() - c0
        _quit(clients)
    finally:
        server.stop()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)
    return len(mails) / elapsed, cpu / len(mails) * 1000


def _pct(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench autoresponse")
    parser.add_argument("--messages", type=int, default=500,
                        help="messages per slice (each variant gets one slice per pair)")
    parser.add_argument("--pairs", type=int, default=40,
                        help="off/on slice pairs, alternating which goes first")
    parser.add_argument("--send-rounds", type=int, default=1,
                        help="on+send runs (information only; 0 skips them)")
    parser.add_argument("--mail", choices=("small", "typical"), default="small",
                        help="small: the target's measure (a 1 KB one-part mail, where "
                             "the answer weighs most); typical: text + HTML with a "
                             "signature, for information")
    args = parser.parse_args(argv)
    n, pairs = args.messages, max(1, args.pairs)
    # Every message of the whole run comes from a customer of its own (see the docstring).
    mails = (corpus if args.mail == "small" else typical_corpus)(
        2 * (pairs * n + WARM_UP) + args.send_rounds * n)
    mute = socket.create_server(("127.0.0.1", 0))  # accepts, never greets
    live = {v: Live(v, f"127.0.0.1:{mute.getsockname()[1]}") for v in ("off", "on")}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    sent = 0

    def take(count: int) -> list[tuple[str, bytes]]:
        nonlocal sent
        sent += count
        return mails[sent - count:sent]

    try:
        for server in live.values():  # imports, templates, each worker's first number
            server.send(take(WARM_UP))
        for k in range(pairs):
            for variant in ("off", "on") if k % 2 == 0 else ("on", "off"):
                rate, cpu = live[variant].send(take(n))
                rates[variant].append(rate)
                cpus[variant].append(cpu)
    finally:
        for server in live.values():
            server.close()
        mute.close()
    send = [run_send(take(n)) for _ in range(args.send_rounds)]

    paired = [(1 - on / off) * 100 for on, off in zip(rates["on"], rates["off"], strict=True)]
    off_cpu = statistics.median(cpus["off"])
    print(f"{n} {args.mail} messages ({len(mails[0][1])} bytes) per slice, {pairs} off/on "
          f"pairs on two live servers, {CONNECTIONS} LMTP connections each, SQLite")
    for variant in rates:
        cpu = statistics.median(cpus[variant])
        print(f"  {variant:<8} median {statistics.median(rates[variant]):7.1f} msg/s  "
              f"(slices: {_pct(rates[variant])})  CPU {cpu:5.2f} ms/msg "
              f"({(cpu / off_cpu - 1) * 100:+.1f}%)")
    if send:
        print(f"  on+send  {_pct([r for r, _ in send])} msg/s, CPU "
              f"{_pct([c for _, c in send])} ms/msg (a fresh server, the sink on the same "
              f"cores; information only)")
    cost = statistics.median(paired)
    print(f"  cost of on, pair by pair: {_pct(paired)} %")
    if args.mail != "small":
        print(f"information only (the target is judged on --mail=small): median {cost:.1f}%")
        return 0
    ok = cost < 40.0
    print(f"target: auto-responses cost < 40% of intake throughput (median of the pairs): "
          f"{'PASS' if ok else 'FAIL'} ({cost:.1f}%)")
    return 0 if ok else 1
