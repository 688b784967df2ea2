"""Sender verification: dkimpy over test keys, From alignment, trusted Authentication-Results,
and DNS that fails or hangs (a resolver function passed in; no network)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, ConfigError, VerifyConfig
from gateway.intake.verify.alignment import aligns
from gateway.intake.verify.authresults import trusted_results
from gateway.intake.verify.resolver import CachingResolver, DnsTempError, dnspython_lookup
from gateway.intake.verify.verifier import Verifier
from gateway.mail.parse import parse_message
from gateway.mail.verdict import NO_VERDICT, SenderVerdict
from tests.support import make_config
from tests.verify_helpers import (
    LoopbackDns,
    SigningKey,
    dkim_key,
    forward_through_list,
    key_name,
    mail,
    records_lookup,
    sign,
)

CUSTOMER = "customer.example"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return dkim_key(tmp_path_factory.mktemp("key"))


def _verifier(key: SigningKey, domains: tuple[str, ...] = (CUSTOMER,), **settings: Any
              ) -> Verifier:
    records = {key_name(d): key.txt() for d in domains}
    return Verifier(VerifyConfig(**settings), CachingResolver(records_lookup(records)))


def _verdict(v: Verifier, raw: bytes) -> SenderVerdict:
    return v.verdict(parse_message(raw))


# -- dkimpy --------------------------------------------------------------------------------


def test_signed_with_a_test_key_verifies_and_aligns(key: SigningKey) -> None:
    v = _verdict(_verifier(key), sign(mail(), CUSTOMER, key))
    assert v == SenderVerdict(dkim="pass", aligned=True, dmarc="pass", aligned_failed=False,
                              source="dkimpy")


def test_tampered_body_fails_and_flags_the_aligned_failure(key: SigningKey) -> None:
    signed = sign(mail(), CUSTOMER, key)
    tampered = signed.replace(b"on fire", b"paid to IBAN DE00 1234")
    v = _verdict(_verifier(key), tampered)
    assert (v.dkim, v.aligned, v.aligned_failed, v.dmarc) == ("fail", False, True, "fail")


def test_a_valid_signature_of_another_domain_does_not_align(key: SigningKey) -> None:
    """evil.example can sign its own mail; it proves nothing about From: customer.example."""
    raw = sign(mail(), "evil.example", key)
    v = _verdict(_verifier(key, ("evil.example",)), raw)
    assert (v.dkim, v.aligned, v.aligned_failed, v.dmarc) == ("pass", False, False, "none")


def test_a_parent_domain_signature_aligns(key: SigningKey) -> None:
    raw = sign(mail(sender="x@eu.customer.example"), CUSTOMER, key)
    assert _verdict(_verifier(key), raw).aligned


@pytest.mark.parametrize(("d", "from_domain", "expected"), [
    ("customer.example", "customer.example", True),
    ("CUSTOMER.example.", "customer.example", True),
    ("customer.example", "eu.customer.example", True),
    ("eu.customer.example", "customer.example", False),
    ("sales.customer.example", "eu.customer.example", False),
    ("example", "customer.example", False),  # one label: never
    ("ustomer.example", "customer.example", False),
    ("xn--mller-kva.example", "müller.example", True),
    ("", "customer.example", False),
])
def test_alignment_rule(d: str, from_domain: str, expected: bool) -> None:
    assert aligns(d, from_domain) is expected


def test_no_signature_is_none_and_no_dns(key: SigningKey) -> None:
    calls: list[str] = []
    v = Verifier(VerifyConfig(), CachingResolver(records_lookup({}, calls)))
    assert _verdict(v, mail()) == SenderVerdict(source="dkimpy")
    assert calls == []
    assert not v.may_block(mail()) and v.may_block(sign(mail(), CUSTOMER, key))


def test_switched_off_nothing_is_checked(key: SigningKey) -> None:
    calls: list[str] = []
    v = Verifier(VerifyConfig(dkim=False), CachingResolver(records_lookup({}, calls)))
    signed = sign(mail(), CUSTOMER, key)
    assert not v.may_block(signed)
    assert _verdict(v, signed) == NO_VERDICT and calls == []


def test_a_missing_key_fails_and_a_malformed_signature_is_permerror(key: SigningKey) -> None:
    nokey = _verdict(_verifier(key, ()), sign(mail(), CUSTOMER, key))
    assert (nokey.dkim, nokey.aligned) == ("fail", False)
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=customer.example; garbage\r\n" + mail()
    assert _verdict(_verifier(key), broken).dkim == "permerror"


def test_a_header_block_past_the_parse_limit_is_not_verified(key: SigningKey) -> None:
    """dkimpy would hold every field (8x the block): such a signature is unusable."""
    from gateway.mail.mimetree import MAX_HEADER_BYTES

    junk = b"".join(b"X-Junk-%d: xxxxxxxx\r\n" % n for n in range(MAX_HEADER_BYTES // 20))
    small = b"".join(b"X-Junk-%d: xxxxxxxx\r\n" % n for n in range(1000))
    assert _verdict(_verifier(key), sign(small + mail(), CUSTOMER, key)).dkim == "pass"
    v = _verdict(_verifier(key), sign(junk + mail(), CUSTOMER, key))
    assert (v.dkim, v.aligned) == ("permerror", False)


def test_the_best_signature_counts(key: SigningKey) -> None:
    """A mailing list's failing signature does not hide the author's valid one."""
    raw = sign(mail(), CUSTOMER, key)
    twice = b"DKIM-Signature: v=1; a=rsa-sha256; d=list.example; s=x; h=from; bh=AA==; b=AA==\r\n"
    v = _verdict(_verifier(key), twice + raw)
    assert (v.dkim, v.aligned) == ("pass", True)


def test_a_trusted_arc_sealer_vouches_for_a_signature_a_list_broke(key: SigningKey) -> None:
    listed = forward_through_list(sign(mail(), CUSTOMER, key), key, "lists.example")
    domains = (CUSTOMER, "lists.example")
    broken = _verdict(_verifier(key, domains), listed)
    assert (broken.dkim, broken.aligned, broken.aligned_failed) == ("fail", False, True)
    untrusted = _verdict(_verifier(key, domains, trusted_arc_sealers=("other.example",)), listed)
    assert untrusted == broken
    trusted = _verdict(_verifier(key, domains, trusted_arc_sealers=("lists.example",)), listed)
    assert trusted == SenderVerdict("pass", True, "pass", False, "arc:lists.example")
    # A chain that does not validate (the message changed after sealing) counts for nothing.
    tampered = listed.replace(b"on fire", b"paid to a new IBAN")
    assert _verdict(_verifier(key, domains, trusted_arc_sealers=("lists.example",)),
                    tampered).aligned is False


def test_an_arc_chain_past_the_header_limit_is_not_read(key: SigningKey) -> None:
    from gateway.mail.mimetree import MAX_HEADER_BYTES

    junk = b"".join(b"X-Junk-%d: xxxxxxxx\r\n" % n for n in range(MAX_HEADER_BYTES // 20))
    first, rest = mail().split(b"\r\n", 1)  # From first: read, whatever follows
    bloated = forward_through_list(sign(first + b"\r\n" + junk + rest, CUSTOMER, key), key,
                                   "lists.example")
    v = _verdict(_verifier(key, (CUSTOMER, "lists.example"),
                           trusted_arc_sealers=("lists.example",)), bloated)
    assert (v.dkim, v.aligned, v.source) == ("permerror", False, "dkimpy")


# -- DNS failures ---------------------------------------------------------------------------


def _raising(name: str, timeout: float) -> bytes | None:
    raise OSError("network unreachable")


def test_resolver_raising_gives_temperror(key: SigningKey) -> None:
    v = Verifier(VerifyConfig(), CachingResolver(_raising))
    got = _verdict(v, sign(mail(), CUSTOMER, key))
    assert (got.dkim, got.aligned, got.aligned_failed, got.dmarc) == (
        "temperror", False, False, "temperror")


def test_resolver_hanging_gives_temperror_within_the_timeout(key: SigningKey) -> None:
    """The verdict comes back while the lookup still hangs: the wait is ours (dns_timeout),
    not the resolver's."""
    release = threading.Event()
    entered = threading.Event()

    def hang(name: str, timeout: float) -> bytes | None:
        entered.set()
        release.wait(60)
        return key.txt()

    v = Verifier(VerifyConfig(dns_timeout=0.2), CachingResolver(hang))
    try:
        got = _verdict(v, sign(mail(), CUSTOMER, key))
        assert entered.is_set() and not release.is_set()
        assert got.dkim == "temperror"
    finally:
        release.set()


