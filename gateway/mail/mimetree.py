"""The MIME tree of a raw message, with its big bodies left in the raw bytes.

The stdlib parser holds a message as line strings, a joined payload and, for base64, a
newline-free copy at once: 7-8x the message, where a 25 MB attachment may cost the whole
server no more than 4x. So the bodies of big leaf parts are cut out first, each replaced
by a one-line placeholder; `email.message_from_bytes` parses what is left, and a big body
is decoded once, from its slice of the raw bytes, into the one bytes object kept.

Where to cut is found on the raw bytes the way the stdlib parses: each part's header
block (read by the stdlib's header parser) declares its type and boundary, and a body
runs from the blank line to the line end before the next delimiter line. Only the body
of a part with a clean header block and an explicit type other than multipart/* and
message/* is cut. Should the stdlib not find every placeholder as the whole payload of
one part (a broken structure read differently), the message is parsed whole: the tree is
always the one the stdlib makes of the raw bytes, up to its first MAX_PARTS parts,
MAX_HEADER_BYTES of the message's own header block and as much of header fields in all
parts together (hostile shapes: the stdlib keeps each field as objects of its own, 14-16x
their size; the rest stays in the raw message, and a defect says what was not read).
"""

from __future__ import annotations

import binascii
import email
import io
import re
import secrets
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser

BIG_BODY = 64 * 1024  # bodies from this size on are cut out
# The parts read of one message. The stdlib holds each part as objects of its own: tens of
# thousands of tiny parts cost 13x the message in memory and seconds per MB, and each
# would become an attachment row. Past this many, the rest is not read (the raw message,
# stored whole, still has it).
MAX_PARTS = 1000
# The bytes of the message's own header block read; the same for fields past it (hundreds
# of thousands of fields cost 14x the message). Real mail stays far below: Postfix keeps
# at most 100 KB of one field, sendmail 32 KB of all.
MAX_HEADER_BYTES = 1024 * 1024
_BOUNDARY_PARAM = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]+)"|([^\s;"]+))', re.IGNORECASE)
_MAX_HEADER_BLOCK = 64 * 1024
_DASHES = re.compile(rb"--[^\r\n]*")  # a delimiter line if it starts a line
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(\r\n|\n|\r)")
_MESSAGE_TYPE = re.compile(rb"^content-type:[ \t]*message/([a-z0-9.+-]+)",
                           re.IGNORECASE | re.MULTILINE)


