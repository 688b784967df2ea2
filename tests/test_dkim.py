"""DKIM: a message the outbox delivered verifies with dkimpy against the generated key.

The key pair comes from openssl (dkimpy signs with its own RSA code); the DNS lookup is a
function passed to dkim.verify that returns our TXT record, so there is no network.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest

from autoresponse.autoresponder import AutoResponder
from autoresponse.dkim_sign import DkimError, DkimSigner
from autoresponse.outbox import Outbox
from gateway.intake.core import Intake
from gateway.mail.envelope import Envelope
from gateway.runtime import Store, open_store
from tests.autoresponse_helpers import SmtpSink, build_mail
from tests.support import integration_missing, make_config


def _keypair(tmp_path: Path) -> tuple[Path, bytes]:
    if shutil.which("openssl") is None:
        integration_missing("openssl (to generate a DKIM test key)")
    key = tmp_path / "dkim.key"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
                   check=True, capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=60).stdout
    return key, base64.b64encode(der)


def _dns(selector: str, domain: str, public: bytes) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        if name == f"{selector}._domainkey.{domain}.".encode():
            return b"v=DKIM1; k=rsa; p=" + public
        return None

    return lookup


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def test_sent_message_verifies(tmp_path: Path, sqlite_url: str, sink: SmtpSink) -> None:
    key, public = _keypair(tmp_path)
    config = make_config(tmp_path, sqlite_url, outbound={
        "smarthost": sink.smarthost,
        "dkim": {"domain": "helpdesk.example", "selector": "tg1", "key_file": str(key)},
    })
    store: Store = open_store(config)
    try:
        intake = Intake(config, store.factory, responder=AutoResponder(config))
        intake.sync_queues()
        intake.process(build_mail(subject="Ñandú äöü 漢字"),
                       Envelope("ana@customer.example", ("support@helpdesk.example",)))
        assert Outbox(config, store.factory).run_until_idle().sent == 1
    finally:
        store.dispose()
    [got] = sink.received
    assert got.data.startswith(b"DKIM-Signature:")
    dns = _dns("tg1", "helpdesk.example", public)
    assert dkim.verify(got.data, dnsfunc=dns)
    # The signature covers the headers and the body: tampering with either breaks it.
    head, _, body = got.data.partition(b"\r\n\r\n")
    for tampered in (head.replace(b"\r\nTo: ", b"\r\nTo: x", 1) + b"\r\n\r\n" + body,
                     head + b"\r\n\r\n" + body.replace(b"ticket", b"tacket", 1)):
        assert tampered != got.data
        assert not dkim.verify(tampered, dnsfunc=dns)
    # And a different key published under that selector does not verify it.
    (tmp_path / "other").mkdir()
    _, other = _keypair(tmp_path / "other")
    assert not dkim.verify(got.data, dnsfunc=_dns("tg1", "helpdesk.example", other))


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DkimError, match="cannot read DKIM key"):
        DkimSigner.from_file("helpdesk.example", "tg1", tmp_path / "nope.key")


def test_missing_key_delays_instead_of_sending_unsigned(tmp_path: Path, sqlite_url: str,
                                                        sink: SmtpSink) -> None:
    config = make_config(tmp_path, sqlite_url, outbound={
        "smarthost": sink.smarthost, "retry_base": 0.0,
        "dkim": {"domain": "helpdesk.example", "selector": "tg1", "key_file": "missing.key"},
    })
    store = open_store(config)
    try:
        intake = Intake(config, store.factory, responder=AutoResponder(config))
        intake.sync_queues()
        intake.process(build_mail(), Envelope("ana@customer.example",
                                              ("support@helpdesk.example",)))
        res = Outbox(config, store.factory).run_until_idle()
    finally:
        store.dispose()
    assert (res.sent, res.retried) == (0, 1)
    assert sink.received == []
