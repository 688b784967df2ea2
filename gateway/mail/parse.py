"""Turn raw message bytes into a `ParsedMessage`: decoded headers, text, attachments.

What parses what, and why:

1. The message tree. Up to `LARGE_MESSAGE` bytes, mail-parser's guarded entry point
   (`MailParser._parse_guarded`, which turns a crafted nesting's RecursionError into its
   own error) builds it with the stdlib parser over the raw bytes. Above that size
   `rawmime.split_message` finds the MIME structure on the raw bytes: header blocks and
   parts under 256 KiB still go through the stdlib parser, but big leaves (a 25 MB
   base64 attachment) stay slices of the raw message and are decoded once, straight
   into the attachment. The stdlib feed parser holds such a message as line strings, a
   joined payload and a newline-free base64 copy at once: 7-8x the message, where
   issue 3 allows the whole server 4x. What the splitter does not reproduce exactly
   (multipart/digest, a big message/rfc822 part, absurd nesting) takes the first way.
2. Defects. mail-parser walks the tree and collects every part's defect categories
   (`_StructureParser`). Its own extraction (bodies, attachments re-encoded to base64,
   address/date/Received diagnostics, two result dicts) is skipped: we decode all of
   that ourselves, below, and it cost ~3/4 of the parsing time.
3. Everything else is decoded here, from the raw header values and part payloads,
   because real mail needs repairs that a strict decoder refuses:

   - RFC 2047 encoded words (Q and B) are decoded with `charsets.decode_bytes`, so a
     word labelled Shift_JIS or ISO-2022-JP that uses Microsoft's extensions (①, 髙)
     still decodes, and one labelled ISO-8859-1 that is really Windows-1252 keeps its €
     and “”;
   - undeclared 8-bit header bytes (raw UTF-8 or Latin-1 in Subject, From or a
     filename) are decoded as UTF-8, else Windows-1252, instead of becoming U+FFFD;
   - attachment names come from RFC 2231 parameters (with continuations and charsets),
     encoded words in `filename=`/`name=` (Outlook, Gmail) or raw 8-bit bytes;
   - a multipart whose declared boundary never occurs (or that declares none) is
     re-split on the boundary its body actually uses, so its text is not lost;
   - a nested `message/rfc822` (a forward as attachment) is kept whole as an `.eml`
     attachment named after its subject.

Parsing never raises on malformed input: what cannot be understood is left empty, and
the raw bytes are always kept by the caller.
"""

from __future__ import annotations

import email
import email.message
import email.utils
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.generator import BytesGenerator
from email.header import Header, decode_header
from typing import Any

import mailparser

from gateway.mail.charsets import decode_bytes
from gateway.mail.htmltext import html_to_text
from gateway.mail.rawmime import SMALL_PART, RawLeaf, Unsupported, split_message

log = logging.getLogger("ticketgate.parse")
MSGID_RE = re.compile(r"<([^<>\s]+)>")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BOUNDARY_LINE = re.compile(r"^--([ -~]{1,200}?)[ \t]*\r?$", re.MULTILINE)
# Nesting deeper than this is not mail, it is an attack on the parser.
MAX_DEPTH = 40
# Above this size the MIME structure is split on the raw bytes (see the module docstring).
LARGE_MESSAGE = 1 << 20

