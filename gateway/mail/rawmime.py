"""Split a large message's MIME structure on its raw bytes, without copying its bodies.

The stdlib feed parser reads a message line by line into str objects (surrogate
escapes for 8-bit bytes) and joins every part's lines into one more str; a base64
attachment is then joined again without newlines and decoded. For a 25 MB message
that is 7-8x the message in Python objects at once. Here the structure is found with
`bytes.find` on the raw message (boundary lines, part and header limits, as offsets)
and only small things are handed to the stdlib parser:

- every part's *header block* (a few hundred bytes) is parsed by `BytesHeaderParser`;
- a part smaller than `SMALL_PART` is parsed whole by `email.message_from_bytes`
  from its own slice, so small text, HTML and nested messages decode exactly as in the
  generic path;
- a large leaf becomes a `RawLeaf`: its headers plus the offsets of its body in the
  raw message; `RawLeaf.payload_bytes` decodes base64 / quoted-printable straight from
  that slice (binascii skips the line ends) into the one bytes object kept as the
  attachment.

The boundary rules are the feed parser's (`email.feedparser`): a delimiter is a line
`--boundary`, optionally `--`, optional blanks, then the line end; an enclosing
boundary ends an inner part; repeated delimiter lines make no empty parts; the line
end before a delimiter belongs to it; the defects it would record are recorded too.
Whatever this splitter does not reproduce exactly (`multipart/digest`, a `message/*`
part of `SMALL_PART` or more, nesting beyond `MAX_DEPTH`, header blocks over 1 MiB)
raises `Unsupported`, and the caller parses the whole message the generic way instead.
"""

from __future__ import annotations

import binascii
import email
import email.message
import quopri
import re
from collections.abc import Iterator
from email import errors
from email.parser import BytesHeaderParser

# Parts below this size are parsed whole by the stdlib (cheap, and exact).
SMALL_PART = 256 * 1024
# Header blocks beyond this are not mail; the generic path deals with them.
MAX_HEADER_BLOCK = 1 << 20
MAX_DEPTH = 40

_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_NL_END = re.compile(r"(\r\n|\r|\n)\Z")  # the feed parser's NLCRE_eol
# The repair `parse._resplit` does on a str payload, on bytes: a `--token` line, at
# a given position (`_BOUNDARY_AT.match`) or anywhere after it.
_BOUNDARY_AT = re.compile(rb"--([ -~]{1,200}?)[ \t]*\r?$", re.MULTILINE)
_BOUNDARY_LINE = re.compile(rb"^" + _BOUNDARY_AT.pattern, re.MULTILINE)


class Unsupported(Exception):
    """A structure this splitter does not reproduce exactly: use the generic parser."""


class RawLeaf(email.message.Message):
    """A leaf part parsed from its header block; the body stays in the raw message."""

    def __init__(self, raw: bytes, start: int, end: int) -> None:
        super().__init__()
        self.raw_body = memoryview(raw)[start:end]

    def payload_bytes(self) -> bytes:
        """What `get_payload(decode=True)` would return, decoded from the raw slice."""
        body = self.raw_body
        cte = str(self.get("content-transfer-encoding", "")).lower()
        if cte == "base64":
            try:
                return binascii.a2b_base64(body)  # ignores CR/LF; stops after padding
            except binascii.Error:
                return self._stdlib_decode()  # padding or length repairs, as the stdlib
        if cte == "quoted-printable":
            return quopri.decodestring(body)
        if cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
            return self._stdlib_decode()
        return bytes(body)

    def _stdlib_decode(self) -> bytes:
        """The exact stdlib decode for the rare malformed body (costs a str copy)."""
        part = email.message.Message()
        part["Content-Transfer-Encoding"] = str(self.get("content-transfer-encoding", ""))
        part.set_payload(bytes(self.raw_body).decode("ascii", "surrogateescape"))
        data = part.get_payload(decode=True)
        self.defects.extend(part.defects)
        return data if isinstance(data, bytes) else b""


def split_message(raw: bytes, small_part: int = SMALL_PART) -> email.message.Message:
    """The message tree of `raw`; leaves of `small_part` bytes or more stay `RawLeaf`s."""
    return _part(raw, 0, len(raw), 0, small_part, is_root=True)


def _headers(raw: bytes, start: int, end: int) -> tuple[email.message.Message, int, bool]:
    """(headers, body start, separator missing) of the part in raw[start:end]."""
    pos = start
    missing = False
    body = end
    while pos < end:
        m = _LINE_END.search(raw, pos, end)
        line_end = m.end() if m else end
        if not _HEADER_LINE.match(raw, pos, line_end):
            if raw[pos] in b"\r\n":
                body = line_end  # the blank line: thrown away
            else:
                body = pos
                missing = True
            break
        pos = line_end
        if pos - start > MAX_HEADER_BLOCK:
            raise Unsupported("header block too large")
    headers = BytesHeaderParser().parsebytes(raw[start:pos])
    return headers, max(body, pos), missing


