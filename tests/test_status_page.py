"""The HTML page: customer text is escaped, figures are shown, the chart is drawn."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gateway.daemon import DaemonContext
from gateway.status.page import (
    _axis_step,
    chart,
    domain_table,
    format_age,
    format_number,
    format_when,
)
from tests.status_helpers import StatusService, deliver, make_context, message, status_config

HOSTILE_SUBJECT = '<script>alert("subject")</script> "quoted" & Co <b>bold</b>'
HOSTILE_NAME = '<script>alert(1)</script> "Mallory" & Sons'


class TextAndTags(HTMLParser):
    """The page as a browser sees it: visible text cells and the element names used."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> Iterator[DaemonContext]:
    context, store = make_context(status_config(tmp_path, db_url))
    yield context
    store.dispose()


def test_customer_strings_are_shown_as_text_not_markup(ctx: DaemonContext) -> None:
    # RFC 5322 quoted display name with a backslash-escaped quote inside.
    sender = '"<script>alert(1)</script> \\"Mallory\\" & Sons" <mallory@evil.example>'
    d = deliver(ctx.intake, message(HOSTILE_SUBJECT, sender=sender),
                mail_from="mallory@evil.example")
    ctx.record_error("intake", '<img src=x onerror="alert(2)"> & more')
    svc = StatusService(ctx)
    try:
        page = svc.request("/")
        doc = json.loads(svc.request("/api/status.json").body)
    finally:
        svc.stop()
    assert page.status == 200
    html = page.text
    parser = TextAndTags()
    parser.feed(html)
    # No element came from the data: no script, no b, no img.
    assert "script" not in parser.tags
    assert "b" not in parser.tags and "img" not in parser.tags
    # ... and the strings are there, character for character, as text.
    assert HOSTILE_SUBJECT in parser.text
    assert HOSTILE_NAME in parser.text
    assert '<img src=x onerror="alert(2)"> & more' in parser.text
    assert "&lt;script&gt;alert(&#34;subject&#34;)&lt;/script&gt; &#34;quoted&#34; &amp; Co" \
        in html
    # JSON carries the original text (JSON escaping, not HTML escaping).
    latest = doc["latest_tickets"][0]
    assert latest["number"] == d.ticket_number
    assert latest["subject"] == HOSTILE_SUBJECT
    assert latest["customer_name"] == HOSTILE_NAME


def test_page_shows_counts_queues_and_latest_tickets(ctx: DaemonContext) -> None:
    subjects = ["VPN down", "Invoice 4711 wrong", "Password reset"]
    numbers = [deliver(ctx.intake, message(s)).ticket_number for s in subjects]
    deliver(ctx.intake, message(f"Re: [Ticket#{numbers[0]}] VPN down"))
    ctx.state["rules"] = {"count": 4, "loaded_at": "2026-11-22T10:00:00+00:00", "errors": []}
    svc = StatusService(ctx)
    try:
        html = svc.request("/").text
    finally:
        svc.stop()
    parser = TextAndTags()
    parser.feed(html)
    text = parser.text
    for s, n in zip(subjects, numbers, strict=True):
        assert s in text and n in text
    # The "received" row of the mail-flow table: 4 in the last hour / 24 h / 30 days.
    row = text.index("received")
    assert text[row + 1:row + 4] == ["4", "4", "4"]
    created = text.index("tickets created")
    assert text[created + 1:created + 4] == ["3", "3", "3"]
    assert "Support" in text
    assert "4 loaded 2026-11-22 10:00" in " ".join(text)
    assert "healthy" in text
    assert ctx.store.engine.dialect.name in " ".join(text)
    assert "<svg" in html and html.count('class="recv"') == 30


def test_chart_scales_to_the_busiest_day() -> None:
    days = [{"day": f"2026-11-{i + 1:02d}", "received": i, "created": i // 2} for i in range(30)]
    c = chart(days)
    assert len(c["bars"]) == 30
    tallest = max(c["bars"], key=lambda b: b["h"])
    assert tallest["day"] == "2026-11-30"
    assert [g["label"] for g in c["grid"]] == ["0", "10", "20", "30", "40"]  # 29 -> 40
    first = c["bars"][0]
    assert first["h"] == 0 and first["label"] == "11-01"
    assert all(b["ch"] <= b["h"] for b in c["bars"])
    empty = chart([{"day": "2026-11-01", "received": 0, "created": 0}])
    assert empty["bars"][0]["h"] == 0


@pytest.mark.parametrize(("top", "step"), [(1, 1), (4, 1), (5, 2), (7, 2), (9, 5), (21, 10),
                                            (29, 10), (45, 20), (90, 25), (101, 50),
                                            (999, 250), (1001, 500)])
def test_axis_steps_are_round_and_cover_the_busiest_day(top: int, step: int) -> None:
    assert _axis_step(top) == step
    assert _axis_step(top) * 4 >= top


def test_formatting() -> None:
    assert format_age(None) == "—"
    assert format_age(42) == "42 s"
    assert format_age(600) == "10 min"
    assert format_age(3 * 3600 + 120) == "3 h 2 min"
    assert format_age(2 * 86400 + 5 * 3600) == "2 d 5 h"
    assert format_number(1234567) == "1\u202f234\u202f567"
    assert format_when("2026-11-22T10:15:42.5+01:00") == "2026-11-22 09:15"
    assert format_when("2026-11-22T10:15:00") == "2026-11-22 10:15"
    assert format_when("yesterday") == "yesterday"
    assert format_when(None) == "—"


def test_domain_table_keeps_the_busiest_and_sums_the_rest() -> None:
    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    rows = [{"month": "2026-11", "domain": f"d{i:02d}.example", "created": 100 - i, "closed": 1}
            for i in range(20)]
    rows.append({"month": "2026-09", "domain": "d00.example", "created": 5, "closed": 0})
    rows.append({"month": "2026-01", "domain": "ancient.example", "created": 999, "closed": 0})
    t = domain_table(rows, now)
    assert t["months"] == ["2026-09", "2026-10", "2026-11"]
    assert len(t["rows"]) == 15
    assert t["rows"][0]["domain"] == "d00.example"
    assert t["rows"][0]["months"][0] == {"created": 5, "closed": 0}
    assert t["other_count"] == 5
    assert t["other"][2] == {"created": sum(100 - i for i in range(15, 20)), "closed": 5}
    assert all(r["domain"] != "ancient.example" for r in t["rows"])
