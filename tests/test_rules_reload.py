"""Hot reload: edited rules apply to the next message; broken ones never stop mail.

Three levels: the `ReloadingRouter` itself, the watcher service on an asyncio loop with
a real `DaemonContext`, and a real `ticketgate serve` process fed over LMTP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from gateway.daemon import SERVICES, DaemonContext
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from rules import watch
from rules.errors import RulesError
from rules.loader import load_router
from rules.router import ReloadingRouter
from tests.rules_helpers import QUEUES, decide, message
from tests.support import make_config
from ticketstore.db import upgrade
from ticketstore.models import Article, Queue, Ticket

RULE = '[[rule]]\nname = "{name}"\nsubject_contains = "invoice"\nqueue = "{queue}"\n'
BROKEN = '[[rule]]\nname = "broken"\nsubject_matches = "(unclosed"\nqueue = "Sales"\n'


def write_rule(d: Path, queue: str, name: str = "billing", file: str = "10-main.toml") -> None:
    d.mkdir(parents=True, exist_ok=True)
    path = d / file
    tmp = d / f".{file}.tmp"
    tmp.write_text(RULE.format(name=name, queue=queue))
    tmp.replace(path)  # atomic, like an editor's save


def queue_of(router: ReloadingRouter) -> str | None:
    return decide(router.ruleset, message(subject="invoice 7")).route.queue


def test_reload_swaps_valid_rules_and_keeps_old_ones_on_errors(tmp_path: Path) -> None:
    write_rule(tmp_path, "Billing")
    router = ReloadingRouter(tmp_path, QUEUES)
    assert queue_of(router) == "Billing" and not router.changed()
    write_rule(tmp_path, "Sales")
    assert router.changed()
    assert router.reload() == ()
    assert queue_of(router) == "Sales"

    (tmp_path / "20-broken.toml").write_text(BROKEN)
    problems = router.reload()
    assert [f"{p.file}:{p.line}" for p in problems] == [f"{tmp_path / '20-broken.toml'}:3"]
    assert queue_of(router) == "Sales"  # the old rules stay in force
    status = router.status()
    assert status["count"] == 1 and status["errors"][0].startswith(str(tmp_path))
    assert not router.changed()  # the same broken files are not retried in a loop

    (tmp_path / "20-broken.toml").unlink()
    assert router.changed() and router.reload() == ()
    assert router.status()["errors"] == []


def test_invalid_rules_at_start_raise_a_clear_error(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path, sqlite_url)
    rules_dir = config.path(config.rules.dir)
    rules_dir.mkdir()
    (rules_dir / "20-broken.toml").write_text(BROKEN)
    with pytest.raises(RulesError, match=r"20-broken.toml:3: rule 'broken': subject_matches"):
        load_router(config)


def test_watcher_is_registered_as_a_service() -> None:
    assert "rules.watch:run" in SERVICES


def _wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_watcher_service_reloads_on_change_and_on_sighup_hook(
    tmp_path: Path, sqlite_url: str
) -> None:
    from gateway.runtime import open_store
    from tests.support import make_config

    config = make_config(tmp_path, sqlite_url, rules={"watch_interval": 0.05})
    rules_dir = config.path(config.rules.dir)
    write_rule(rules_dir, "Billing")
    store = open_store(config, create=False)
    upgrade(store.engine)
    intake = Intake(config, store.factory, router=load_router(config))
    ctx = DaemonContext(config, store, intake)
    # What a multi-process server registers: the workers reload before the master does.
    propagated: list[str | None] = []

    async def propagate() -> bool:
        propagated.append(intake.prepare(message(subject="invoice"), Envelope()).route.queue)
        return True

    ctx.rules_changed.append(propagate)
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    task = asyncio.run_coroutine_threadsafe(watch.run(ctx, stopping), loop)
    try:
        assert _wait_for(lambda: bool(ctx.reload_hooks) and "rules" in ctx.state)
        assert ctx.state["rules"]["count"] == 1
        assert intake.prepare(message(subject="invoice"), Envelope()).route.queue == "Billing"
        write_rule(rules_dir, "Sales")
        assert _wait_for(lambda: intake.prepare(message(subject="invoice"), Envelope())
                         .route.queue == "Sales")
        assert propagated[:1] == ["Billing"], "propagated first, while the old rules applied"
        (rules_dir / "20-broken.toml").write_text(BROKEN)
        assert _wait_for(lambda: any(e.source == "rules" for e in ctx.errors))
        assert "20-broken.toml:3: rule 'broken'" in ctx.errors[0].message
        assert ctx.state["rules"]["errors"] and ctx.state["rules"]["count"] == 1
        assert intake.prepare(message(subject="invoice"), Envelope()).route.queue == "Sales"
        # SIGHUP: the daemon calls every reload hook; ours reloads the rules.
        (rules_dir / "20-broken.toml").unlink()
        write_rule(rules_dir, "Billing", file="30-more.toml", name="more")
        for hook in ctx.reload_hooks:
            hook()
        assert ctx.state["rules"]["count"] == 2 and ctx.state["rules"]["errors"] == []
    finally:
        loop.call_soon_threadsafe(stopping.set)
        task.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.dispose()


CLOSER = '[[rule]]\nname = "recovery"\nfrom = "nagios@monitoring.example"\nstate = "closed"\n'


def test_the_watcher_logs_what_rules_check_warns_of(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.runtime import open_store

    config = make_config(tmp_path, sqlite_url, rules={"watch_interval": 0})
    rules_dir = config.path(config.rules.dir)
    write_rule(rules_dir, "Billing")
    (rules_dir / "20-close.toml").write_text(CLOSER)
    store = open_store(config, create=False)
    upgrade(store.engine)
    ctx = DaemonContext(config, store, Intake(config, store.factory, router=load_router(config)))

    async def start_and_stop() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(watch.run(ctx, stopping))
        await asyncio.sleep(0.05)
        stopping.set()
        await task

    warning = "rule 'recovery': warning: closes tickets without `aligned = true`"
    try:
        with caplog.at_level("WARNING", logger="ticketgate.rules"):
            asyncio.run(start_and_stop())
            assert warning in caplog.text  # at start
            caplog.clear()
            write_rule(rules_dir, "Sales")
            assert watch.reload_and_publish(ctx)
            assert warning in caplog.text  # and after a reload
    finally:
        store.dispose()


# -- a real `ticketgate serve` --------------------------------------------------------------

SERVE_CONFIG = """
[database]
url = "sqlite:///{db}"

