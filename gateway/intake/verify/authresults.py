"""The MTA's own verdict, from `Authentication-Results` headers it added (RFC 8601).

Anyone can write such a header into a message; only those whose authserv-id is one of
`[verify] trusted_authserv_ids` are read (RFC 8601 §5), and of those the topmost, which
is the latest hop of ours. The MTA must remove foreign headers that claim one of our
ids (docs/identity.md). Parsing is the `authres` library's; a header it cannot parse is
skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .signatures import Signature

if TYPE_CHECKING:
    import authres

log = logging.getLogger("ticketgate.verify")

# RFC 8601 result words mapped onto the verdict's five DKIM results.
_DKIM = {"pass": "pass", "fail": "fail", "policy": "fail", "neutral": "none", "none": "none",
         "temperror": "temperror", "permerror": "permerror"}
_DMARC = {"pass": "pass", "fail": "fail", "none": "none", "temperror": "temperror",
          "permerror": "permerror"}


@dataclass(frozen=True)
class TrustedResults:
    authserv_id: str
    signatures: tuple[Signature, ...]  # one per dkim= result, with header.d (or header.i)
    dmarc: str | None  # the dmarc= result, None when the header has none


def trusted_results(values: tuple[str, ...], trusted: tuple[str, ...]) -> TrustedResults | None:
    """The topmost header whose authserv-id is trusted, or None."""
    ids = {t.lower() for t in trusted}
    if not ids or not values:
        return None
    for value in values:
        found = results_of(value)
        if found is not None and found.authserv_id.lower() in ids:
            return found
    return None


def results_of(value: str) -> TrustedResults | None:
    """One header value's DKIM and DMARC results, or None when it cannot be parsed."""
    import authres  # only when there is a header to read

    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except Exception as exc:  # authres.AuthResError, or worse on odd input
        log.debug("unreadable Authentication-Results header skipped: %s", exc)
        return None
    sigs: list[Signature] = []
    dmarc: str | None = None
    for result in header.results:
        method, verdict = result.method.lower(), (result.result or "").lower()
        if method == "dkim":
            sigs.append(Signature(_signing_domain(result), _DKIM.get(verdict, "permerror")))
        elif method == "dmarc" and dmarc is None:
            dmarc = _DMARC.get(verdict, "permerror")
    return TrustedResults(header.authserv_id or "", tuple(sigs), dmarc)


def _signing_domain(result: authres.AuthenticationResult) -> str:
    props = {(p.type.lower(), p.name.lower()): p.value or "" for p in result.properties}
    domain = props.get(("header", "d")) or props.get(("header", "i"), "").rpartition("@")[2]
    return domain.strip().lower()
