"""A real headless Chromium loads the status page from the running service.

The test checks the rendered text, that the Content-Security-Policy did not block
anything (Chromium logs every violation), and keeps a screenshot under var/artifacts/
for a person to look at.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gateway.daemon import DaemonContext
from tests.status_helpers import StatusService, deliver, make_context, message, status_config
from tests.support import integration_missing

ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "artifacts"
HOSTILE = '<script>alert("x")</script> "quoted" & Co'


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    integration_missing("chromium")
    raise AssertionError("unreachable")


def run_chromium(url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="tg-chromium-") as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", *mode, url],
            capture_output=True, text=True, timeout=120,
        )


class Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if data.strip() and not self._skip:
            self.text.append(data.strip())


@pytest.fixture
def service(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[StatusService, DaemonContext,
                                                                  list[str]]]:
    from bench.bench_status import populate

    ctx, store = make_context(status_config(tmp_path, sqlite_url))
    populate(store.engine, 600)  # a few months of history for the chart and tables
    numbers = [deliver(ctx.intake, message(s)).ticket_number
               for s in ("VPN down since this morning", HOSTILE, "Invoice 4711 is wrong")]
    ctx.state["rules"] = {"count": 5, "loaded_at": "2026-11-22T02:00:00+00:00", "errors": []}
    ctx.record_error("outbox", "SMTPRecipientsRefused: 550 5.1.1 user unknown")
    svc = StatusService(ctx)
    yield svc, ctx, [n for n in numbers if n]
    svc.stop()
    store.dispose()


def test_chromium_renders_the_page_and_keeps_a_screenshot(
    service: tuple[StatusService, DaemonContext, list[str]],
) -> None:
    svc, _ctx, numbers = service
    url = f"http://127.0.0.1:{svc.port}/"
    dom = run_chromium(url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Visible()
    page.feed(dom.stdout)
    text = page.text
    assert "script" not in page.tags
    assert "healthy" in text
    assert HOSTILE in text
    for n in numbers:
        assert n in text
    assert "VPN down since this morning" in text
    assert "SMTPRecipientsRefused: 550 5.1.1 user unknown" in text
    assert "Daily volume, last 30 days" in " ".join(text)
    assert "svg" in page.tags
    # Chromium logs every Content-Security-Policy violation (e.g. a stale style hash).
    assert "Content Security Policy" not in dom.stderr, dom.stderr[-2000:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    done = run_chromium(url, f"--screenshot={shot}", "--window-size=1280,2000",
                        "--hide-scrollbars")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Content Security Policy" not in done.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 2000)