# mail-parser logs a warning for every part type it does not render ("mixed not
# handled"); on the pipe that would land in the MTA's log for ordinary mail.
logging.getLogger("mailparser").addHandler(logging.NullHandler())
logging.getLogger("mailparser").propagate = False


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class ParsedMessage:
    """What the rest of the intake needs to know about a message, already decoded."""

    raw: bytes
    message_id: str  # without angle brackets; "" when the message has none
    subject: str
    from_name: str
    from_address: str
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[Attachment, ...]
    # Header names lower-cased -> list of decoded values, in message order.
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    content_type: str = "text/plain"
    defects: tuple[str, ...] = ()

    def header(self, name: str) -> str:
        """First value of a header, decoded, or ''."""
        values = self.headers.get(name.lower(), ())
        return values[0] if values else ""

    def has_header(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def from_domain(self) -> str:
        return self.from_address.rpartition("@")[2].lower()


class _StructureParser(mailparser.MailParser):  # type: ignore[misc]
    """mail-parser's guarded parse and defect walk, without its own extraction."""

    def parse(self) -> _StructureParser:
        self._defects: list[Any] = []
        self._defects_categories: set[str] = set()
        self._has_defects = False
        if self.message is not None:
            for part in self.message.walk():
                self._append_defects(part, part.get_content_type())
        return self


def _tree(raw: bytes, defects: list[str], split_above: int | None, whole_parts_below: int
          ) -> email.message.Message:
    """The message tree: split on the raw bytes when large, else the stdlib's."""
    if split_above is not None and len(raw) > split_above:
        try:
            msg = split_message(raw, whole_parts_below)
            defects.extend(sorted(_StructureParser(msg).defects_categories))
            return msg
        except (Unsupported, RecursionError):
            pass  # a structure the splitter does not reproduce: the generic path
        except Exception:  # a bug in the splitter must not cost the message
            log.exception("raw MIME splitter failed; parsing generically")
    simple = _simple_tree(raw)
    if simple is not None:
        return simple  # no defects, nothing nested: what mail-parser would add is nothing
    try:
        mp = _StructureParser._parse_guarded(lambda: email.message_from_bytes(raw))
        defects.extend(sorted(mp.defects_categories))
        return mp.message  # type: ignore[no-any-return]
    except Exception as exc:  # mail-parser gave up (e.g. absurd nesting): stdlib alone
        defects.append(f"mailparser: {type(exc).__name__}")
    try:
        return email.message_from_bytes(raw)
    except Exception:  # RecursionError and friends: headers only, body as text
        head, _sep, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        msg = email.message_from_bytes(head + b"\n\n")
        msg.set_payload(body.decode("utf-8", "surrogateescape"))
        defects.append("unparsable structure")
        return msg


# What `email.feedparser` takes for a header line (its `headerRE`), less the cases
# it treats specially: a `From ` envelope line and a line starting with ":".
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]+:|[\t ]")
_LINE_END = re.compile(r"\r\n|\r|\n")


def _simple_tree(raw: bytes) -> email.message.Message | None:
    """The tree `email.message_from_bytes` builds, for a message without parts; or None.

    Most mail is one text part with well-formed headers and a blank line after them. For
    that the stdlib's feed parser (line by line, ~100 µs for 4 KB) produces a Message
    whose headers are its header lines (compat32's `header_source_parse`) and whose
    payload is the rest of the text. This builds the same Message directly; anything
    the parser would treat differently (a multipart or message/* type, a defect, a
    `From ` line, no blank line) returns None, for the parser.
    """
    text = raw.decode("ascii", "surrogateescape")  # what BytesParser does
    msg = email.message.Message()
    source_parse = msg.policy.header_source_parse
    fields: list[list[str]] = []
    pos = 0
    while True:
        end = _LINE_END.search(text, pos)
        if end is None:
            return None  # no blank line: the parser's body-without-separator handling
        if end.start() == pos:
            break  # the blank line after the headers
        line = text[pos:end.end()]
        if not _HEADER_LINE.match(line):
            return None
        if line[0] in " \t":
            if not fields:
                return None  # a continuation first: a defect
            fields[-1].append(line)
        else:
            fields.append([line])
        pos = end.end()
    for lines in fields:
        msg.set_raw(*source_parse(lines))
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(text[end.end():])
    return msg


