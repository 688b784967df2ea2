"""Helpers for the sender-verification tests: test keys, signing, and DNS without a network.

Keys come from openssl, once per test session. DNS is either a function (the `TxtLookup`
the verifier is given) or, for the subprocesses and the daemon that build their own
verifier, a real DNS server on loopback UDP (`LoopbackDns`) named in `[verify] nameservers`.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dkim
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from tests.support import integration_missing

SELECTOR = "tg2026"


@dataclass(frozen=True)
class SigningKey:
    private_pem: bytes
    public_b64: bytes

    def txt(self) -> bytes:
        return b"v=DKIM1; k=rsa; p=" + self.public_b64


@cache
def _key(tmp: str) -> SigningKey:
    key = Path(tmp) / "dkim.key"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "1024"],
                   check=True, capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=60).stdout
    return SigningKey(key.read_bytes(), base64.b64encode(der))


def dkim_key(tmp_dir: Path) -> SigningKey:
    """One RSA key for the session (generating one takes a moment)."""
    if shutil.which("openssl") is None:
        integration_missing("openssl (to generate a DKIM test key)")
    return _key(str(tmp_dir))


def key_name(domain: str, selector: str = SELECTOR) -> str:
    return f"{selector}._domainkey.{domain}."


def sign(raw: bytes, domain: str, key: SigningKey, selector: str = SELECTOR) -> bytes:
    """`raw` with a DKIM-Signature of `domain` on top (relaxed/relaxed, like most MTAs)."""
    header = dkim.sign(raw, selector.encode(), domain.encode(), key.private_pem,
                       canonicalize=(b"relaxed", b"relaxed"),
                       include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return header + raw


def forward_through_list(raw: bytes, key: SigningKey, sealer: str = "lists.example") -> bytes:
    """What a mailing list does: note the DKIM result it saw, add a footer (breaking the
    author's signature), and seal the result with ARC as `sealer`."""
    seen = f"Authentication-Results: {sealer}; dkim=pass header.d=customer.example\r\n"
    changed = seen.encode() + raw + b"-- \r\nYou are subscribed to the users list.\r\n"
    seal = dkim.arc_sign(changed, SELECTOR.encode(), sealer.encode(), key.private_pem,
                         sealer.encode())
    return b"".join(seal) + changed


def mail(sender: str = "Ana <ana@customer.example>", subject: str = "Printer on fire",
         body: str = "Hello,\r\nthe printer is on fire.\r\n", extra: str = "",
         message_id: str = "") -> bytes:
    mid = message_id or f"{abs(hash((sender, subject, body)))}@customer.example"
    return (f"From: {sender}\r\nTo: support@helpdesk.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
            ).encode()


class LoopbackDns:
    """A DNS server on 127.0.0.1 (UDP) answering TXT queries from `records`
    (name with trailing dot -> record); NXDOMAIN for others. `silent`: never answers."""

    def __init__(self, records: dict[str, bytes], silent: bool = False) -> None:
        self.records = {k.lower(): v for k, v in records.items()}
        self.silent = silent
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> LoopbackDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text().lower()
            self.queries.append(name)
            if self.silent:
                continue
            reply = dns.message.make_response(query)
            record = self.records.get(name)
            if record is not None and query.question[0].rdtype == dns.rdatatype.TXT:
                chunks = [record[i:i + 255] for i in range(0, len(record), 255)]
                rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
                reply.answer.append(dns.rrset.from_rdata(query.question[0].name, 60, rdata))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)


def records_lookup(records: dict[str, bytes],
                   calls: list[str] | None = None) -> Callable[[str, float], bytes | None]:
    """A `TxtLookup` over a dict (name with trailing dot -> TXT record)."""
    def lookup(name: str, timeout: float) -> bytes | None:
        if calls is not None:
            calls.append(name)
        return records.get(name.lower())

    return lookup
