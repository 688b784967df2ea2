"""Rule files: route mail to queues by sender domain, keywords and headers.

The intake core asks a `Router` for a `Route` for every message. The route is plain
data; `NullRouter` (no rules) routes nothing and lets recipients decide the queue.
"""

from __future__ import annotations

from .route import NullRouter, Route, Router

__all__ = ["NullRouter", "Route", "Router"]