def parse_message(
    raw: bytes, *, split_above: int | None = LARGE_MESSAGE, whole_parts_below: int = SMALL_PART
) -> ParsedMessage:
    """Parse `raw`. Messages larger than `split_above` bytes (None: none) are split on
    their raw bytes, where parts under `whole_parts_below` bytes are parsed whole. Every
    way gives the same result (tests/test_parse_memory.py)."""
    defects: list[str] = []
    msg = _tree(raw, defects, split_above, whole_parts_below)
    headers, raw_headers = _headers(msg)
    from_name, from_address = _first_address(raw_headers.get("from", []))
    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[Attachment] = []
    try:
        _walk(msg, text_parts, html_parts, attachments, 0)
    except Exception as exc:  # a structure nothing else survives: the body as text
        defects.append(f"unwalkable structure: {type(exc).__name__}")
        body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
        text_parts, html_parts = [decode_bytes(body, None)], []
    html = _lf("\n".join(html_parts))
    text = _lf("\n".join(t for t in text_parts if t.strip()))
    if not text.strip() and html:
        text = html_to_text(html)
    defects.extend(type(d).__name__ for d in msg.defects)
    try:
        content_type = msg.get_content_type()
    except Exception:
        content_type = "text/plain"
    return ParsedMessage(
        raw=raw,
        message_id=_scrub(_first_msgid(_first(raw_headers, "message-id"))),
        subject=_scrub(_clean(decode_header_value(_first(raw_headers, "subject")))),
        from_name=_scrub(from_name),
        from_address=_scrub(from_address),
        reply_to=_addresses(raw_headers.get("reply-to", [])),
        to=_addresses(raw_headers.get("to", [])),
        cc=_addresses(raw_headers.get("cc", [])),
        in_reply_to=_msgids(raw_headers.get("in-reply-to", [])),
        references=_msgids(raw_headers.get("references", [])),
        text=_scrub(text),
        html=_scrub(html),
        attachments=tuple(
            Attachment(_scrub(a.filename), _scrub(a.content_type), a.content)
            for a in attachments
        ),
        headers=headers,
        content_type=_scrub(content_type),
        defects=tuple(dict.fromkeys(defects)),
    )


def _scrub(value: str) -> str:
    """Text any database takes: no surrogate escapes (raw 8-bit), no NUL characters."""
    if not value.isascii() and _has_surrogates(value):
        value = decode_bytes(value.encode("utf-8", "surrogateescape"), None)
    return value.replace("\x00", "") if "\x00" in value else value


# -- headers -------------------------------------------------------------------------


def decode_header_value(value: Any) -> str:
    """A raw header value as text: 8-bit bytes repaired, encoded words decoded, unfolded.

    Never raises. Adjacent encoded words are joined without the whitespace between
    them (RFC 2047 6.2), so a word split in the middle of a ticket number still reads
    as one number.
    """
    if value is None:
        return ""
    if isinstance(value, Header):
        value = str(value)
    value = str(value)
    if _has_surrogates(value):
        # compat32 keeps undeclared 8-bit header bytes as surrogate escapes.
        value = decode_bytes(value.encode("utf-8", "surrogateescape"), None)
    if "\n" in value:
        value = _FOLD.sub("", value)
    if "=?" not in value:
        return value
    try:
        chunks = decode_header(value)
    except (HeaderParseError, ValueError, LookupError, UnicodeError):
        return value
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            out.append(decode_bytes(chunk, charset.partition("*")[0]))
    return "".join(out)


def _has_surrogates(value: str) -> bool:
    return not value.isascii() and any(0xDC80 <= ord(c) <= 0xDCFF for c in value)


def _raw_values(msg: email.message.Message, name: str) -> list[str]:
    """Every raw value of header `name` (compat32 keeps them as received, 8-bit included)."""
    name = name.lower()
    return [str(v) for k, v in msg.raw_items() if k.lower() == name]


def _raw_header(msg: email.message.Message, name: str) -> str:
    values = _raw_values(msg, name)
    return values[0] if values else ""


def _first(raw_headers: dict[str, list[str]], name: str) -> str:
    values = raw_headers.get(name)
    return values[0] if values else ""


def _first_msgid(value: str) -> str:
    found = MSGID_RE.findall(value)
    if found:
        return found[0]
    return _clean(decode_header_value(value))[:900]


