"""Parsing the fixture corpus: every decoded value asserted exactly.

The corpus (tests/fixtures/mail, see its README) was written for this project: replies
from Outlook, Gmail, Apple Mail, Thunderbird and a phone, mail in German, Spanish and
Japanese, lying and missing charsets, HTML-only mail, awkward attachment names, nested
forwards and broken structure.
"""

from __future__ import annotations

import dataclasses
import email
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail.parse import ParsedMessage, decode_header_value, parse_message
from tests.support import MAIL, mail

NUM = "2026112210000013"
ORIG = "4f1c2a9e-1d3b-4c8e-9a51-7e2b0c6d1a01@customer.example"
AUTOREPLY = f"ticketgate.{NUM}.a1@helpdesk.example"
PRINTER = "Drucker im Büro druckt nur Streifen"


def test_every_fixture_parses_and_keeps_raw_bytes() -> None:
    files = sorted(MAIL.glob("*.eml"))
    assert len(files) >= 25
    for path in files:
        raw = path.read_bytes()
        msg = parse_message(raw)
        assert msg.raw is raw, path.name
        assert msg.subject, path.name
        assert msg.text.strip() or msg.attachments, path.name
        assert "\ufffd" not in msg.subject + msg.from_name + msg.text, path.name


def test_original_thunderbird_message() -> None:
    m = parse_message(mail("new_ticket_de.eml"))
    assert m.message_id == ORIG
    assert m.subject == PRINTER
    assert (m.from_name, m.from_address) == ("Ana Müller", "ana.mueller@customer.example")
    assert m.from_domain == "customer.example"
    assert m.to == ("support@helpdesk.example",)
    assert m.in_reply_to == () and m.references == ()
    assert m.text == (
        "Hallo zusammen,\n\n"
        "der Drucker im Büro (2. Stock, HP LaserJet M404) druckt seit heute Morgen nur noch\n"
        "graue Streifen. Toner ist neu, Reinigung habe ich schon versucht.\n\n"
        "Viele Grüße\nAna Müller\nBuchhaltung, Customer GmbH\n"
    )
    assert m.html == "" and m.attachments == ()
    assert m.header("user-agent") == "Mozilla Thunderbird"


def test_outlook_german_reply_references_only() -> None:
    m = parse_message(mail("reply_outlook_aw.eml"))
    assert m.subject == f"AW: {PRINTER}"
    assert m.in_reply_to == ()
    assert m.references == (ORIG,)
    assert m.from_name == "Ana Müller"
    assert m.header("thread-topic") == PRINTER
    assert m.text.startswith(
        "Hallo,\n\nder Drucker zeigt jetzt zusätzlich den Fehler 49.4C02 an. "
        "Bitte um Rückruf.\n\nMit freundlichen Grüßen\nAna Müller\n\n"
        "-----Ursprüngliche Nachricht-----\n"
    )
    assert "<p>Hallo,</p>" in m.html
    assert m.content_type == "multipart/alternative"


def test_outlook_english_reply_with_folded_references_and_cc() -> None:
    m = parse_message(mail("reply_outlook_re.eml"))
    assert m.subject == f"RE: {PRINTER}"
    assert m.references == (
        ORIG, "AM0PR07MB6114F1B2C3D4E5F60718293A4B5C6@AM0PR07MB6114.eurprd07.prod.outlook.com"
    )
    assert m.cc == ("ana.mueller@customer.example",)
    assert m.text.startswith("Hi,\n\nsame problem on the second printer (room 2.14).")


def test_gmail_reply_encoded_words_split_inside_the_ticket_number() -> None:
    m = parse_message(mail("reply_gmail.eml"))
    assert m.subject == f"Re: [Ticket#{NUM}] {PRINTER}"
    assert m.in_reply_to == (AUTOREPLY,)
    assert m.references == (ORIG, AUTOREPLY)
    assert m.message_id == "CAJ8s0Qd5kX=2vN4uXw3T9pLq7ZbR1mYc@mail.gmail.com"
    assert m.text.startswith("Guten Tag,\n\nder Techniker war da, jetzt funktioniert alles "
                             "wieder. Danke!\n")
    assert m.html.startswith('<div dir="ltr">Guten Tag,')


