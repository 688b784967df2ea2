"""Several `ticketgate serve` instances on one PostgreSQL (issue 18): do they serialise?

For 1, 2 and 3 instances (each with the default intake workers) on a fresh database of
the local PostgreSQL (`TICKETGATE_TEST_PG_URL`, or `TICKETGATE_BENCH_PG_URL`), 16 LMTP
clients spread over the instances send
- new tickets: N messages, each a new ticket;
- hot follow-ups: N replies to the same 4 tickets (a monitoring storm).
Each line: msg/s, answers other than 250, and what a sampler saw in pg_stat_activity
every 20 ms: of the samples of active client connections of the database, the share
waiting on a lock, and the share waiting on ticket-number allocation (a statement on
the `counters` table waiting on a lock); and the most connections the database had.

Targets: hot follow-ups with 3 instances at least as fast as with 1 and no 451; new
tickets with 3 instances at least as fast as with 1 and under 10 % of samples waiting
on number allocation. On a 2-core machine more instances cannot add CPU: what they must
not do is serialise or fail. Each line also gives the CPU the serve processes and the
machine's postgres processes spent per message; and a last run, one instance with as
many workers as the most instances have together, tells what the extra processes cost
on a small machine (they share its cores and caches) from what waiting on each other
would cost.

    .venv/bin/python -m bench scaleout [--messages=600] [--instances=3] [--workers=N]

The hot follow-ups are replies of each ticket's own customer (a stranger's reply would
open a linked ticket, issue 16, and not touch the ticket at all).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from bench import int_option

RCPT = "support@helpdesk.example"
CLIENTS = 16
HOT_TICKETS = 4
TICKETGATE = str(Path(sys.executable).with_name("ticketgate"))
SAMPLE = text("""
    SELECT count(*) FILTER (WHERE state = 'active'),
           count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'),
           count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'
                            AND query ILIKE '%counters%'),
           count(*)
    FROM pg_stat_activity
    WHERE datname = :db AND backend_type = 'client backend' AND pid <> pg_backend_pid()
""")


@dataclass
class Samples:
    active: int = 0
    locked: int = 0
    numbers: int = 0
    connections: int = 0
    gateway_cpu: float = 0.0  # CPU seconds of the serve processes (workers included)
    postgres_cpu: float = 0.0  # ... and of every postgres process of the machine
    stop: threading.Event = field(default_factory=threading.Event)

    def share(self, part: int) -> float:
        return 100.0 * part / self.active if self.active else 0.0


def sample(admin_url: str, db: str, into: Samples) -> None:
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            while not into.stop.is_set():
                active, locked, numbers, total = conn.execute(SAMPLE, {"db": db}).one()
                conn.commit()
                into.active += active
                into.locked += locked
                into.numbers += numbers
                into.connections = max(into.connections, total)
                into.stop.wait(0.02)
    finally:
        engine.dispose()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` and their children (a serve's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("serve did not start")


def start_instances(url: str, count: int, work: Path, workers: int = 0,
                    ) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    ports, procs = [], []
    for i in range(count):
        folder = work / f"mx{i + 1}"
        folder.mkdir()
        port = _free_port()
        cfg = folder / "ticketgate.toml"
        cfg.write_text(f'[database]\nurl = "{url}"\n[lmtp]\nlisten = ["127.0.0.1:{port}"]\n'
                       + (f"workers = {workers}\n" if workers else "")
                       + '[pipe]\nhandoff_socket = ""\n[autoresponse]\nenabled = false\n'
                       f'[intake]\nspool_dir = "{folder}/spool"\n'
                       '[status]\nlisten = "127.0.0.1:0"\n'
                       f'[[queues]]\nname = "Support"\naddresses = ["{RCPT}"]\n')
        procs.append(subprocess.Popen([TICKETGATE, "-c", str(cfg), "serve"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    for port, proc in zip(ports, procs, strict=True):
        _wait_port(port, proc)
    return ports, procs


def message(tag: str, i: int, subject: str, sender: int | None = None) -> bytes:
    """Message `i`, from customer `sender` (default: customer `i`)."""
    c = i if sender is None else sender
    return (f"From: Customer {c} <c{c}@customer{c % 40}.example>\r\nTo: {RCPT}\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{tag}-{i}@customer.example>\r\n"
            "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n"
            + "The disk on host db3 is at 91 %, please have a look.\r\n" * 12).encode()


def _numbers_by_customer(url: str) -> list[str]:
    """The warm-up's ticket numbers, the one of customer i at index i."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT customer_address, number FROM tickets")).all()
    finally:
        engine.dispose()
    by_customer = {address: number for address, number in rows}
    return [by_customer[f"c{i}@customer{i}.example"] for i in range(HOT_TICKETS)
            if f"c{i}@customer{i}.example" in by_customer]


def send_all(ports: list[int], messages: list[bytes]) -> tuple[float, list[str], list[bytes]]:
    """Deliver over CLIENTS sessions spread over the instances; seconds, refusals, replies."""
    refused: list[str] = []
    replies: list[bytes] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            with smtplib.LMTP("127.0.0.1", ports[k % len(ports)], local_hostname="bench",
                              timeout=300) as c:
                c.ehlo("bench")
                for raw in messages[k::CLIENTS]:
                    c.mail("customer@customer.example")
                    c.rcpt(RCPT)
                    code, reply = c.data(raw)
                    with lock:
                        (replies if code == 250 else refused).append(
                            reply if code == 250 else f"{code} {reply!r}")  # type: ignore[arg-type]
        except (OSError, smtplib.SMTPException) as exc:
            with lock:
                refused.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, refused, replies


