"""Render the status snapshot as one self-contained HTML page (jinja2, autoescape on).

The page has no JavaScript and loads nothing else: the stylesheet is inlined and allowed
by its sha256 hash in the Content-Security-Policy, the chart is inline SVG drawn from
numbers computed here. Every string from the database goes through autoescaping.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from .queries import month_labels

CHART_W, CHART_H = 900, 220
CHART_PAD_L, CHART_PAD_B, CHART_PAD_T = 44, 26, 12
PAGE_MONTHS = 3
GRID_STEPS = 4
PAGE_DOMAINS = 15


@cache
def stylesheet() -> str:
    return resources.files(__package__).joinpath("templates/status.css").read_text("utf-8")


@cache
def style_hash() -> str:
    """The CSP source for the inline stylesheet: 'sha256-<base64>'."""
    digest = hashlib.sha256(stylesheet().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,  # customer-controlled text everywhere: never turn this off
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = format_age
    env.filters["when"] = format_when
    env.filters["num"] = format_number
    return env


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def format_when(iso: str | None) -> str:
    if not iso:
        return "—"
    try:
        value = dt.datetime.fromisoformat(str(iso))
    except ValueError:  # published by another service in some other shape: show as is
        return str(iso)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def format_number(n: int | float | None) -> str:
    if n is None:
        return "—"
    return f"{n:,}".replace(",", "\u202f")


def chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Bar geometry for the daily-volume chart: received (bars) and created (inner bars)."""
    top = max([d["received"] for d in days] + [d["created"] for d in days] + [1])
    step = _axis_step(top)
    scale = float(step * GRID_STEPS)
    plot_w = CHART_W - CHART_PAD_L - 8
    plot_h = CHART_H - CHART_PAD_B - CHART_PAD_T
    slot = plot_w / max(1, len(days))
    bars = []
    for i, d in enumerate(days):
        x = CHART_PAD_L + i * slot
        rh = plot_h * d["received"] / scale
        ch = plot_h * d["created"] / scale
        base = CHART_PAD_T + plot_h
        bars.append({
            "day": d["day"], "received": d["received"], "created": d["created"],
            "x": round(x + slot * 0.12, 1), "w": round(slot * 0.76, 1),
            "y": round(base - rh, 1), "h": round(rh, 1),
            "cx": round(x + slot * 0.3, 1), "cw": round(slot * 0.4, 1),
            "cy": round(base - ch, 1), "ch": round(ch, 1),
            "label": d["day"][5:] if i % 5 == 0 or i == len(days) - 1 else "",
            "lx": round(x + slot / 2, 1),
        })
    grid = []
    for k in range(GRID_STEPS + 1):
        y = CHART_PAD_T + plot_h - plot_h * k / GRID_STEPS
        grid.append({"y": round(y, 1), "label": format_number(step * k)})
    return {"width": CHART_W, "height": CHART_H, "bars": bars, "grid": grid,
            "left": CHART_PAD_L, "right": CHART_W - 8, "label_y": CHART_H - 8}


def _axis_step(top: float) -> int:
    """The smallest round step (1, 2, 5, 10, 20, 25, 50, ...) with GRID_STEPS steps >= top."""
    power = 1
    while True:
        for step in (1, 2, 5) if power == 1 else (1, 2, 2.5, 5):
            candidate = int(step * power)
            if candidate * GRID_STEPS >= top:
                return candidate
        power *= 10


def domain_table(rows: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """The last PAGE_MONTHS months as columns, the busiest domains as rows."""
    months = month_labels(now, PAGE_MONTHS)
    cells: dict[str, dict[str, dict[str, int]]] = {}
    totals: dict[str, int] = {}
    for r in rows:
        if r["month"] not in months:
            continue
        domain = r["domain"] or "(unknown)"
        cells.setdefault(domain, {})[r["month"]] = {"created": r["created"], "closed": r["closed"]}
        totals[domain] = totals.get(domain, 0) + r["created"] + r["closed"]
    ranked = sorted(totals, key=lambda d: (-totals[d], d))
    shown = ranked[:PAGE_DOMAINS]
    other: dict[str, dict[str, int]] = {}
    for domain in ranked[PAGE_DOMAINS:]:
        for m, v in cells[domain].items():
            o = other.setdefault(m, {"created": 0, "closed": 0})
            o["created"] += v["created"]
            o["closed"] += v["closed"]
    empty = {"created": 0, "closed": 0}
    table = [{"domain": d, "months": [cells[d].get(m, empty) for m in months]} for d in shown]
    return {
        "months": months,
        "rows": table,
        "other": [other.get(m, empty) for m in months] if other else None,
        "other_count": len(ranked) - len(shown),
    }


def render_page(data: dict[str, Any], health: dict[str, Any], now: dt.datetime,
                refresh_seconds: int = 60) -> str:
    template = environment().get_template("status.html")
    return template.render(
        s=data,
        health=health,
        chart=chart(data["daily_volume"]),
        domains=domain_table(data["domain_months"], now),
        css=stylesheet(),
        refresh=refresh_seconds,
    )
