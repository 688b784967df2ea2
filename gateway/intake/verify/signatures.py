"""Check every DKIM signature of a message with dkimpy: (d= domain, result) pairs.

Results follow RFC 8601's words: pass, fail (the signature or body hash does not match,
or the key is missing or unusable), permerror (a malformed signature), temperror (DNS
failed or ran out of time). dkimpy's failures never escape: a message it chokes on is
stored like any other, with permerror.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .resolver import DnsTempError

log = logging.getLogger("ticketgate.verify")

# Signatures checked per message; more are ignored (each may cost a DNS lookup).
MAX_SIGNATURES = 5
# dkimpy logs key and DNS problems at ERROR with the sender's domain: they are a
# message's property, not our failure. We log the outcome ourselves, at debug.
QUIET = logging.getLogger("ticketgate.verify.dkimpy")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@dataclass(frozen=True)
class Signature:
    domain: str  # d=, lower case; "" when the signature could not be read
    result: str  # pass | fail | permerror | temperror


def check_signatures(
    raw: bytes, count: int, dnsfunc: Callable[..., bytes | None]
) -> tuple[Signature, ...]:
    """Verify the first `count` (at most MAX_SIGNATURES) DKIM-Signature headers."""
    import dkim  # only for signed mail: an unsigned message's pipe run never loads it

    out: list[Signature] = []
    try:
        d = dkim.DKIM(raw, logger=QUIET, minkey=1024)
    except Exception as exc:  # an unreadable message: every signature is unusable
        log.debug("dkim: message not readable: %s", exc)
        return (Signature("", "permerror"),) * min(count, MAX_SIGNATURES)
    for idx in range(min(count, MAX_SIGNATURES)):
        d.domain = None
        try:
            result = "pass" if d.verify(idx=idx, dnsfunc=dnsfunc) else "fail"
        except DnsTempError as exc:
            log.debug("dkim: signature %d: %s", idx, exc)
            result = "temperror"
        except dkim.ValidationError as exc:
            log.debug("dkim: signature %d fails: %s", idx, exc)
            result = "fail"
        except Exception as exc:  # dkimpy's DKIMException, or a bug on odd input
            log.debug("dkim: signature %d unusable: %s: %s", idx, type(exc).__name__, exc)
            result = "permerror"
        domain = d.domain.decode("ascii", "replace").lower() if d.domain else ""
        out.append(Signature(domain, result))
    return tuple(out)