def test_a_failed_lookup_is_remembered_briefly_an_answer_for_the_ttl() -> None:
    now = [1000.0]
    calls: list[str] = []

    def flaky(name: str, timeout: float) -> bytes | None:
        calls.append(name)
        if len(calls) == 1:
            raise OSError("SERVFAIL")
        return b"v=DKIM1; p=x"

    r = CachingResolver(flaky, ttl=3600, failure_ttl=60, clock=lambda: now[0])
    with pytest.raises(DnsTempError):
        r.txt("s._domainkey.a.example.", 1.0)
    with pytest.raises(DnsTempError):  # within a minute: not asked again
        r.txt("s._domainkey.a.example.", 1.0)
    assert len(calls) == 1
    now[0] += 61
    assert r.txt("S._domainkey.A.example", 1.0) == b"v=DKIM1; p=x"
    now[0] += 3000
    assert r.txt("s._domainkey.a.example.", 1.0) == b"v=DKIM1; p=x"
    assert len(calls) == 2


def test_dnspython_lookup_against_a_loopback_server(key: SigningKey) -> None:
    """The production lookup, pointed at a real DNS server on loopback."""
    with LoopbackDns({key_name(CUSTOMER): key.txt()}) as server:
        lookup = dnspython_lookup((server.address,))
        assert lookup(key_name(CUSTOMER), 2.0) == key.txt()
        assert lookup(key_name("nokey.example"), 2.0) is None
    with LoopbackDns({}, silent=True) as server:
        v = Verifier(VerifyConfig(dns_timeout=0.3),
                     CachingResolver(dnspython_lookup((server.address,))))
        assert _verdict(v, sign(mail(), CUSTOMER, key)).dkim == "temperror"


