"""Find and render auto-response templates in a sandbox.

Admins edit the templates, so they run in jinja2's `SandboxedEnvironment` (no access to
Python internals) with `StrictUndefined` (a typo is an error, not an empty string), and
only the HTML parts are autoescaped. Templates receive plain dicts, never ORM objects.

Layout: `<dir>/<set>/<language>/<event>.txt` and an optional `<event>.html` beside it.
The set is chosen per customer id, then customer domain (`[templates] overrides`), then the
queue's `templates`, then "default"; a file missing from the chosen set or language is
taken from the "default" set and from English, and finally from the templates shipped with
ticketgate (the ones `ticketgate init` copies), which are also used when `[templates] dir`
does not exist. jinja2 reloads a template whose file changed (`auto_reload`), so edits
show up at the next answer without a reload.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway

if TYPE_CHECKING:
    import jinja2

EVENTS = ("new-ticket", "follow-up", "reject", "new-ticket-rejected", "agent-notification")
DEFAULT_SET = "default"
FALLBACK_LANGUAGE = "en"
PACKAGED_DIR = Path(gateway.__file__).parent / "starter" / "templates"


class TemplateError(Exception):
    """A template that does not exist, does not parse or fails to render, with its place."""

    def __init__(self, message: str, filename: str = "", lineno: int | None = None) -> None:
        self.filename, self.lineno = filename, lineno
        where = f"{filename}:{lineno}: " if filename and lineno else f"{filename}: " if filename \
            else ""
        super().__init__(f"{where}{message}")


@dataclass(frozen=True)
class Rendered:
    text: str
    html: str | None
    template: str  # the text template's name, for the event log


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html"))


class Templates:
    """The configured template folder (or the packaged one) behind a sandboxed environment."""

    def __init__(self, directory: Path | None, language: str = "en",
                 overrides: dict[str, str] | None = None) -> None:
        self.language = language or FALLBACK_LANGUAGE
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self.directory = directory if directory is not None and directory.is_dir() \
            else PACKAGED_DIR
        # Imported here: `ticketgate pipe` only pays for jinja2 when it renders something.
        import jinja2
        from jinja2.sandbox import SandboxedEnvironment

        self.env = SandboxedEnvironment(
            # The shipped templates stand behind the site's: a site overrides only what it
            # wants to change, and a missing file never silences an answer.
            loader=jinja2.FileSystemLoader(list(dict.fromkeys(
                [str(self.directory), str(PACKAGED_DIR)]))),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=True,
            auto_reload=True,
        )

    def choose_set(self, queue_set: str, customer_id: str, customer_domain: str) -> str:
        for key in (customer_id, customer_domain):
            if key and key.lower() in self.overrides:
                return self.overrides[key.lower()]
        return queue_set or DEFAULT_SET

    def candidates(self, template_set: str, event: str, ext: str) -> Iterator[str]:
        seen: set[str] = set()
        for tset in (template_set, DEFAULT_SET):
            for lang in (self.language, FALLBACK_LANGUAGE):
                name = f"{tset}/{lang}/{event}.{ext}"
                if name not in seen:
                    seen.add(name)
                    yield name

    def _find(self, name: str) -> jinja2.Template | None:
        import jinja2

        try:
            return self.env.get_template(name)
        except jinja2.TemplateNotFound:
            return None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(exc.message or "syntax error", _rel(self, exc.name),
                                exc.lineno) from None

    def resolve(self, template_set: str, event: str) -> tuple[jinja2.Template,
                                                            jinja2.Template | None]:
        """The text template and the HTML one beside it (or None)."""
        for name in self.candidates(template_set, event, "txt"):
            text_tpl = self._find(name)
            if text_tpl is not None:
                break
        else:
            raise TemplateError(f"no template for {event!r} in set {template_set!r}")
        # The HTML part only from beside the text part that was chosen: a customised text
        # must not go out next to a shipped HTML version that says something else.
        html_tpl = None
        if text_tpl.filename and os.path.isfile(text_tpl.filename.removesuffix(".txt") + ".html"):
            html_tpl = self._find(name.removesuffix(".txt") + ".html")
        return text_tpl, html_tpl

    def render(self, template_set: str, event: str, context: dict[str, Any]) -> Rendered:
        text_tpl, html_tpl = self.resolve(template_set, event)
        html = render_one(self, html_tpl, context) if html_tpl is not None else None
        return Rendered(render_one(self, text_tpl, context), html, text_tpl.name or "")

    def all_files(self) -> list[str]:
        """Every template file in the site's folder (or the shipped one), as loader names."""
        return sorted(
            p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*")
            if p.suffix in (".txt", ".html") and p.is_file()
        )


def _rel(templates: Templates, name: str | None) -> str:
    """The file a loader name came from (the site's folder, else the shipped one)."""
    if not name:
        return str(templates.directory)
    own = templates.directory / name
    return str(own if own.is_file() else PACKAGED_DIR / name)


def render_one(templates: Templates, tpl: jinja2.Template, context: dict[str, Any]) -> str:
    """Render, turning any failure (a missing variable, the sandbox refusing, a filter
    choking on a value) into a TemplateError naming the file and line."""
    try:
        return tpl.render(context)
    except Exception as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}", _rel(templates, tpl.name),
                            _template_line(exc, tpl.filename)) from None


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """jinja2 rewrites tracebacks so template frames carry the template's file and line."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def sample_context(language: str = "en") -> dict[str, Any]:
    """What `templates check` renders every template with: every variable, realistic values."""
    return {
        "event": "new-ticket",
        "language": language,
        "company_name": "Example Support",
        "participant": True,
        "ticket": {"number": "2026112210000017", "title": "Printer on fire",
                   "queue": "Support", "state": "new", "priority": 3},
        "customer": {"name": "Ana García", "address": "ana@customer.example",
                     "domain": "customer.example", "id": "ACME"},
        "article": {"subject": "Printer on fire", "text": "Hello,\nthe printer is on fire.\n",
                    "excerpt": "> Hello,\n> the printer is on fire.",
                    "from": "ana@customer.example"},
        "queue": {"name": "Support", "address": "support@helpdesk.example"},
        "subject_tag": "[Ticket#2026112210000017]",
    }


def stranger_context(context: dict[str, Any]) -> dict[str, Any]:
    """`context` as an answer to a sender who is not a participant sees it
    (autoresponder.neutral_context): the ticket's number and queue, nothing else of it."""
    ticket, article = context["ticket"], context["article"]
    return context | {
        "participant": False,
        "ticket": ticket | {"title": "", "state": "", "priority": ""},
        "customer": {"name": "Mallory", "address": "mallory@elsewhere.example",
                     "domain": "elsewhere.example", "id": ""},
        "article": article | {"subject": "", "text": "", "excerpt": ""},
    }