def _msgids(raw_values: list[str]) -> tuple[str, ...]:
    ids: list[str] = []
    for value in raw_values:
        ids.extend(_scrub(i) for i in MSGID_RE.findall(_FOLD.sub(" ", value)))
    return tuple(dict.fromkeys(i for i in ids if i))


def _clean(value: str) -> str:
    """Fold whitespace (folded headers, stray CR/LF/tabs) into single spaces."""
    return " ".join(value.split())


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _headers(msg: email.message.Message
             ) -> tuple[dict[str, tuple[str, ...]], dict[str, list[str]]]:
    """(decoded values by scrubbed lower-case name, raw values by lower-case name).

    One pass for both: the raw values are what `_raw_values` returns for each name.
    """
    out: dict[str, list[str]] = {}
    raw: dict[str, list[str]] = {}
    for key, value in msg.raw_items():
        name = key.lower()
        raw.setdefault(name, []).append(str(value))
        out.setdefault(_scrub(name), []).append(_scrub(_clean(decode_header_value(value))))
    return {k: tuple(v) for k, v in out.items()}, raw


def _parsed_addresses(raw_values: list[str]) -> list[tuple[str, str]]:
    # Decode 8-bit bytes first but leave encoded words for after address parsing, so
    # an encoded comma or quote in a display name cannot split an address.
    values = []
    for raw in raw_values:
        if _has_surrogates(raw):
            raw = decode_bytes(raw.encode("utf-8", "surrogateescape"), None)
        values.append(_FOLD.sub("", raw))
    out: list[tuple[str, str]] = []
    for value in values:
        if "=?" not in value:
            # Without encoded words getaddresses is right, and 7x cheaper than the
            # strict parser; with them, only the strict parser keeps names and addresses apart.
            simple = _simple_addresses(value)
            out += _legacy_addresses(value) if simple is None else simple
            continue
        modern = _modern_addresses(value)
        if not modern:
            out += _legacy_addresses(value)
            continue
        if any(not n for n, _a in modern):
            # `addr (Full Name)`: the old comment form names the sender; keep that name.
            legacy = dict((a, n) for n, a in _legacy_addresses(value) if n)
            modern = [(n or legacy.get(a, ""), a) for n, a in modern]
        out += modern
    return out


def _modern_addresses(value: str) -> list[tuple[str, str]]:
    """The RFC 5322 parser behind `email.headerregistry`: encoded words stay inside the
    display name, so `=?utf-8?q?x@evil?= <ana@example>` is ana@example, never x@evil.

    Its public wrapper (`policy.default.header_factory`) raises when a display name
    decodes to CR/LF, so the parser is called directly; `_legacy_addresses` remains the
    fallback should it fail or move.
    """
    try:
        from email._header_value_parser import get_address_list

        address_list, _rest = get_address_list(value)
        mailboxes = [(m.display_name or "", m.addr_spec or "")
                     for a in address_list.addresses for m in a.all_mailboxes]
    except Exception:
        return []
    return [(_scrub(_clean(n)), _scrub(a.strip().lower())) for n, a in mailboxes if "@" in a]


def _legacy_addresses(value: str) -> list[tuple[str, str]]:
    """`getaddresses` as a fallback for what the strict parser finds nothing in."""
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:
        return []
    return [(_scrub(_clean(decode_header_value(n))), _scrub(a.strip().lower()))
            for n, a in pairs if "@" in a]


# `Name <local@domain>` or `local@domain`, nothing getaddresses would read otherwise:
# dot-atoms only, and a display name without quotes, comments, specials or controls.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*"
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:({_ADDR_SPEC})|([^<>@,\"()\[\]:;\\\x00-\x08\x0a-\x1f\x7f]*)<({_ADDR_SPEC})>)[ \t]*")


def _simple_addresses(value: str) -> list[tuple[str, str]] | None:
    """`_legacy_addresses(value)` for a plain comma-separated list, or None.

    getaddresses reads a value character by character (~25 µs for one address); for
    these forms its result is known: the address as written, the display name's words.
    """
    out: list[tuple[str, str]] = []
    for piece in value.split(","):
        found = _SIMPLE_ADDRESS.fullmatch(piece)
        if found is None:
            return None
        bare, name, address = found.groups()
        if bare is not None:
            out.append(("", _scrub(bare.lower())))
        else:
            out.append((_scrub(_clean(name)), _scrub(address.lower())))
    return out


def _addresses(raw_values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for _n, a in _parsed_addresses(raw_values)))


