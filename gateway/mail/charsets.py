"""Decode text the way mail really arrives, not the way it is labelled.

Mail clients lie about charsets: Windows-1252 text labelled ISO-8859-1, 8-bit text with
no declaration at all, Shift_JIS and ISO-2022-JP using Microsoft's extensions (①, ～,
IBM kanji). We decode with the declared charset's superset where one exists, fall back
to UTF-8 and then Windows-1252, and never raise: a body we cannot decode perfectly is
still better than no ticket.
"""

from __future__ import annotations

import codecs

# Declared name -> the superset real-world senders actually use.
SUPERSETS = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "unknown-8bit": "cp1252",
    "x-unknown": "cp1252",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "euc-jp": "euc_jis_2004",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "big5": "big5hkscs",
}

_ISO2022JP = frozenset({"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004",
                        "iso2022_jp_3", "iso2022_jp_ext"})
_ESC_JIS = (b"\x1b$B", b"\x1b$@", b"\x1b(I")


def _latin1_fallback(err: UnicodeError) -> tuple[str, int]:
    """The five bytes Windows-1252 leaves undefined (0x81, 0x8D, ...) decode as Latin-1."""
    assert isinstance(err, UnicodeDecodeError)
    return err.object[err.start:err.end].decode("latin-1"), err.end


codecs.register_error("ticketgate-latin1", _latin1_fallback)


def codec_for(name: str | None) -> str | None:
    """The Python codec we decode a declared charset with, or None when unknown."""
    if not name:
        return None
    name = name.strip().strip('"').strip("'").lower()
    name = SUPERSETS.get(name, name)
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):  # unknown, or garbage such as an embedded NUL
        return None


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Best-effort decode: declared (superset) charset, then UTF-8, then Windows-1252."""
    if not data:
        return ""
    codec = codec_for(declared)
    if codec in _ISO2022JP or (codec in ("cp1252", None) and _looks_iso2022jp(data)):
        return decode_iso2022jp(data)
    if codec in ("cp1252", None):
        if data.isascii():
            return data.decode("ascii")
        # Undeclared or "ASCII/Latin-1" 8-bit data is UTF-8 more often than not today.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    elif codec is not None:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return data.decode("cp1252", errors="ticketgate-latin1")


def _looks_iso2022jp(data: bytes) -> bool:
    return data.isascii() and any(esc in data for esc in _ESC_JIS)


def decode_iso2022jp(data: bytes) -> str:
    """ISO-2022-JP including Microsoft's CP5022x extensions.

    Python's iso2022_jp refuses NEC row 13 (①, ㈱) and the IBM extension rows that
    Outlook and most Japanese webmail send under this label. The strict codec is tried
    first; otherwise each JIS X 0208 pair is mapped to its Shift_JIS code and the whole
    text decoded as cp932, which has all of those characters.
    """
    for codec in ("iso2022_jp", "iso2022_jp_ext"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    out = bytearray()
    mode = "ascii"
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x1B:
            seq = data[i:i + 3]
            if seq in (b"\x1b$B", b"\x1b$@"):
                mode, i = "jis", i + 3
                continue
            if seq == b"\x1b$(" and data[i + 3:i + 4] in (b"D", b"O", b"Q"):
                mode, i = "jis", i + 4  # JIS X 0212/0213: best effort as 0208
                continue
            if seq in (b"\x1b(B", b"\x1b(J"):
                mode, i = "ascii", i + 3
                continue
            if seq == b"\x1b(I":
                mode, i = "kana", i + 3
                continue
        if b == 0x0E:  # SO: half-width katakana (CP50222)
            mode, i = "kana", i + 1
            continue
        if b == 0x0F:  # SI
            mode, i = "ascii", i + 1
            continue
        if b in (0x0A, 0x0D):  # line ends reset nothing but are never part of a pair
            out.append(b)
            i += 1
            continue
        if mode == "jis" and 0x21 <= b <= 0x7E and i + 1 < n and 0x21 <= data[i + 1] <= 0x7E:
            out += _jis_to_sjis(b, data[i + 1])
            i += 2
            continue
        if mode == "kana" and 0x21 <= b <= 0x5F:
            out.append(b + 0x80)
        else:
            out.append(b)
        i += 1
    return bytes(out).decode("cp932", errors="replace")


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    s2 = j2 + (31 if j2 <= 95 else 32) if j1 & 1 else j2 + 126
    return bytes((s1, s2))
