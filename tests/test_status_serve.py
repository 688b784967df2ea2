"""The status page inside the real `ticketgate serve` process, next to the LMTP listener."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.status_helpers import message

ROOT = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r"status page listening on http://127\.0\.0\.1:(\d+)/")


class Serve:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config), "serve"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = pattern.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = "".join(self.lines)
        raise AssertionError(f"serve did not log {pattern.pattern!r}:\n{log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self.reader.join(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: a Unix socket path must stay under ~100 bytes.
    d = Path(tempfile.mkdtemp(prefix="tgs-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_serve_runs_the_status_page_beside_lmtp(workdir: Path) -> None:
    (workdir / "rules").mkdir()
    (workdir / "templates").mkdir()
    config = workdir / "ticketgate.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{workdir}/tg.db"

[[queues]]
name = "Support"
addresses = ["support@helpdesk.example"]

[lmtp]
listen = ["unix:{workdir}/lmtp.sock"]

[pipe]
handoff_socket = ""

[rules]
dir = "{workdir}/rules"

[templates]
dir = "{workdir}/templates"

[autoresponse]
enabled = false

[status]
listen = "127.0.0.1:0"
""", "utf-8")
    serve = Serve(config)
    try:
        port = int(serve.wait_for(URL_LINE).group(1))
        serve.wait_for(re.compile(r"ticketgate \S+ ready"))
        status, headers, body = get(port, "/healthz")
        assert status == 200, body
        assert headers["x-content-type-options"] == "nosniff"

        subject = 'Printer <script>alert("x")</script> & "toner"'
        with smtplib.LMTP(str(workdir / "lmtp.sock"), timeout=30) as lmtp:
            refused = lmtp.sendmail("alice@customer.example", ["support@helpdesk.example"],
                                    message(subject))
        assert refused == {}

        status, _, body = get(port, "/api/status.json")
        assert status == 200
        doc = json.loads(body)
        assert doc["mail_flow"]["received"]["hour"] == 1
        assert doc["latest_tickets"][0]["subject"] == subject
        assert doc["uptime_seconds"] >= 0
        status, _, page = get(port, "/")
        assert status == 200
        assert b"Printer &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;toner&#34;" \
            in page
        status, _, metrics = get(port, "/metrics")
        assert status == 200
        assert b'ticketgate_messages_total{disposition="created"} 1.0' in metrics
        # The server times every message it stores (parse, route, store, commit); intake
        # worker processes report their timings to the master once a second.
        timed = b'ticketgate_processing_seconds_count{entry="lmtp"} 1.0'
        for _ in range(100):  # at most 10 s
            if timed in metrics:
                break
            time.sleep(0.1)
            metrics = get(port, "/metrics")[2]
        assert timed in metrics
    finally:
        code = serve.stop()
        print("".join(serve.lines))  # shown by pytest when the test fails
    assert code == 0, "".join(serve.lines)
    with pytest.raises(OSError):
        get(port, "/healthz")