# -- Authentication-Results ------------------------------------------------------------------

TRUSTED = ("mx.helpdesk.example",)


def _authres(header: str, **settings: Any) -> SenderVerdict:
    v = Verifier(VerifyConfig(**{"dkim": False, "trusted_authserv_ids": TRUSTED, **settings}),
                 CachingResolver(_raising))
    return _verdict(v, f"Authentication-Results: {header}\r\n".encode() + mail())


def test_untrusted_authserv_id_claiming_pass_is_not_believed() -> None:
    assert _authres("attacker.example; dkim=pass header.d=customer.example") == NO_VERDICT
    # And without any trusted id configured, no header is read at all.
    assert _authres("mx.helpdesk.example; dkim=pass header.d=customer.example",
                    trusted_authserv_ids=()) == NO_VERDICT


def test_trusted_authserv_id_is_believed() -> None:
    v = _authres("mx.helpdesk.example; dkim=pass (2048-bit key) header.d=customer.example "
                 "header.i=@customer.example header.b=abcd; "
                 "dmarc=pass header.from=customer.example")
    assert v == SenderVerdict("pass", True, "pass", False, "authres:mx.helpdesk.example")
    other = _authres("MX.helpdesk.example; dkim=pass header.d=evil.example")
    assert (other.dkim, other.aligned, other.dmarc) == ("pass", False, "none")
    failed = _authres("mx.helpdesk.example; dkim=fail header.i=ana@customer.example")
    assert (failed.dkim, failed.aligned_failed, failed.dmarc) == ("fail", True, "fail")


def test_only_the_topmost_trusted_header_counts() -> None:
    """A forged header claiming our id below ours (the MTA should strip it) is not read."""
    values = ("mx.helpdesk.example; dkim=fail header.d=customer.example",
              "mx.helpdesk.example; dkim=pass header.d=customer.example",
              "attacker.example; dkim=pass header.d=customer.example")
    found = trusted_results(values, TRUSTED)
    assert found is not None and [s.result for s in found.signatures] == ["fail"]
    assert trusted_results(("unparsable ((( ;;",), TRUSTED) is None


def test_with_dkimpy_on_a_forged_header_is_ignored(key: SigningKey) -> None:
    raw = b"Authentication-Results: mx.helpdesk.example; dkim=pass header.d=customer.example\r\n"
    v = _verifier(key, trusted_authserv_ids=TRUSTED)
    assert _verdict(v, raw + mail()) == SenderVerdict(source="dkimpy")


# -- configuration ---------------------------------------------------------------------------


def test_verify_settings_are_validated(tmp_path: Path) -> None:
    def cfg(**verify: Any) -> Config:
        return make_config(tmp_path, "sqlite://", verify=verify)

    assert cfg().verify == VerifyConfig()
    for bad, key_ in (({"dns_timeout": 0}, "verify.dns_timeout"),
                      ({"dns_timeout": 60}, "verify.dns_timeout"),
                      ({"dns_cache_ttl": -1}, "verify.dns_cache_ttl"),
                      ({"trusted_authserv_ids": ["mx; dkim=pass"]},
                       "verify.trusted_authserv_ids[0]"),
                      ({"nameservers": ["dns.example"]}, "verify.nameservers[0]"),
                      ({"trusted_arc_sealers": ["localhost"]},
                       "verify.trusted_arc_sealers[0]"),
                      ({"dkim": "yes"}, "verify.dkim")):
        with pytest.raises(ConfigError, match=key_.replace("[", r"\[").replace("]", r"\]")):
            cfg(**bad)
    ok = cfg(nameservers=["127.0.0.1:5353", "::1"], trusted_authserv_ids="mx.example.com")
    assert ok.verify.trusted_authserv_ids == ("mx.example.com",)