[[queues]]
name = "Support"
addresses = ["support@helpdesk.example"]

[[queues]]
name = "Billing"
addresses = ["billing@helpdesk.example"]

[[queues]]
name = "Sales"
addresses = ["sales@helpdesk.example"]

[lmtp]
listen = ["unix:{sock}"]

[pipe]
handoff_socket = ""

[rules]
dir = "rules"
watch_interval = 0.1

[autoresponse]
enabled = false

[status]
listen = "127.0.0.1:0"
"""


class Serve:
    """`python -m gateway serve` in a subprocess; its log lines collected from stderr."""

    def __init__(self, site: Path, sock: Path) -> None:
        self.sock = sock
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(site / "ticketgate.toml"), "serve"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, cwd=site, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def log_count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def deliver(self, subject: str, body: str) -> None:
        client = smtplib.LMTP(str(self.sock))
        try:
            client.sendmail("a@customer.example", ["support@helpdesk.example"],
                            message(subject=subject, body=body))
        finally:
            client.quit()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    short = Path(tempfile.mkdtemp(prefix="tgr", dir="/tmp"))
    (tmp_path / "ticketgate.toml").write_text(
        SERVE_CONFIG.format(db=tmp_path / "tg.db", sock=short / "lmtp.sock"))
    write_rule(tmp_path / "rules", "Billing")
    yield tmp_path, short / "lmtp.sock"
    shutil.rmtree(short, ignore_errors=True)


def queue_by_body(db: Path) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as c:
            rows = c.execute(select(Article.body_text, Queue.name)
                             .join(Ticket, Article.ticket_id == Ticket.id)
                             .join(Queue, Ticket.queue_id == Queue.id)).all()
        return {body.strip(): name for body, name in rows}
    finally:
        engine.dispose()


def test_running_server_reroutes_after_a_rule_edit_and_survives_a_broken_file(
    site: tuple[Path, Path],
) -> None:
    root, sock = site
    server = Serve(root, sock)
    try:
        assert _wait_for(lambda: sock.exists() or server.proc.poll() is not None, 30)
        assert server.proc.poll() is None, "".join(server.lines)
        server.deliver("invoice 1", "one")

        write_rule(root / "rules", "Sales")
        assert _wait_for(lambda: server.log_count("rules reloaded") >= 1), "".join(server.lines)
        server.deliver("invoice 2", "two")

        (root / "rules" / "20-broken.toml").write_text(BROKEN)
        assert _wait_for(lambda: server.log_count("rule reload failed") >= 1)
        server.deliver("invoice 3", "three")

        # SIGHUP with the broken file still there: refused again, mail still flows.
        # ("reload failed" is in both the daemon's config-reload line and ours.)
        failed = server.log_count("reload failed")
        server.proc.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: server.log_count("reload failed") > failed)
        server.deliver("invoice 4", "four")
    finally:
        server.stop()
    assert "20-broken.toml:3: rule 'broken'" in "".join(server.lines)
    assert queue_by_body(root / "tg.db") == {
        "one": "Billing", "two": "Sales", "three": "Sales", "four": "Sales"}


def test_server_refuses_to_start_with_invalid_rules(site: tuple[Path, Path]) -> None:
    root, sock = site
    (root / "rules" / "20-broken.toml").write_text(BROKEN)
    server = Serve(root, sock)
    try:
        assert server.proc.wait(30) == 78  # EX_CONFIG: the admin's to fix, not a crash
    finally:
        server.stop()
    output = "".join(server.lines)
    assert "20-broken.toml:3: rule 'broken': subject_matches: bad regex" in output
    assert "Traceback" not in output
    assert not sock.exists()


def test_a_rule_directory_created_later_is_picked_up(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    router = ReloadingRouter(rules_dir, QUEUES)
    assert router.ruleset.rules == () and not router.changed()
    write_rule(rules_dir, "Billing")
    assert router.changed() and router.reload() == ()
    assert queue_of(router) == "Billing"