def test_apple_mail_reply_with_rfc2231_attachment() -> None:
    m = parse_message(mail("reply_apple_mail.eml"))
    assert m.subject == f"Re: [Ticket#{NUM}] {PRINTER}"
    assert m.message_id == "3B9D1E44-82C6-4F0A-9E1B-5C6D7E8F9A0B@customer.example"
    assert m.text.startswith("Hier noch ein Foto vom Ausdruck.\n\nGruß\nAna\n")
    (att,) = m.attachments
    assert att.filename == "Ausdruck mit Streifen – Büro.jpg"
    assert att.content_type == "image/jpeg"
    assert att.content.startswith(b"\xff\xd8\xff\xe0") and att.content.endswith(b"\xff\xd9")
    assert len(att.content) == 283


def test_thunderbird_reply_b_encoded_subject_8bit_body() -> None:
    m = parse_message(mail("reply_thunderbird.eml"))
    assert m.subject == f"Re: [Ticket#{NUM}] {PRINTER}"
    assert m.references == (ORIG, AUTOREPLY)
    assert "kurze Rückmeldung: Der Drucker im 3. Stock hat dasselbe Problem." in m.text


def test_mobile_reply_raw_utf8_headers_in_reply_to_only() -> None:
    m = parse_message(mail("reply_mobile_no_tag.eml"))
    assert m.subject == f"Re: {PRINTER}"
    assert m.from_name == "Ana Müller"
    assert m.in_reply_to == (ORIG,)
    assert m.references == ()
    assert m.text.endswith("Von meinem iPhone gesendet\n")


def test_spanish_b_subject_and_windows_1252_body_labelled_latin1() -> None:
    m = parse_message(mail("new_es_cp1252_as_latin1.eml"))
    assert m.subject == "Problema con la facturación de noviembre – ¿pueden ayudarme?"
    assert m.from_name == "María José Peña"
    assert m.text == (
        "Buenos días:\n\n"
        "La factura nº 2026-1187 de noviembre muestra un importe de 1.250,00 € en lugar de "
        "125,00 €.\n"
        "Según el contrato “Plan Básico” la cuota mensual es fija – ¿podrían revisarlo…?\n\n"
        "Saludos cordiales,\nMaría José Peña\n"
    )


def test_german_q_subject_and_latin1_quoted_printable_body() -> None:
    m = parse_message(mail("new_de_latin1_qp.eml"))
    assert m.subject == "Rechnung für März fehlt"
    assert m.from_name == "Jürgen Weiß"
    assert m.to == ("billing@helpdesk.example",)
    assert m.text == (
        "Sehr geehrte Damen und Herren,\n\n"
        "die Rechnung für März ist bei uns nie angekommen. Bitte schicken Sie sie erneut an "
        "buchhaltung@firma.example.\n\nMit freundlichen Grüßen\nJürgen Weiß\n"
    )


def test_japanese_iso_2022_jp_with_microsoft_extensions() -> None:
    m = parse_message(mail("new_ja_iso2022jp.eml"))
    assert m.subject == "請求書の再発行のお願い"
    assert m.from_name == "山田 花子"
    assert m.text == (
        "サポートご担当者様\n\n"
        "いつもお世話になっております。\n"
        "先月分の請求書を紛失してしまいました。再発行をお願いできますでしょうか。\n"
        "①請求書番号：INV-2026-0042\n"
        "②送付先：経理部 山田\n\n"
        "よろしくお願いいたします。\n山田 花子\n"
    )


def test_japanese_shift_jis_subject_and_body_with_cp932_characters() -> None:
    m = parse_message(mail("new_ja_shift_jis.eml"))
    assert m.subject == "見積書①の件（至急）"
    assert m.from_name == "高橋 一郎"
    assert m.text == (
        "お世話になっております。\n見積書①の金額が古い単価のままです～ご確認ください。\n"
        "※至急で対応をお願いします。\n高橋\n"
    )


def test_undeclared_8bit_utf8_headers_and_body() -> None:
    m = parse_message(mail("undeclared_8bit_utf8.eml"))
    assert m.subject == "Grüße aus Köln – Rückruf erbeten"
    assert (m.from_name, m.from_address) == ("Zoë Çelik", "zoe.celik@kunde.example")
    assert m.text == "Bitte rufen Sie mich zurück: +49 221 555 0100.\nDanke schön!\nZoë\n"


def test_undeclared_8bit_windows_1252_headers_and_body() -> None:
    m = parse_message(mail("undeclared_8bit_cp1252.eml"))
    assert m.subject == "Commande n° 4711 – livraison retardée"
    assert m.text == (
        "Bonjour,\n\nma commande n° 4711 (84,90 €) n’est toujours pas arrivée. "
        "Où en est-elle ?\n\nAndré Lefèvre\n"
    )


