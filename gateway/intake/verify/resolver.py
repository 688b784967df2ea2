"""DNS TXT lookups for DKIM keys: bounded in time, cached, and passed in.

A lookup is whatever function the caller gives (`dnspython_txt` in production, a dict in
tests): it returns the TXT record, None when there is none, or raises when DNS failed.
`CachingResolver` runs it on a daemon thread so that a lookup that hangs costs the
message at most its time budget (and never keeps a process from exiting), remembers
answers (and, briefly, failures, so a DNS outage costs one timeout a minute rather than
one per message), and turns every failure into `DnsTempError`, which the verifier
reports as `temperror`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

TxtLookup = Callable[[str, float], "bytes | None"]

FAILURE_TTL = 60.0
MAX_ENTRIES = 10_000


class DnsTempError(Exception):
    """A lookup failed or ran out of time: the verdict is temperror, not fail."""


def dnspython_lookup(nameservers: tuple[str, ...] = ()) -> TxtLookup:
    """A `TxtLookup` via dnspython: the given servers ("192.0.2.53" or "127.0.0.1:5353"),
    else the system's (/etc/resolv.conf, read at the first lookup). It returns None when
    there is no record and raises on SERVFAIL, timeouts and other DNS trouble."""
    made: list[Any] = []  # the dnspython Resolver, built at the first lookup

    def resolver() -> Any:
        if not made:
            import dns.nameserver
            import dns.resolver

            if nameservers:
                r = dns.resolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(*_host_port(s))
                                 for s in nameservers]
            else:
                r = dns.resolver.Resolver()
            made.append(r)
        return made[0]

    def lookup(name: str, timeout: float) -> bytes | None:
        import dns.resolver

        try:
            answer = resolver().resolve(name, "TXT", lifetime=timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return lookup


def _host_port(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit() and (host.count(":") == 0 or host.endswith("]")):
        return host.strip("[]"), int(port)
    return server.strip("[]"), 53


class CachingResolver:
    """A cached, time-bounded front for a `TxtLookup`; safe to share between threads."""

    def __init__(
        self,
        lookup: TxtLookup,
        ttl: float = 3600.0,
        failure_ttl: float = FAILURE_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, bytes | None, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def txt(self, name: str, timeout: float) -> bytes | None:
        """The record, None for none; DnsTempError on failure or after `timeout` seconds."""
        key = name.lower().rstrip(".") + "."
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if hit[2]:
                raise DnsTempError(f"{key}: failed recently")
            return hit[1]
        if timeout <= 0:
            raise DnsTempError(f"{key}: no time left")
        outcome: list[tuple[bytes | None, Exception | None]] = []

        def run() -> None:
            try:
                outcome.append((self.lookup(key, timeout), None))
            except Exception as exc:  # any failure of the lookup is a temporary one
                outcome.append((None, exc))

        worker = threading.Thread(target=run, name="ticketgate-dns", daemon=True)
        worker.start()
        worker.join(timeout)
        if not outcome:
            self._remember(key, None, failed=True)
            raise DnsTempError(f"{key}: timed out after {timeout:.1f}s")
        value, error = outcome[0]
        if error is not None:
            self._remember(key, None, failed=True)
            raise DnsTempError(f"{key}: {type(error).__name__}")
        self._remember(key, value, failed=False)
        return value

    def _remember(self, key: str, value: bytes | None, failed: bool) -> None:
        ttl = self.failure_ttl if failed else self.ttl
        if ttl <= 0:
            return
        with self._lock:
            self._cache[key] = (self.clock() + ttl, value, failed)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

class Budget:
    """The time one message's lookups may take together."""

    def __init__(self, resolver: CachingResolver, seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.clock = clock
        self.deadline = clock() + seconds

    def dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """The `dnsfunc` dkimpy calls (its own timeout is replaced by what is left)."""
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        return self.resolver.txt(text, self.deadline - self.clock())
