"""The sender verdict of one message: dkimpy's, or the trusted MTA's, or none.

With `[verify] dkim = true` (the default) every DKIM signature is checked by dkimpy (and,
when none aligns, a trusted ARC sealer's word counts) and Authentication-Results headers
are not read; with `dkim = false` the topmost header of a
trusted authserv-id is the verdict; with neither the verdict is "not checked" (source
"off"). A message's DNS lookups together take at most `[verify] dns_timeout` seconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from gateway.config import Config, VerifyConfig
from gateway.mail.parse import ParsedMessage
from gateway.mail.verdict import NO_VERDICT, SenderVerdict

from .alignment import aligns
from .arc import trusted_arc_results
from .authresults import trusted_results
from .resolver import Budget, CachingResolver, TxtLookup, dnspython_lookup
from .signatures import MAX_SIGNATURES, Signature, check_signatures

log = logging.getLogger("ticketgate.verify")

# A DKIM-Signature header in the header section (a cheap look before parsing anything).
_SIGNED = re.compile(rb"(?:\A|\n)dkim-signature[ \t]*:", re.IGNORECASE)
_FAILED = ("fail", "permerror")


def verdict_of(signatures: Iterable[Signature], from_domain: str, source: str,
               dmarc: str | None = None) -> SenderVerdict:
    """Fold per-signature results into one verdict (dmarc: the MTA's, when it said one)."""
    sigs = tuple(signatures)
    results = {s.result for s in sigs}
    best = next((r for r in ("pass", "temperror", "fail", "permerror") if r in results), "none")
    mine = [s for s in sigs if aligns(s.domain, from_domain)]
    aligned = any(s.result == "pass" for s in mine)
    aligned_failed = not aligned and any(s.result in _FAILED for s in mine)
    if dmarc is None:
        dmarc = ("pass" if aligned else "fail" if aligned_failed
                 else "temperror" if any(s.result == "temperror" for s in mine) else "none")
    return SenderVerdict(dkim=best, aligned=aligned, dmarc=dmarc,
                         aligned_failed=aligned_failed, source=source)


class Verifier:
    """Safe to share between threads; the DNS cache lives as long as the verifier."""

    def __init__(self, settings: VerifyConfig, resolver: CachingResolver) -> None:
        self.settings = settings
        self.resolver = resolver

    @classmethod
    def from_config(cls, config: Config, lookup: TxtLookup | None = None) -> Verifier:
        """DNS through `lookup`, else dnspython (the configured or the system's servers)."""
        v = config.verify
        return cls(v, CachingResolver(lookup or dnspython_lookup(v.nameservers),
                                      ttl=v.dns_cache_ttl))

    def may_block(self, raw: bytes) -> bool:
        """True when `verdict` may wait for DNS: keep such messages off an event loop."""
        if not self.settings.dkim:
            return False
        end = raw.find(b"\r\n\r\n")
        end = raw.find(b"\n\n") if end < 0 else end
        return _SIGNED.search(raw if end < 0 else raw[:end]) is not None

    def verdict(self, msg: ParsedMessage) -> SenderVerdict:
        v = self._checked(msg) if self.settings.dkim else self._reported(msg)
        if v is not NO_VERDICT:
            log.debug("message_id=<%s> dkim=%s aligned=%s dmarc=%s source=%s",
                      msg.message_id, v.dkim, v.aligned, v.dmarc, v.source)
        return v

    def _checked(self, msg: ParsedMessage) -> SenderVerdict:
        """dkimpy's verdict; ARC's when a trusted sealer vouches for a broken signature."""
        s = self.settings
        count = len(msg.headers.get("dkim-signature", ()))
        if not count:
            return verdict_of((), msg.from_domain, "dkimpy")
        # A header block the parse did not read whole: dkimpy would hold every field of it
        # (8x the block), so neither the signatures nor an ARC chain are checked.
        if msg.head_cut:
            log.debug("message_id=<%s> header block not read whole: dkim not verified",
                      msg.message_id)
            return verdict_of((Signature("", "permerror"),) * min(count, MAX_SIGNATURES),
                              msg.from_domain, "dkimpy")
        budget = Budget(self.resolver, s.dns_timeout)
        v = verdict_of(check_signatures(msg.raw, count, budget.dnsfunc), msg.from_domain,
                       "dkimpy")
        if v.aligned or not s.trusted_arc_sealers or not msg.has_header("arc-seal"):
            return v
        sealed = trusted_arc_results(msg.raw, s.trusted_arc_sealers, budget.dnsfunc)
        if sealed is None:
            return v
        arc = verdict_of(sealed.results.signatures, msg.from_domain, f"arc:{sealed.sealer}",
                         sealed.results.dmarc)
        return arc if arc.aligned else v

    def _reported(self, msg: ParsedMessage) -> SenderVerdict:
        """The trusted MTA's verdict, or NO_VERDICT."""
        found = trusted_results(msg.headers.get("authentication-results", ()),
                                self.settings.trusted_authserv_ids)
        if found is None:
            return NO_VERDICT
        return verdict_of(found.signatures, msg.from_domain, f"authres:{found.authserv_id}",
                          found.dmarc)