@pytest.mark.parametrize(
    ("name", "subject", "text"),
    [
        ("wrong_charset_utf8_label.eml", "Fejl i faktura",
         "Hej, beløbet på fakturaen er forkert: 1.200 kr. i stedet for 120 kr. – "
         "mvh Kasper Jørgensen\n"),
        ("wrong_charset_ascii_label.eml", "Passwort zurücksetzen",
         "Ich kann mich nicht anmelden – bitte das Passwort für „ines.odegard“ "
         "zurücksetzen.\n"),
        ("unknown_charset.eml", "Kontaktformular: Rückgabe",
         "Name: Björn Öberg\nNachricht: Ich möchte die Jacke (Größe M) zurückgeben.\n"),
    ],
)
def test_wrong_and_unknown_charset_labels(name: str, subject: str, text: str) -> None:
    m = parse_message(mail(name))
    assert m.subject == subject
    assert m.text == text


def test_wrong_label_from_name_in_8bit_windows_1252() -> None:
    m = parse_message(mail("wrong_charset_utf8_label.eml"))
    assert m.from_name == "Kasper Jørgensen"


def test_html_only_mail_gets_a_readable_text_body() -> None:
    m = parse_message(mail("html_only.eml"))
    assert m.content_type == "text/html"
    assert m.reply_to == ("lena.schaefer@kunde.example",)
    assert m.text == (
        "Neue Anfrage\n\n"
        "Kunde: Lena Schäfer\nBestellnummer: 10042\n\n"
        "Nachricht:\n\n"
        "- Artikel 1: beschädigt\n"
        "- Artikel 2: fehlt & wurde berechnet (19,99 €)\n\n"
        "Details: Bestellung ansehen <https://shop.example/orders/10042>\n\n"
        "Status offen\n\n"
        "Grüße – Ihr Shop"
    )
    assert "tracking" not in m.text and "color" not in m.text
    assert m.html.startswith("<!DOCTYPE html>")