def _first_address(raw_values: list[str]) -> tuple[str, str]:
    pairs = _parsed_addresses(raw_values)
    return pairs[0] if pairs else ("", "")


# -- bodies and attachments --------------------------------------------------------------


def _is_attachment(part: email.message.Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    return disposition == "attachment" or bool(_filename(part))


def _walk(
    part: email.message.Message,
    text: list[str],
    html: list[str],
    attachments: list[Attachment],
    depth: int,
) -> None:
    ctype = part.get_content_type()
    if depth > MAX_DEPTH:  # absurd nesting: keep the leaves, flat, without recursing
        try:
            leaves = [p for p in part.walk() if not p.is_multipart()]
        except RecursionError:
            leaves = []
        for leaf in leaves:
            if leaf.get_content_maintype() == "text" and not _is_attachment(leaf):
                text.append(_decode_text_part(leaf))
            else:
                attachments.append(_attachment(leaf))
        return
    if ctype == "message/rfc822" or (ctype.startswith("message/") and _is_attachment(part)):
        attachments.append(_message_attachment(part))
        return
    if ctype.startswith("multipart/"):
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, email.message.Message):
                    _walk_part(sub, text, html, attachments, depth + 1)
            return
        repaired = _resplit(part)
        if repaired is not None:
            _walk(repaired, text, html, attachments, depth + 1)
        else:  # no usable boundary at all: keep what is there as text
            raw_body = getattr(part, "_payload", None)
            body = decode_bytes(raw_body.encode("utf-8", "surrogateescape"), None) if (
                isinstance(raw_body, str)) else ""
            if body.strip():
                text.append(body)
        return
    if part.is_multipart():  # message/* other than rfc822 with a parsed payload
        for sub in part.get_payload():
            _walk_part(sub, text, html, attachments, depth + 1)
        return
    # A simple part can name no file, and its charset is known: what the two calls give.
    simple = _simple_content_type(part)
    if ctype.split("/")[0] != "text" or (simple is None and _is_attachment(part)):
        attachments.append(_attachment(part))
        return
    body = (_decode_text_part(part) if simple is None
            else decode_bytes(_payload_bytes(part), simple[1]))
    if ctype == "text/html":
        html.append(body)
    else:
        text.append(body)


def _walk_part(
    part: email.message.Message,
    text: list[str],
    html: list[str],
    attachments: list[Attachment],
    depth: int,
) -> None:
    """One sub-part; if it is beyond repair it becomes an attachment of its raw bytes."""
    try:
        _walk(part, text, html, attachments, depth)
    except RecursionError:
        raise
    except Exception:
        attachments.append(Attachment("", "application/octet-stream", _flatten(part)))


def _resplit(part: email.message.Message) -> email.message.Message | None:
    """Re-parse a multipart whose declared boundary does not occur in its body.

    Senders (and broken gateways) declare one boundary and use another, or declare
    none. The first line that looks like `--token` names the boundary really used.
    """
    # get_payload() would decode a string payload's 8-bit bytes as US-ASCII with
    # U+FFFD; the stored payload keeps them as surrogate escapes, i.e. the raw bytes.
    payload = getattr(part, "_payload", None)
    if not isinstance(payload, str):
        return None
    found = _BOUNDARY_LINE.search(payload)
    if found is None:
        return None
    boundary = found.group(1).removesuffix("--")
    if not boundary.strip() or boundary == part.get_boundary():
        return None
    body = payload.encode("utf-8", "surrogateescape")
    head = (f'Content-Type: {part.get_content_type()}; boundary="{boundary}"\n\n').encode()
    try:
        repaired = email.message_from_bytes(head + body)
    except Exception:
        return None
    return repaired if isinstance(repaired.get_payload(), list) else None


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SIMPLE_CONTENT_TYPE = re.compile(
    rf"[ \t]*({_TOKEN}/{_TOKEN})[ \t]*"
    rf"(?:;[ \t]*(?i:charset)=(?:\"({_TOKEN})\"|({_TOKEN}))[ \t]*)?")


