"""Per-message wall time of `ticketgate pipe`, next to `python -c pass` on the same venv.

Each delivery is one process start, as with Postfix pipe(8), procmail or .forward, so
start-up (interpreter, imports, opening the database) is most of the cost. The baseline
is the same interpreter doing nothing (`python -c pass`); a second reference is the
same interpreter importing SQLAlchemy's ORM, the floor of any in-process store.

Variants, each on a fresh SQLite store (`[pipe] handoff_socket = ""` for in-process):
- in-process, plain store (`[autoresponse] enabled = false`);
- in-process, auto-responses on (new tickets render and queue an acknowledgement);
- hand-off: `ticketgate serve` runs with an LMTP Unix socket and the pipe only speaks
  LMTP to it (`[pipe] handoff_socket`), if `serve` starts on this machine.

For each: N new tickets, then N follow-ups (In-Reply-To the first batch), after two
warm-up runs. Reported: median and p90 wall time per message, and the ratio of the
median to the `python -c pass` median. Figures go to docs/benchmarks.md ("pipe").

Peer reference (issue 14's floor: hand-off <= 0.6x Roundup's time per message): with
`--roundup=BINDIR` (a folder holding `roundup-admin` and `roundup-mailgw`, e.g. a venv
with `pip install roundup`), a classic Roundup tracker on SQLite receives the same
messages through `roundup-mailgw`, each run right after ticketgate's (interleaved), and
each variant is also reported as a ratio of Roundup's median in the same rounds.

    .venv/bin/python -m bench pipe [--quick] [--messages=20] [--roundup=BINDIR]
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import int_option

RCPT = "support@helpdesk.example"
BIN = Path(sys.executable).parent
TICKETGATE = [str(BIN / "ticketgate")] if (BIN / "ticketgate").exists() else [
    sys.executable, "-m", "gateway"]


def new_message(i: int) -> bytes:
    return (
        f"From: Customer {i} <customer{i}@kunde.example>\n"
        f"To: {RCPT}\n"
        f"Subject: =?UTF-8?Q?Drucker_{i}_im_B=C3=BCro_druckt_nicht?=\n"
        f"Date: Sun, 22 Nov 2026 09:00:00 +0100\n"
        f"Message-ID: <bench-pipe-{i}@kunde.example>\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n"
        + "Der Drucker im zweiten Stock druckt seit heute nur noch Streifen. Grüße\n" * 40
    ).encode()


def follow_up(i: int) -> bytes:
    return (
        f"From: Customer {i} <customer{i}@kunde.example>\n"
        f"To: {RCPT}\n"
        f"Subject: Re: Drucker {i} im Buero druckt nicht\n"
        f"Date: Sun, 22 Nov 2026 10:00:00 +0100\n"
        f"Message-ID: <bench-pipe-re-{i}@kunde.example>\n"
        f"In-Reply-To: <bench-pipe-{i}@kunde.example>\n"
        f"References: <bench-pipe-{i}@kunde.example>\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        "Nachtrag: es ist ein HP LaserJet.\n"
    ).encode()


def _time(cmd: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    r = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-500:]!r}")
    return elapsed


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return statistics.median(ordered), p90


def _write_config(folder: Path, autoresponse: bool, handoff: str = "",
                  lmtp: str = "127.0.0.1:0") -> Path:
    cfg = folder / "ticketgate.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite:///{folder}/tg.db"\n'
        f'[pipe]\nhandoff_socket = "{handoff}"\n'
        f"[autoresponse]\nenabled = {'true' if autoresponse else 'false'}\n"
        f'[lmtp]\nlisten = ["{lmtp}"]\n'
        '[status]\nlisten = "127.0.0.1:0"\n'
        f'[[queues]]\nname = "Support"\naddresses = ["{RCPT}"]\n')
    return cfg


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TICKETGATE_")}


class Roundup:
    """A throw-away classic Roundup tracker on SQLite, fed through `roundup-mailgw`.

    Unknown senders may open issues (as ticketgate lets any customer), and outgoing
    mail goes to a file (`[mail] debug`), as ticketgate's pipe sends nothing either.
    """

    def __init__(self, bindir: Path, home: Path) -> None:
        self.mailgw = [str(bindir / "roundup-mailgw"), str(home)]
        admin = [str(bindir / "roundup-admin"), "-i", str(home)]
        subprocess.run([*admin, "install", "classic", "sqlite"], check=True,
                       capture_output=True)
        config = home / "config.ini"
        head, mail, tail = config.read_text().partition("\n[mail]\n")
        head = head.replace("#web = NO DEFAULT", "web = http://localhost/tracker/", 1)
        tail = (tail.replace("#domain = NO DEFAULT", "domain = helpdesk.example", 1)
                .replace("\ndebug = \n", f"\ndebug = {home}/mail.log\n", 1))
        config.write_text(head + mail + tail)
        schema = home / "schema.py"
        schema.write_text(schema.read_text().replace(
            "#db.security.addPermissionToRole('Anonymous', 'Email Access')",
            "db.security.addPermissionToRole('Anonymous', 'Email Access')"))
        subprocess.run([*admin, "initialise", "admin"], check=True, capture_output=True)
        self.samples: list[float] = []

    def deliver(self, raw: bytes) -> None:
        self.samples.append(_time(self.mailgw, raw, _env()))


def _run_pipes(cfg: Path, n: int, peer: Roundup | None = None
               ) -> tuple[list[float], list[float]]:
    """Time N new tickets then N follow-ups; `peer` takes each message right after."""
    env = _env()
    cmd = [*TICKETGATE, "-c", str(cfg), "pipe", "-f", "customer@kunde.example", "-r", RCPT]
    for w in range(2):  # warm-up: page cache, .pyc files, first-use schema
        _time(cmd, new_message(100_000 + w), env)
    news: list[float] = []
    follows: list[float] = []
    for samples, make in ((news, new_message), (follows, follow_up)):
        for i in range(n):
            raw = make(i)
            samples.append(_time(cmd, raw, env))
            if peer is not None:
                peer.deliver(raw)
    return news, follows


def _check_store(cfg: Path, n: int) -> str:
    db = sqlite3.connect(cfg.parent / "tg.db")
    try:
        tickets = db.execute("select count(*) from tickets").fetchone()[0]
        inbound = db.execute("select count(*) from articles where direction = 'in'").fetchone()[0]
    finally:
        db.close()
    expected = (n + 2, 2 * n + 2)
    if (tickets, inbound) != expected:
        raise RuntimeError(f"store has {tickets} tickets / {inbound} articles, "
                           f"expected {expected}")
    return f"{tickets} tickets, {inbound} inbound articles"


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.1)
    raise RuntimeError("serve did not open its LMTP socket")


def _variant_handoff(work: Path, n: int, peer: Roundup | None
                     ) -> tuple[list[float], list[float], str]:
    folder = work / "handoff"
    folder.mkdir()
    sock = folder / "lmtp.sock"
    cfg = _write_config(folder, autoresponse=False, handoff=str(sock), lmtp=f"unix:{sock}")
    subprocess.run([*TICKETGATE, "-c", str(cfg), "db", "upgrade"], check=True,
                   capture_output=True, env=_env())
    proc = subprocess.Popen([*TICKETGATE, "-c", str(cfg), "serve"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    try:
        _wait_socket(sock, proc)
        news, follows = _run_pipes(cfg, n, peer)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return news, follows, _check_store(cfg, n)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    n = int_option(argv, "messages", 5 if quick else 20)
    report: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bench-pipe-"))
    try:
        passes = [_time([sys.executable, "-c", "pass"]) for _ in range(n + 2)][2:]
        imports = [_time([sys.executable, "-c", "import sqlalchemy.orm"])
                   for _ in range(max(5, n // 2))]
        base, base90 = _stats(passes)
        orm, orm90 = _stats(imports)
        report(f"messages per phase: {n}; interpreter {sys.executable}")
        report(f"{'python -c pass':42s} median {base * 1000:7.1f} ms  p90 "
               f"{base90 * 1000:7.1f} ms  ratio  1.0")
        label = 'python -c "import sqlalchemy.orm"'
        report(f"{label:42s} median {orm * 1000:7.1f} ms  "
               f"p90 {orm90 * 1000:7.1f} ms  ratio {orm / base:4.1f}")
        bindir = next((Path(a.split("=", 1)[1]) for a in argv if a.startswith("--roundup=")),
                      None)
        peers: dict[str, Roundup] = {}
        variants: list[tuple[str, list[float], list[float], str]] = []
        for name, autoresponse in (("in-process, plain store", False),
                                   ("in-process, auto-responses on", True)):
            folder = work / name.replace(" ", "_").replace(",", "")
            folder.mkdir()
            cfg = _write_config(folder, autoresponse)
            peer = peers[name] = Roundup(bindir, folder / "roundup") if bindir else None
            news, follows = _run_pipes(cfg, n, peer)
            variants.append((name, news, follows, _check_store(cfg, n)))
        name = "hand-off to serve (LMTP socket)"
        try:
            peer = peers[name] = Roundup(bindir, work / "roundup-handoff") if bindir else None
            news, follows, check = _variant_handoff(work, n, peer)
            variants.append((name, news, follows, check))
        except Exception as exc:  # the daemon is another area's; report, do not fail
            report(f"hand-off variant skipped: {type(exc).__name__}: {exc}")
        for name, news, follows, check in variants:
            for phase, samples in (("new ticket", news), ("follow-up", follows)):
                med, p90 = _stats(samples)
                label = f"pipe {name} — {phase}"
                report(f"{label:42s} median {med * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"
                       f"  ratio {med / base:4.1f}")
            report(f"  store check: {check}")
            if name in peers:
                ours = statistics.median(news + follows)
                theirs = statistics.median(peers[name].samples)
                report(f"  roundup-mailgw, same messages interleaved: median "
                       f"{theirs * 1000:7.1f} ms; ticketgate / roundup = {ours / theirs:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