def test_attachment_names_rfc2231_encoded_words_and_raw_8bit() -> None:
    m = parse_message(mail("attachments_names.eml"))
    assert m.subject == "Unterlagen zur Kündigung"
    assert m.text == "Anbei die Unterlagen."  # from the HTML part
    names = [(a.filename, a.content_type) for a in m.attachments]
    assert names == [
        ("logo@kunde.example", "image/png"),  # inline, no name: its Content-ID
        ("Rechnung März 2026.pdf", "application/pdf"),  # RFC 2231 wins over name=
        ("Übersicht der offenen Aufträge (Stand November).xlsx",  # 2231 continuations
         "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("契約書.docx",  # encoded word in filename= (Outlook, Gmail)
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("Größenliste.csv", "text/csv"),  # raw 8-bit UTF-8 in the header
        ("Kündigung.txt", "text/plain"),  # encoded word in Content-Type name= only
    ]
    by_name = {a.filename: a for a in m.attachments}
    pdf = by_name["Rechnung März 2026.pdf"].content
    assert pdf.startswith(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n") and pdf.endswith(b"%%EOF\n")
    assert by_name["Übersicht der offenen Aufträge (Stand November).xlsx"].content == (
        b"PK\x03\x04" + bytes(range(200))
    )
    assert by_name["Größenliste.csv"].content == "Größe;Menge\nM;3".encode()
    assert by_name["Kündigung.txt"].content == "Kündigung zum 31.12.2026\n".encode("latin-1")
    att = by_name["契約書.docx"]
    assert att.sha256 == hashlib.sha256(att.content).hexdigest()


def test_nested_forward_is_kept_whole_as_an_eml_attachment() -> None:
    m = parse_message(mail("nested_forward.eml"))
    assert m.subject == "Fwd: Fwd: [ALERT] Festplatte voll auf db01"
    assert m.text == "Bitte übernehmen, Details in der weitergeleiteten Nachricht."
    (fwd,) = m.attachments
    assert fwd.content_type == "message/rfc822"
    assert fwd.filename == "Fwd_ [ALERT] Festplatte voll auf db01.eml"
    # The attachment is the forwarded message itself, which contains the next forward.
    inner = parse_message(fwd.content)
    assert inner.message_id == "fwd.ops.1@customer.example"
    assert inner.text == "Siehe unten – kann das jemand prüfen?"
    (inner_fwd,) = inner.attachments
    innermost = parse_message(inner_fwd.content)
    assert innermost.subject == "[ALERT] Festplatte voll auf db01"
    assert innermost.text == "Disk /var on db01 is 100% full."
    assert [(a.filename, a.content) for a in innermost.attachments] == [
        ("db01.log", b"2026-11-20 23:59:59 ERROR disk full on /var\n")
    ]


def test_missing_message_id_is_empty() -> None:
    m = parse_message(mail("missing_message_id.eml"))
    assert m.message_id == ""
    assert m.from_address == "old-scanner@customer.example"
    assert m.text == "Scanned document attached (see shared folder \\\\fileserver\\scans).\n"


def test_crlf_delivery_with_trace_headers_parses_like_the_original() -> None:
    a = parse_message(mail("duplicate_delivery_1.eml"))
    b = parse_message(mail("duplicate_delivery_2.eml"))
    for field in ("message_id", "subject", "from_address", "to", "text"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.text == "Seit dem Update verbindet der VPN-Client nicht mehr (Fehler 809).\nOlga\n"
    assert b.header("delivered-to") == "support@helpdesk.example"
    assert b.header("received").startswith("from mx.klient.example (mx.klient.example")


def test_very_long_and_8bit_headers() -> None:
    m = parse_message(mail("long_headers.eml"))
    words = " ".join(f"Punkt{i:03d}" for i in range(90))
    # Folded over four lines (one fold with a tab); unfolded and single-spaced.
    assert m.subject == f"Re: Sammelmeldung {words[:700]} [Ticket#{NUM}] Störung {words[700:]}"
    assert len(m.subject) > 800
    assert (m.from_name, m.from_address) == ("Łukasz Żółtowski", "lukasz@customer.example")
    assert len(m.to) == 150 and m.to[-1] == "support@helpdesk.example"
    assert len(m.references) == 80 and m.references[-1] == ORIG
    assert m.header("x-very-long") == "x" * 3000


def test_declared_boundary_never_used_is_resplit_on_the_real_one() -> None:
    m = parse_message(mail("broken_boundary.eml"))
    assert m.text == "Beim Login erscheint „Fehler 0x80070005“. Screenshot anbei."
    (shot,) = m.attachments
    assert shot.filename == "screenshot.png"
    assert shot.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert "StartBoundaryNotFoundDefect" in m.defects


def test_unterminated_multipart_keeps_text_and_truncated_attachment() -> None:
    m = parse_message(mail("unterminated_multipart.eml"))
    assert m.text == "Der Fehler tritt nur im Firefox auf."
    (log,) = m.attachments
    assert log.filename == "log.bin"
    assert log.content == bytes(range(48))
    assert "CloseBoundaryNotFoundDefect" in m.defects


def test_multipart_without_boundary_parameter() -> None:
    m = parse_message(mail("missing_boundary_param.eml"))
    assert m.text == "Safari geht auch nicht."
    assert "NoBoundaryInMultipartDefect" in m.defects


def test_multipart_with_no_boundary_anywhere_keeps_the_body_as_text() -> None:
    raw = (b'Subject: x\nContent-Type: multipart/mixed; boundary="q"\n\n'
           b"no boundaries at all, Gr\xc3\xbc\xc3\x9fe\n")
    assert parse_message(raw).text == "no boundaries at all, Grüße\n"


def test_delivery_status_notification() -> None:
    m = parse_message(mail("bounce_dsn.eml"))
    assert m.content_type == "multipart/report"
    assert m.from_address == "mailer-daemon@mx.helpdesk.example"
    assert m.from_name == "Mail Delivery System"
    assert m.text.startswith("This is the mail system at host mx.helpdesk.example.")


def test_message_id_without_angle_brackets_and_folded_in_reply_to() -> None:
    raw = (b"Message-ID: bare-id@x.example\nIn-Reply-To:\n <a@x.example>\n <b@x.example>\n"
           b"Subject: s\n\nbody\n")
    m = parse_message(raw)
    assert m.message_id == "bare-id@x.example"
    assert m.in_reply_to == ("a@x.example", "b@x.example")


def test_encoded_comma_in_display_name_does_not_split_the_address() -> None:
    raw = b"From: =?utf-8?Q?M=C3=BCller=2C_Ana?= <ana@x.example>\nTo: a@b.example\n\nx\n"
    m = parse_message(raw)
    assert (m.from_name, m.from_address) == ("Müller, Ana", "ana@x.example")
    assert m.to == ("a@b.example",)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
        ("=?utf-8?b?R3LDvMOfZQ==?=", "Grüße"),
        ("=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=", "ab"),  # whitespace between words dropped
        ("x =?UTF-8?Q?=C3=A9?= y", "x é y"),
        ("=?iso-8859-1?q?=80_=93quoted=94?=", "€ “quoted”"),  # cp1252 under a latin-1 label
        ("=?ISO-2022-JP?B?GyRCLSEbKEI=?=", "①"),  # NEC row 13 in ISO-2022-JP
        ("=?utf-8*de?Q?Stra=C3=9Fe?=", "Straße"),  # RFC 2231 language suffix
        ("=?bogus-charset?Q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?not base64!?=", "=?UTF-8?B?not base64!?="),
        ("folded\n  line", "folded  line"),
        ("", ""),
    ],
)
def test_decode_header_value(raw: str, decoded: str) -> None:
    assert decode_header_value(raw) == decoded


@pytest.mark.parametrize("depth", [300, 3000])  # 3000 is beyond the interpreter's recursion
def test_deeply_nested_multipart_does_not_crash(depth: int) -> None:
    head = b"Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n"
    body = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1)
                    for i in range(depth))
    raw = head + body + b"--b%d\nContent-Type: text/plain\n\ninnermost\n" % depth
    m = parse_message(raw)
    assert m.subject == "deep"
    assert m.raw == raw
    assert "innermost" in m.text or any(b"innermost" in a.content for a in m.attachments)


