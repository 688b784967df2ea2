"""Where a message really comes from: the sender verdict the intake works out.

Pure data, so the core, rules and the responder can read it without knowing how it was
found (dkimpy, or a trusted `Authentication-Results` header, or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SenderVerdict:
    # pass | fail | none | temperror | permerror: the best DKIM result of the message.
    dkim: str = "none"
    # A valid DKIM signature whose d= aligns (relaxed) with the From domain.
    aligned: bool = False
    # DMARC-style result from the alignment: pass | fail | none.
    dmarc: str = "none"
    # A signature for a domain aligned with From was present and failed: a forgery sign.
    aligned_failed: bool = False
    # Who decided: "dkimpy", "authres:<authserv-id>", or "off" (not checked).
    source: str = "off"

    def summary(self) -> str:
        """One line for people: `tickets show`, `rules test`."""
        if self.source == "off":
            return "not checked"
        flags = " aligned" if self.aligned else " ALIGNED-FAILED" if self.aligned_failed else ""
        return f"dkim={self.dkim} dmarc={self.dmarc}{flags} (by {self.source})"


NO_VERDICT = SenderVerdict()

# The values `dkim` and `dmarc` take (rule conditions check against these).
DKIM_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
DMARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
