"""Decode text the way mail really arrives, not the way it is labelled.

Mail clients lie about charsets: Windows-1252 text labelled ISO-8859-1, 8-bit text with
no declaration at all, Shift_JIS using Microsoft's extensions. We decode with the
declared charset's superset where one exists, fall back to UTF-8 and then Windows-1252,
and never raise: a body we cannot decode perfectly is still better than no ticket.
"""

from __future__ import annotations

import codecs

# Declared name -> the superset real-world senders actually use.
SUPERSETS = {
    "iso-8859-1": "cp1252",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-9": "cp1254",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "euc-jp": "euc_jis_2004",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "tis-620": "cp874",
    "windows-874": "cp874",
}


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().strip('"').lower()
    name = SUPERSETS.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Best-effort decode: declared (superset) charset, then UTF-8, then Windows-1252."""
    if not data:
        return ""
    codec = _codec(declared)
    if codec in ("cp1252",) and _is_ascii(data):
        return data.decode("ascii")
    if codec in ("cp1252", None):
        # Undeclared or "ASCII/Latin-1" 8-bit data is UTF-8 more often than not today.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return data.decode("cp1252", errors="replace")


def _is_ascii(data: bytes) -> bool:
    return data.isascii()
