"""Are deliveries temp-failing? The figures /healthz judges, kept per process.

Each delivery's result is recorded (the listener's handler; in a worker set-up the
master replays what each worker reports). `/healthz` then fails on a streak of 451s (no
success in between) or on the share of 451s among the deliveries of the last minutes,
and clears with the first success once the cause is fixed.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

MIN_DELIVERIES_FOR_RATE = 10  # fewer in the window: too few to judge a rate on
_KEPT = 100_000  # results kept for the rate (a bound, not a window)


@dataclass(frozen=True)
class TempfailState:
    streak: int  # 451s since the last successful delivery
    failed: int  # 451s within the window
    total: int  # deliveries within the window


@dataclass
class TempfailTracker:
    streak: int = 0
    _results: collections.deque[tuple[float, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=_KEPT))

    def record(self, ok: bool, now: float | None = None) -> None:
        self.streak = 0 if ok else self.streak + 1
        self._results.append((time.monotonic() if now is None else now, ok))

    def state(self, window: float, now: float | None = None) -> TempfailState:
        since = (time.monotonic() if now is None else now) - window
        while self._results and self._results[0][0] < since:
            self._results.popleft()
        failed = sum(1 for _at, ok in self._results if not ok)
        return TempfailState(self.streak, failed, len(self._results))