def test_stdlib_agrees_on_structure() -> None:
    """Sanity: the fixture files are what they claim (not a parser test)."""
    msg = email.message_from_bytes(mail("nested_forward.eml"))
    assert [p.get_content_type() for p in msg.walk()][:3] == [
        "multipart/mixed", "text/plain", "message/rfc822"
    ]


@pytest.mark.parametrize(("header", "name", "address"), [
    (b"=?utf-8?q?Ana=0D=0ATo:_x@evil.example?= <ana@customer.example>",
     "Ana To: x@evil.example", "ana@customer.example"),
    (b"=?utf-8?q?x@evil.example?= <ana@customer.example>", "x@evil.example",
     "ana@customer.example"),
    (b"=?utf-8?q?Ana=2C_x@evil.example?= <ana@customer.example>", "Ana, x@evil.example",
     "ana@customer.example"),
    (b'"Doe, Jane" <jane@customer.example>', "Doe, Jane", "jane@customer.example"),
    (b"broken <ana@customer.example", "broken", "ana@customer.example"),
])
def test_from_address_is_never_taken_from_an_encoded_word(
    header: bytes, name: str, address: str
) -> None:
    m = parse_message(b"From: " + header + b"\r\nSubject: x\r\n\r\nbody\r\n")
    assert (m.from_name, m.from_address) == (name, address)


@pytest.mark.parametrize(("header", "mailboxes"), [
    (b"a@b.example", [("", "a@b.example")]),
    (b"Ana B. <A@B.Example>", [("Ana B.", "a@b.example")]),
    (b"  Ana   B  <a@b.example>  ", [("Ana B", "a@b.example")]),
    (b"Ana<a@b.example>, <c@d.example>", [("Ana", "a@b.example"), ("", "c@d.example")]),
    (b"a@b.example (Ana B)", [("Ana B", "a@b.example")]),  # the old comment form names
    (b"a@b.example (=?utf-8?q?J=C3=BCrgen?=)", [("J\u00fcrgen", "a@b.example")]),
    (b"O'Neil <o@x.example>, group: a@b.example, c@d.example;",
     [("O'Neil", "o@x.example"), ("", "a@b.example"), ("", "c@d.example")]),
    (b"=?utf-8?q?a?= =?utf-8?q?b?= <ab@x.example>", [("ab", "ab@x.example")]),
    (b"Jos\xc3\xa9 <j@x.example>", [("Jos\u00e9", "j@x.example")]),  # raw 8-bit UTF-8
    (b"no address at all", []),
])
def test_address_forms(header: bytes, mailboxes: list[tuple[str, str]]) -> None:
    m = parse_message(b"From: " + header + b"\nTo: " + header + b"\n\nbody\n")
    assert (m.from_name, m.from_address) == (mailboxes[0] if mailboxes else ("", ""))
    assert m.to == tuple(address for _name, address in mailboxes)