class MimeTree:
    """A message parsed by the stdlib; `payload` and `flatten` put the big bodies back."""

    def __init__(self, raw: bytes, big_body: int = BIG_BODY, max_parts: int = MAX_PARTS,
                 max_head: int = MAX_HEADER_BYTES) -> None:
        self.defects: list[str] = []
        head = _head_cut(raw, max_head)
        self.head_cut = head is not None
        if head is not None:
            self.defects.append(f"header block over {max_head} bytes: the fields past it "
                                "were not read (the raw message keeps them)")
            raw = raw[:head[0]] + raw[head[1]:]
        self._unparted = raw  # what the headers-only fallback reads (all parts as text)
        end = _end_of_parts(raw, max_parts, max_head)
        if end is not None:
            self.defects.append(end[1])
        # Cut before that part: a multipart without its close delimiter is a tree all the same.
        self.raw = raw if end is None else raw[:end[0]]
        self._cut: list[memoryview] = []  # the bodies replaced by placeholders, in order
        self._marker = b"ticketgate-cut-" + secrets.token_hex(8).encode() + b"-"
        self._bodies: dict[int, memoryview] = {}  # id(part) -> its body in raw
        self.root = self._parse(big_body)

    def _parse(self, big_body: int) -> Message:
        try:
            cuts = _big_bodies(self.raw, big_body)
            if cuts and (root := self._parse_cut(cuts)) is not None:
                return root
            self._cut, self._bodies = [], {}
            return email.message_from_bytes(self.raw)
        except Exception as exc:  # RecursionError on absurd nesting: the headers only
            self.defects.append(f"unparsable structure: {type(exc).__name__}")
            self._cut, self._bodies = [], {}
            return BytesHeaderParser().parsebytes(self._unparted)

    def _parse_cut(self, cuts: list[tuple[int, int]]) -> Message | None:
        """The tree with `cuts` replaced by placeholders; None if any is not a whole body."""
        view = memoryview(self.raw)
        pieces: list[bytes | memoryview] = []
        pos = 0
        for index, (start, end) in enumerate(cuts):
            pieces += [view[pos:start], self._marker + b"%d" % index]
            self._cut.append(view[start:end])
            pos = end
        pieces.append(view[pos:])
        root = email.message_from_bytes(b"".join(pieces))
        marker = self._marker.decode()
        found: list[int] = []
        for part in root.walk():
            try:
                payload = part.get_payload()
            except Exception:  # 8-bit text under a broken charset: not a placeholder
                continue
            if isinstance(payload, str) and marker in payload:
                index = payload.removeprefix(marker)
                if not index.isdigit():
                    return None  # a placeholder inside other text
                found.append(int(index))
                self._bodies[id(part)] = self._cut[int(index)]
        return root if sorted(found) == list(range(len(cuts))) else None

    def payload(self, part: Message) -> bytes:
        """A leaf part's body, its transfer encoding decoded: `get_payload(decode=True)`."""
        body = self._bodies.get(id(part))
        data = part.get_payload(decode=True) if body is None else _decode(part, body)
        return data if isinstance(data, bytes) else b""

    def flatten(self, part: Message) -> bytes:
        """A part's bytes as the stdlib writes them (line ends as LF), bodies put back."""
        buf = io.BytesIO()
        try:
            BytesGenerator(buf, mangle_from_=False, maxheaderlen=0).flatten(part)
        except Exception:
            return b""
        data = buf.getvalue()
        if self._cut and self._marker in data:
            data = re.sub(re.escape(self._marker) + rb"(\d+)", lambda m: bytes(
                self._cut[int(m.group(1))]).replace(b"\r\n", b"\n").replace(b"\r", b"\n"), data)
        return data


def _decode(part: Message, body: memoryview) -> bytes:
    """What `part.get_payload(decode=True)` gives for `body`, without a str copy of it."""
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if cte == "base64":
        try:
            return binascii.a2b_base64(body)  # skips the line ends; stops after padding
        except binascii.Error:
            pass  # lost padding and such: the stdlib's repairs, below
    elif cte not in ("quoted-printable", "x-uuencode", "uuencode", "uue", "x-uue"):
        return bytes(body)
    scratch = Message()
    scratch["Content-Transfer-Encoding"] = cte
    scratch.set_payload(str(body, "ascii", "surrogateescape"))
    data = scratch.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _head_cut(raw: bytes, most: int) -> tuple[int, int] | None:
    """(end of the last whole line within `most` bytes, start of the blank line) when the
    message's header block is longer than `most` bytes."""
    blank = _BLANK_LINE.search(raw)
    if (blank.start(1) if blank else len(raw)) <= most:
        return None
    # A CR kept without its LF still ends the line for the stdlib.
    keep = max(raw.rfind(b"\n", 0, most), raw.rfind(b"\r", 0, most)) + 1
    return keep, blank.start(1) if blank else len(raw)


