"""/healthz tells the truth: temp-failing deliveries, an outbox that cannot deliver and
rules that failed to load fail it, and it clears by itself once the cause is fixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, StatusConfig, config_from_dict
from gateway.daemon import DaemonContext
from gateway.status.health import _intake_check
from gateway.tempfails import TempfailTracker
from tests.status_helpers import StatusService, make_context, status_config
from ticketstore.models import OutboxMessage


def test_a_streak_of_451s_fails_and_one_success_clears_it() -> None:
    status = StatusConfig(max_tempfail_streak=3, max_tempfail_rate=1.0)
    tracker = TempfailTracker()
    for _ in range(2):
        tracker.record(False, now=0.0)
    assert _intake_check(tracker, status).ok
    tracker.record(False, now=1.0)
    check = _intake_check(tracker, status)
    assert not check.ok
    assert check.detail.startswith("the last 3 deliveries were answered 451")
    tracker.record(True, now=2.0)
    assert _intake_check(tracker, status).ok


def test_a_451_rate_over_the_window_fails_and_old_results_age_out() -> None:
    status = StatusConfig(max_tempfail_streak=0, max_tempfail_rate=0.5, tempfail_window=60)
    tracker = TempfailTracker()
    for i in range(12):  # alternating, never a streak: 6 of 12 is not above half
        tracker.record(i % 2 == 1, now=float(i))
    assert _intake_check(tracker, status, now=12.0).ok
    tracker.record(False, now=13.0)
    check = _intake_check(tracker, status, now=13.0)
    assert not check.ok
    assert check.detail == "7 of 13 deliveries in the last 60 s were answered 451"
    # Later, those deliveries have left the window: too few to judge, healthy again.
    assert _intake_check(tracker, status, now=100.0).ok


def test_the_thresholds_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"status\.max_tempfail_rate"):
        config_from_dict({"status": {"max_tempfail_rate": 0}})
    with pytest.raises(ConfigError, match=r"status\.max_tempfail_streak"):
        config_from_dict({"status": {"max_tempfail_streak": -1}})
    with pytest.raises(ConfigError, match=r"status\.tempfail_window"):
        config_from_dict({"status": {"tempfail_window": 0}})


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> Iterator[DaemonContext]:
    context, store = make_context(status_config(tmp_path, sqlite_url, max_tempfail_streak=2,
                                                max_outbox_attempts=3))
    yield context
    store.dispose()


def _health(svc: StatusService) -> tuple[int, dict[str, object]]:
    r = svc.request("/healthz")
    return r.status, json.loads(r.body)


def test_healthz_fails_on_451s_a_stuck_outbox_and_broken_rules(ctx: DaemonContext) -> None:
    svc = StatusService(ctx)
    try:
        assert _health(svc)[0] == 200
        ctx.tempfails.record(False)
        ctx.tempfails.record(False)
        status, doc = _health(svc)
        assert status == 503 and doc["failing"] == ["intake"]
        assert "failing: intake" in svc.request("/").text  # the page's badge
        ctx.tempfails.record(True)
        assert _health(svc)[0] == 200

        with ctx.store.factory() as s, s.begin():
            s.add(OutboxMessage(kind="auto-reply", rcpt_to="c@x.example", message_id="m@x",
                                message=b"x", state="pending", attempts=3,
                                last_error="421 smarthost down"))
        status, doc = _health(svc)
        assert status == 503 and doc["failing"] == ["outbox"]
        assert doc["checks"]["outbox"]["detail"].startswith(  # type: ignore[index]
            "1 message(s) failed 3 or more attempts: the smarthost refuses or is down")
        with ctx.store.factory() as s, s.begin():
            s.query(OutboxMessage).update({"state": "sent"})
        assert _health(svc)[0] == 200

        ctx.state["rules"] = {"count": 4, "errors": ["20-x.toml:3: rule 'x': bad regex"]}
        status, doc = _health(svc)
        assert status == 503 and doc["failing"] == ["rules"]
        assert "20-x.toml:3" in doc["checks"]["rules"]["detail"]  # type: ignore[index]
        ctx.state["rules"] = {"count": 4, "errors": []}
        assert _health(svc)[0] == 200
    finally:
        svc.stop()
