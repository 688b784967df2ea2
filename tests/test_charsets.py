"""Charset repair: declared supersets, undeclared 8-bit, ISO-2022-JP extensions, no raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mail.charsets import codec_for, decode_bytes, decode_iso2022jp

EURO_QUOTES = "€ “quoted” – done…"


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("ISO-8859-1", "cp1252"),
        ('"iso-8859-1"', "cp1252"),
        ("us-ascii", "cp1252"),
        ("Shift_JIS", "cp932"),
        ("gb2312", "gb18030"),
        ("ks_c_5601-1987", "cp949"),
        ("utf-8", "utf-8"),
        ("windows-1250", "cp1250"),
        ("no-such-charset", None),
        ("utf\x00-8", None),
        ("", None),
        (None, None),
    ],
)
def test_codec_for(declared: str | None, codec: str | None) -> None:
    assert codec_for(declared) == codec


def test_windows_1252_labelled_latin1_keeps_euro_and_quotes() -> None:
    data = EURO_QUOTES.encode("cp1252")
    assert decode_bytes(data, "iso-8859-1") == EURO_QUOTES


def test_utf8_labelled_latin1_or_ascii_is_read_as_utf8() -> None:
    data = "Grüße – €".encode()
    assert decode_bytes(data, "iso-8859-1") == "Grüße – €"
    assert decode_bytes(data, "us-ascii") == "Grüße – €"


def test_undeclared_8bit_utf8_then_windows_1252() -> None:
    assert decode_bytes("Zoë".encode(), None) == "Zoë"
    assert decode_bytes("André €".encode("cp1252"), None) == "André €"


def test_declared_utf8_that_is_not_falls_back_to_windows_1252() -> None:
    assert decode_bytes("Jørgensen – 5 €".encode("cp1252"), "utf-8") == "Jørgensen – 5 €"


def test_bytes_windows_1252_leaves_undefined_decode_as_latin1_not_replacement() -> None:
    assert decode_bytes(b"a\x81b\x8dc\x9d", None) == "a\x81b\x8dc\x9d"


def test_shift_jis_label_with_nec_and_ibm_extensions() -> None:
    text = "①②③ ㈱ 髙橋 ～"
    assert decode_bytes(text.encode("cp932"), "Shift_JIS") == text


def test_iso_2022_jp_plain() -> None:
    text = "請求書の再発行"
    assert decode_bytes(text.encode("iso2022_jp"), "ISO-2022-JP") == text


def test_iso_2022_jp_with_microsoft_extensions() -> None:
    # ① and ㈱ are NEC row 13 (0x2D21, 0x2D6A): Outlook sends them under ISO-2022-JP.
    data = b"\x1b$B-!-j\x1b(B ok \x1b$B$\"\x1b(B"
    assert decode_iso2022jp(data) == "①㈱ ok あ"
    assert decode_bytes(data, "iso-2022-jp") == "①㈱ ok あ"


def test_iso_2022_jp_halfwidth_katakana_escape() -> None:
    assert decode_iso2022jp(b"\x1b(I6\x1b(B") == "ｶ"


def test_undeclared_iso_2022_jp_is_recognised_by_its_escapes() -> None:
    assert decode_bytes("日本語".encode("iso2022_jp"), None) == "日本語"


def test_wrong_label_for_japanese_falls_back_to_utf8() -> None:
    assert decode_bytes("日本語".encode(), "Shift_JIS") == "日本語"


def test_empty() -> None:
    assert decode_bytes(b"", "utf-8") == ""


@given(st.binary(max_size=300), st.sampled_from(
    [None, "utf-8", "iso-8859-1", "us-ascii", "shift_jis", "iso-2022-jp", "euc-kr",
     "gb2312", "koi8-r", "bogus", "utf-16", "x-unknown"]))
def test_decode_never_raises(data: bytes, declared: str | None) -> None:
    assert isinstance(decode_bytes(data, declared), str)


@given(st.text(max_size=200))
def test_utf8_round_trips_whatever_the_latin_label(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return  # lone surrogates are not UTF-8
    assert decode_bytes(data, None) == text
    assert decode_bytes(data, "iso-8859-1") == text