def _end_of_parts(raw: bytes, most: int, head_bytes: int) -> tuple[int, str] | None:
    """Where to stop reading parts, and why: at the delimiter line of part `most + 1`, or
    of the part whose header fields pass `head_bytes` for all parts together. A part's
    header fields are its header block, the header blocks of the message/* it holds, and
    the whole body of a message/delivery-status (a list of header blocks). The delimiter
    lines are those of a boundary some Content-Type declares."""
    boundaries = {m.group(1) or m.group(2) for m in _BOUNDARY_PARAM.finditer(raw)}
    if not boundaries:
        return None
    too_many = (f"more than {most} MIME parts: only the first {most} were read (the raw "
                "message keeps them all)")
    too_long = (f"header fields of MIME parts over {head_bytes} bytes: the parts from there "
                "on were not read (the raw message keeps them)")
    parts, budget = 0, head_bytes
    status: tuple[int, int] | None = None  # (delimiter, body) of a delivery-status part
    for line in _DASHES.finditer(raw):
        start = line.start()
        token = line.group()[2:].rstrip()
        closing = token.endswith(b"--") and token[:-2] in boundaries
        if not start or raw[start - 1] not in b"\r\n" or not (closing or token in boundaries):
            continue
        if status is not None:  # a delivery-status body ends at the next delimiter
            budget -= start - status[1]
            if budget < 0:
                return status[0], too_long
            status = None
        if token not in boundaries:  # a close delimiter: no part starts here
            continue
        parts += 1
        if parts > most:
            return start, too_many
        pos = line.end()
        while True:  # the part's header block, then those of the message/* it holds
            blank = _BLANK_LINE.search(raw, pos, pos + budget + 4)
            end = blank.start(1) if blank else len(raw)
            if blank is None and pos + budget + 4 < len(raw):
                return start, too_long
            budget -= end - pos
            if budget < 0:
                return start, too_long
            kind = _MESSAGE_TYPE.search(raw, pos, end)
            if blank is None or kind is None:
                break
            if kind.group(1).lower() == b"delivery-status":
                status = start, blank.end()
                break
            pos = blank.start(1)  # the held message's header block follows the blank line
    if status is not None and len(raw) - status[1] > budget:  # never closed
        return status[0], too_long
    return None


def _big_bodies(raw: bytes, big: int) -> list[tuple[int, int]]:
    """(start, end) in `raw` of every leaf body of `big` bytes or more that can be cut."""
    if len(raw) < big:
        return []
    boundaries: set[bytes] = set()
    cuts: list[tuple[int, int]] = []
    body = _leaf_body(raw, None, boundaries)
    # Where the last body ends: the root's at the end of the message; a part's (in a
    # multipart the message ends in without its close delimiter) before the last line
    # end, which the stdlib takes with the end of the message as for a delimiter line.
    last_end = len(raw)
    last_line_end = 2 if raw.endswith(b"\r\n") else 1 if raw.endswith((b"\n", b"\r")) else 0
    for line in _DASHES.finditer(raw):
        start = line.start()
        if start == 0 or raw[start - 1] not in b"\r\n":
            continue  # not at the start of a line (the first line is the root's headers)
        boundary = line.group().rstrip(b" \t")[2:]
        close = boundary not in boundaries
        if close and not (boundary.endswith(b"--") and boundary[:-2] in boundaries):
            continue
        end = start - 2 if raw.startswith(b"\r\n", start - 2) else start - 1
        if body is not None and end - body >= big:
            cuts.append((body, end))
        body = None if close else _leaf_body(raw, line.end(), boundaries)
        last_end = len(raw) - last_line_end
    if body is not None and last_end - body >= big:
        cuts.append((body, last_end))
    return cuts


def _leaf_body(raw: bytes, line_end: int | None, boundaries: set[bytes]) -> int | None:
    """Where the body of the part whose header block follows `line_end` starts, if that
    part is a leaf to cut; the boundaries its header blocks declare are added."""
    search = start = 0
    if line_end is not None:  # the header block starts on the next line
        search, start = line_end, line_end + (2 if raw.startswith(b"\r\n", line_end) else 1)
    while (blank := _BLANK_LINE.search(raw, search, start + _MAX_HEADER_BLOCK)) is not None:
        head = BytesHeaderParser().parsebytes(raw[start:blank.end()])
        if head.defects or "content-type" not in head:
            return None
        if head.get_content_maintype() == "multipart":
            boundary = head.get_boundary()
            if boundary is not None and boundary.isascii():
                boundaries.add(boundary.encode())
            return None
        if head.get_content_maintype() != "message":
            return blank.end()
        if head.get_content_type() == "message/delivery-status":
            return None  # a list of header blocks, not one message
        search, start = blank.start(1), blank.end()  # the forwarded message's headers
    return None
