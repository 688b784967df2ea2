"""ARC (RFC 8617): a trusted forwarder's word for a signature it saw before breaking it.

A mailing list or forwarder that adds a footer breaks the author's DKIM signature. If it
sealed the message with ARC and its sealing domain is in `[verify] trusted_arc_sealers`,
and dkimpy validates the whole chain, the DKIM results that forwarder recorded in its
ARC-Authentication-Results count instead. An untrusted or broken chain counts for nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from .authresults import TrustedResults, results_of
from .signatures import QUIET

log = logging.getLogger("ticketgate.verify")

_INSTANCE = re.compile(r"^\s*i\s*=\s*\d+\s*;")


@dataclass(frozen=True)
class SealedResults:
    sealer: str  # the trusted ARC-Seal's d=
    results: TrustedResults


def trusted_arc_results(raw: bytes, trusted: tuple[str, ...],
                        dnsfunc: Callable[..., bytes | None]) -> SealedResults | None:
    """The newest trusted sealer's recorded results, when the chain validates; else None."""
    import dkim  # only for sealed mail at sites that trust a sealer

    sealers = {t.lower().rstrip(".") for t in trusted}
    try:
        cv, instances, reason = dkim.arc_verify(raw, logger=QUIET, dnsfunc=dnsfunc)
    except Exception as exc:  # DNS trouble (DnsTempError) or dkimpy choking: no ARC
        log.debug("arc: not usable: %s: %s", type(exc).__name__, exc)
        return None
    if cv != dkim.CV_Pass:
        log.debug("arc: chain %s: %s", cv, reason)
        return None
    for inst in instances:  # newest first
        sealer = inst.get("as-domain", b"").decode("ascii", "replace").lower()
        if sealer in sealers:
            aar = inst.get("aar-value", b"").decode("utf-8", "replace")
            found = results_of(_INSTANCE.sub("", aar, count=1))
            return SealedResults(sealer, found) if found is not None else None
    return None