def run(admin_url: str, instances: int, n: int, work: Path, workers: int = 0,
        ) -> dict[str, tuple[float, int, Samples]]:
    db = f"tg_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    url = make_url(admin_url).set(database=db).render_as_string(hide_password=False)
    folder = Path(tempfile.mkdtemp(prefix=f"scaleout-{instances}-", dir=work))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cfg = folder / "upgrade.toml"
        cfg.write_text(f'[database]\nurl = "{url}"\n')
        subprocess.run([TICKETGATE, "-c", str(cfg), "db", "upgrade"], check=True,
                       capture_output=True)
        ports, procs = start_instances(url, instances, folder, workers)
        _, refused, _ = send_all(ports, [message("hot-new", i, f"disk full {i}")
                                         for i in range(HOT_TICKETS)])
        numbers = _numbers_by_customer(url)
        if refused or len(numbers) != HOT_TICKETS:
            raise RuntimeError(f"warm-up failed: {refused[:1]}")
        phases = {
            "new tickets": [message("new", i, f"Problem number {i}") for i in range(n)],
            # Replies of each ticket's customer (a stranger's would open a linked ticket).
            "hot follow-ups": [message("hot", i, f"Re: [Ticket#{numbers[i % HOT_TICKETS]}] "
                                                 "disk full", sender=i % HOT_TICKETS)
                               for i in range(n)],
        }
        results = {}
        for phase, batch in phases.items():
            samples = Samples()
            sampler = threading.Thread(target=sample, args=(admin_url, db, samples))
            sampler.start()
            serve_pids, pg_pids = [p.pid for p in procs], _postgres_pids()
            cpu = _cpu_seconds(serve_pids), _cpu_seconds(pg_pids)
            try:
                elapsed, refused, _ = send_all(ports, batch)
            finally:
                samples.stop.set()
                sampler.join()
            samples.gateway_cpu = _cpu_seconds(serve_pids) - cpu[0]
            samples.postgres_cpu = _cpu_seconds(pg_pids) - cpu[1]
            results[phase] = (len(batch) / elapsed, len(refused), samples)
        return results
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    admin_url = os.environ.get("TICKETGATE_BENCH_PG_URL") or os.environ.get(
        "TICKETGATE_TEST_PG_URL")
    if not admin_url:
        print("skipped: set TICKETGATE_TEST_PG_URL (or TICKETGATE_BENCH_PG_URL) to a "
              "PostgreSQL server where databases may be created")
        return 0
    n = int_option(argv, "messages", 600)
    most = int_option(argv, "instances", 3)
    workers = int_option(argv, "workers", 0)  # intake workers per instance; 0: the default
    print(f"{n} messages per phase, {CLIENTS} LMTP clients, "
          f"{workers or 'default'} intake workers per instance, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'instances':>13} {'phase':<15} {'msg/s':>7} {'refused':>7} {'samples':>7} "
          f"{'lock wait':>9} {'numbers':>8} {'conns':>5} {'cpu ms/msg gw+pg':>16}")
    rates: dict[tuple[int, str], tuple[float, int, Samples]] = {}
    per_instance = workers or os.cpu_count() or 1
    # The control: one instance with as many workers as the most instances have together
    # (as many processes on the machine's cores), to tell what more processes cost on a
    # small machine from what instances waiting for each other would cost.
    runs = [(i, workers, f"{i}") for i in range(1, most + 1)]
    if most > 1:
        runs.append((1, most * per_instance, f"1 ({most * per_instance} workers)"))
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        for instances, run_workers, label in runs:
            for phase, (rate, refused, s) in run(admin_url, instances, n, Path(tmp),
                                                 run_workers).items():
                rates[(instances if label == str(instances) else 0), phase] = (rate, refused, s)
                print(f"{label:>13} {phase:<15} {rate:>7.0f} {refused:>7} {s.active:>7} "
                      f"{s.share(s.locked):>8.1f}% {s.share(s.numbers):>7.1f}% "
                      f"{s.connections:>5} {1000 * s.gateway_cpu / n:>7.2f}+"
                      f"{1000 * s.postgres_cpu / n:<8.2f}", flush=True)
    hot1, hot3 = rates[1, "hot follow-ups"], rates[most, "hot follow-ups"]
    new1, new3 = rates[1, "new tickets"], rates[most, "new tickets"]
    checks = [
        (f"hot follow-ups: {most} instances >= 1", hot3[0] >= hot1[0]),
        ("hot follow-ups: no refusal", all(r[1] == 0 for (_, p), r in rates.items()
                                           if p == "hot follow-ups")),
        (f"new tickets: {most} instances >= 1", new3[0] >= new1[0]),
        ("new tickets: < 10 % of samples waiting on number allocation",
         all(r[2].share(r[2].numbers) < 10 for (_, p), r in rates.items() if p == "new tickets")),
    ]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if most > 1:
        print(f"{most} instances against 1 instance with as many workers "
              f"({most * per_instance}): " + ", ".join(
                  f"{phase} {rates[most, phase][0] / rates[0, phase][0]:.2f}x"
                  for phase in ("new tickets", "hot follow-ups")))
    return 0