def _part(raw: bytes, start: int, end: int, depth: int, small: int, is_root: bool = False
          ) -> email.message.Message:
    if depth > MAX_DEPTH:
        raise Unsupported("nesting")
    if not is_root and end - start < small:
        whole = email.message_from_bytes(raw[start:end])
        _strip_last(whole)
        return whole
    head, body, missing = _headers(raw, start, end)
    if head.get_content_maintype() == "message" or head.get_content_type() == "multipart/digest":
        raise Unsupported(head.get_content_type())
    if head.get_content_maintype() == "multipart":
        part = _multipart(raw, head, body, end, depth, small, is_root)
    else:
        part = RawLeaf(raw, body, end if is_root else _strip_eol(raw, body, end))
        part._headers = head._headers
        part._unixfrom = head._unixfrom
        part.defects.extend(head.defects)
    if missing:
        part.defects.append(errors.MissingHeaderBodySeparatorDefect())
    return part


def _delimiters(raw: bytes, sep: bytes, start: int, end: int
                ) -> Iterator[tuple[int, int, bool]]:
    """(line start, line end, is close) of each delimiter line of `sep` in the region."""
    pos = raw.find(sep, start, end)
    while pos >= 0:
        after = pos + len(sep)
        if pos == start or raw[pos - 1] in b"\r\n":
            q = after
            close = raw.startswith(b"--", q, end)
            if close:
                q += 2
            while q < end and raw[q] in b" \t":
                q += 1
            if q == end or raw[q] in b"\r\n":
                if raw.startswith(b"\r\n", q, end):
                    q += 2
                elif q < end:
                    q += 1
                yield pos, q, close
                after = q
        pos = raw.find(sep, after, end)


def _strip_last(part: email.message.Message) -> None:
    """Drop the line end before the next delimiter where the feed parser drops it.

    That is in the last message it created in the part (for a forwarded message, the
    inner one's): a multipart's epilogue, else its payload.
    """
    while part.get_content_maintype() != "multipart" and isinstance(
            part._payload, list) and part._payload:
        part = part._payload[-1]
    if part.get_content_maintype() == "multipart":
        if part.epilogue == "":
            part.epilogue = None
        elif part.epilogue is not None:
            part.epilogue = _NL_END.sub("", part.epilogue, count=1)
    elif isinstance(part._payload, str):
        part._payload = _NL_END.sub("", part._payload, count=1)


def _strip_eol(raw: bytes, start: int, end: int) -> int:
    """`end` without the line end just before it (it belongs to the next delimiter)."""
    if end - start >= 2 and raw.startswith(b"\r\n", end - 2, end):
        return end - 2
    if end > start and raw[end - 1] in b"\r\n":
        return end - 1
    return end


def _multipart(raw: bytes, head: email.message.Message, start: int, end: int, depth: int,
               small: int, is_root: bool = False, repair: bool = True
               ) -> email.message.Message:
    part = email.message.Message()
    part._headers = head._headers
    part._unixfrom = head._unixfrom
    part.defects.extend(head.defects)
    # FeedParser.close() flags a root multipart left without parts.
    unsplit = [errors.MultipartInvariantViolationDefect()] if is_root else []
    boundary = head.get_boundary()
    if boundary is None:
        part.defects += [errors.NoBoundaryInMultipartDefect(), *unsplit]
        return _repaired(raw, part, None, start, end, depth, small)
    cte = str(head.get("content-transfer-encoding", "8bit")).lower()
    if cte not in ("7bit", "8bit", "binary"):
        part.defects.append(errors.InvalidMultipartContentTransferEncodingDefect())
    try:
        sep = b"--" + boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError as exc:  # non-ASCII boundary parameter (RFC 2231)
        raise Unsupported("boundary") from exc
    delims = _delimiters(raw, sep, start, end)
    current = next(delims, None)
    if current is None or current[2]:
        # Never opened: the stdlib keeps the text before the close delimiter (or all).
        part.defects += [errors.StartBoundaryNotFoundDefect(), *unsplit]
        stop = current[0] if current else end
        if not repair:  # a repaired multipart is not repaired again (parse._resplit)
            part.set_payload(raw[start:stop].decode("ascii", "surrogateescape"))
            return part
        return _repaired(raw, part, boundary, start, stop, depth, small)
    children: list[email.message.Message] = []
    while True:
        following = next(delims, None)
        while following is not None and following[0] == current[1]:
            current, following = following, next(delims, None)  # no empty parts
        child_end = following[0] if following else end
        children.append(_part(raw, current[1], child_end, depth + 1, small))
        if following is None:
            part.defects.append(errors.CloseBoundaryNotFoundDefect())
            break
        if following[2]:
            break
        current = following
    part.set_payload(children)
    return part


def _repaired(raw: bytes, part: email.message.Message, declared: str | None,
              start: int, end: int, depth: int, small: int) -> email.message.Message:
    """`parse._resplit` on bytes: re-split on the first `--token` line, if any."""
    # (`^` does not match at a search's start position unless a line starts there.)
    found = _BOUNDARY_AT.match(raw, start, end) or _BOUNDARY_LINE.search(raw, start, end)
    boundary = found.group(1).decode("ascii").removesuffix("--") if found else ""
    if not boundary.strip() or boundary == declared:
        part.set_payload(raw[start:end].decode("ascii", "surrogateescape"))
        return part
    head = BytesHeaderParser().parsebytes(
        f'Content-Type: {part.get_content_type()}; boundary="{boundary}"\n\n'.encode())
    repaired = _multipart(raw, head, start, end, depth + 1, small, repair=False)
    if not isinstance(repaired.get_payload(), list):
        part.set_payload(raw[start:end].decode("ascii", "surrogateescape"))
        return part
    # What `parse._walk` does with the stdlib tree: walk the repaired multipart.
    part.set_payload([repaired])
    return part
