"""Relaxed From alignment without the Public Suffix List.

A signature's `d=` domain aligns with the From domain when it is that domain or a parent
of it (`d=example.com` for `From: x@support.example.com`), and has at least two labels.
A valid signature for d=X proves control of X's DNS, and whoever controls X controls its
subdomains, so a parent never aligns wrongly. Stricter than DMARC's organisational-domain
rule in one case only: `d=mail.example.com` does not align with `From: x@example.com`
(a subdomain may be delegated to a mail provider).
"""

from __future__ import annotations


def ascii_domain(domain: str) -> str:
    """Lower case, no trailing dot, internationalised names as A-labels (as in d=)."""
    d = domain.strip().rstrip(".").lower()
    if d.isascii():
        return d
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def aligns(signing_domain: str, from_domain: str) -> bool:
    d, f = ascii_domain(signing_domain), ascii_domain(from_domain)
    if not d or not f or "." not in d:
        return False
    return f == d or f.endswith("." + d)
