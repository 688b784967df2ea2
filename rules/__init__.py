"""Rule files: route mail to queues by sender domain, keywords and headers.

The intake core asks a `Router` for a `Route` for every message. The route is plain
data; `NullRouter` (no rules) routes nothing and lets recipients decide the queue.
Rule files are read by `reader`, evaluated by the pure `evaluate`, and served by the
`ReloadingRouter` that `loader.load_router` builds from the config. An invalid rule
set raises `RulesError`.
"""

from __future__ import annotations

from gateway.intake.ports import NullRouter, Route, Router

from .errors import Problem, RulesError

__all__ = ["NullRouter", "Problem", "Route", "Router", "RulesError"]