def test_parsed_fields_are_pinned() -> None:
    raw = (b"From: Ana  B. <Ana@Customer.Example>\r\nTo: support@helpdesk.example, "
           b"Bo <bo@x.example>\r\nSubject: Re: [Ticket#1] hi\r\nMessage-ID: <m1@x>\r\n"
           b"In-Reply-To: <p@x>\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\n"
           b"caf\xc3\xa9\r\n")
    m = parse_message(raw)
    assert dataclasses.asdict(m) | {"raw": b"", "headers": {}} == dataclasses.asdict(
        ParsedMessage(raw=b"", message_id="m1@x", subject="Re: [Ticket#1] hi",
                      from_name="Ana B.", from_address="ana@customer.example", reply_to=(),
                      to=("support@helpdesk.example", "bo@x.example"), cc=(),
                      in_reply_to=("p@x",), references=(), text="caf\u00e9\n", html="",
                      attachments=(), headers={}, content_type="text/plain", defects=()))
    assert m.headers["content-type"] == ('text/plain; charset="UTF-8"',)


def _assert_storable(m: ParsedMessage) -> None:
    """Every text field is valid UTF-8 without NUL: what any database takes."""
    texts = [m.message_id, m.subject, m.from_name, m.from_address, m.text, m.html,
             m.content_type, *m.reply_to, *m.to, *m.cc, *m.in_reply_to, *m.references,
             *m.defects, *(a.filename for a in m.attachments),
             *(a.content_type for a in m.attachments),
             *(v for name, values in m.headers.items() for v in (name, *values))]
    for text in texts:
        text.encode("utf-8")  # no surrogate escapes
        assert "\x00" not in text


_MALFORMED = [
    "Content-Type: message/rfc822\n\nFrom: a@b\nSubject: inner\n\nbody\n",
    "Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nStatus: 5.0.0\n",
    "Content-Type: Message/Partial; id=1\n\nbody\n",
    "Content-Type: multipart/mixed\n\n--zz\nContent-Type: text/plain\n\nx\n--zz--\n",
    "Content-Type: MULTIPART/alternative; boundary=zz\n\nno parts\n",
    "From sender Sun Nov 22 10:00:00 2026\nSubject: x\n\nbody\n",
    "Subject: x\nFrom sender Sun Nov 22\nTo: a@b\n\nbody\n",
    " folded first\nSubject: x\n\nbody\n",
    ": no name\nSubject: x\n\nbody\n",
    "Subject: x\nnot a header line\nbody\n",
    "Subject: x\nTo: a@b\n",
    "",
    "\n\nbody",
    "Subject: x\r\n\rbody\r\n",
    "Subject: x\x0bx\x0c\x1c\x85\u2028\n\nbody\x0b\x1c\n",
    "Subject: =?utf-8?b?AA==?= \x00\nFrom: \x00<a\x00@b.example>\nMessage-ID: <\x00@x>\n\n\x00",
    "Content-Type: text/plain; charset*=utf-8''x\n\n\xe9t\xe9\n",
    "Content-Type: text/plain; charset=\u00e9\nContent-Disposition: attachment; "
    "filename*=bogus''%FF%00\n\nx\n",
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\nY2Fmw6k\n",
]


@pytest.mark.parametrize("text", _MALFORMED)
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_malformed_shapes_parse_to_something_storable(text: str, encoding: str) -> None:
    raw = text.encode(encoding, "replace")
    m = parse_message(raw)
    assert m.raw is raw
    _assert_storable(m)


_BITS = ["From: ", "To: ", "Subject: ", "Content-Type: ", "Content-Disposition: ",
         "Content-Transfer-Encoding: ", "Message-ID: ", "References: ", " ", "\t", "\n",
         "\r\n", "\r", "--b", "--b--", "multipart/mixed; boundary=b", "message/rfc822",
         "text/plain; charset=", "utf-8", "iso-2022-jp", "bogus", "base64", "quoted-printable",
         "attachment; filename*=utf-8''%C3%A9", "=?utf-8?q?", "=?x?b?", "?=", "<", ">", "@",
         ",", '"', "(", ")", "a", "\u00e9", "\x00", "\x1b$B", "=E9", "QUJD"]


@settings(max_examples=400, deadline=None)
@given(bits=st.lists(st.sampled_from(_BITS), max_size=60),
       encoding=st.sampled_from(["utf-8", "latin-1", "shift_jis"]))
def test_random_mail_parses_to_something_storable(bits: list[str], encoding: str) -> None:
    m = parse_message("".join(bits).encode(encoding, "replace"))
    _assert_storable(m)