def _simple_content_type(part: email.message.Message) -> tuple[str, str | None] | None:
    """(content type, charset) of a part whose headers cannot name a file, or None.

    `get_content_charset` and `_filename` each parse the parameters (RFC 2231,
    quoting) with `get_param`, ~10 µs apiece. A part without Content-Disposition whose
    Content-Type is `type/subtype` with at most a plain charset has no file name, and
    its charset is that value, lower-cased, as `get_content_charset` returns it.
    """
    if "content-disposition" in part:
        return None
    value = part.get("content-type")
    if value is None:
        return part.get_default_type(), None
    if not isinstance(value, str) or not value.isascii():
        return None
    found = _SIMPLE_CONTENT_TYPE.fullmatch(value)
    if found is None:
        return None
    ctype, quoted, bare = found.groups()
    charset = quoted or bare
    return ctype.lower(), charset.lower() if charset else None


def _decode_text_part(part: email.message.Message) -> str:
    data = _payload_bytes(part)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(data, charset)


def _payload_bytes(part: email.message.Message) -> bytes:
    if isinstance(part, RawLeaf):
        return part.payload_bytes()
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = getattr(part, "_payload", None)  # undecoded: get_payload() would decode
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    if isinstance(payload, list):
        return b"".join(_flatten(p) for p in payload if isinstance(p, email.message.Message))
    return b""


def _filename(part: email.message.Message) -> str:
    """The attachment name: RFC 2231, encoded words, or raw 8-bit, decoded; '' if none."""
    value: Any = None
    try:
        source = part
        raw = [v for k, v in part.raw_items()
               if k.lower() in ("content-disposition", "content-type")]
        if any(_has_surrogates(str(v)) for v in raw):
            # Re-read the two headers with their 8-bit bytes decoded to text.
            source = email.message.Message()
            for k, v in part.raw_items():
                if k.lower() in ("content-disposition", "content-type"):
                    source[k] = decode_header_value(v)
        value = source.get_param("filename", None, "content-disposition")
        if value is None:
            value = source.get_param("name", None, "content-type")
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded latin-1 text)
        charset, _lang, text = value
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            return _clean(text)
        return _clean(decode_bytes(data, charset or "utf-8"))
    return _clean(decode_header_value(email.utils.unquote(str(value))))


def _attachment(part: email.message.Message) -> Attachment:
    name = _filename(part)
    if not name:
        cid = str(part.get("Content-ID", "") or "").strip().strip("<>")
        name = _safe_filename(cid) if cid else ""
    return Attachment(filename=name, content_type=part.get_content_type(),
                      content=_payload_bytes(part))


def _flatten(msg: email.message.Message) -> bytes:
    """A message's bytes as parsed, without refolding its headers."""
    buf = io.BytesIO()
    try:
        BytesGenerator(buf, mangle_from_=False, maxheaderlen=0).flatten(msg)
    except Exception:
        return b""
    return buf.getvalue()


def _message_attachment(part: email.message.Message) -> Attachment:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, email.message.Message):
        content = _flatten(inner)
        subject = _clean(decode_header_value(_raw_header(inner, "subject")))
    else:
        content = _payload_bytes(part)
        subject = ""
    name = _filename(part) or f"{_safe_filename(subject or 'forwarded message')}.eml"
    return Attachment(filename=name, content_type="message/rfc822", content=content)


def _safe_filename(value: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]+", "_", value).strip()[:120]
