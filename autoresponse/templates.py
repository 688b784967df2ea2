"""Find and render auto-response templates in a sandbox.

Admins edit the templates, so they run in jinja2's `SandboxedEnvironment` (no access to
Python internals) with `StrictUndefined` (a typo is an error, not an empty string), and
only the HTML parts are autoescaped. Templates receive plain dicts, never ORM objects.

Layout: `<dir>/<set>/<language>/<event>.txt` and an optional `<event>.html` beside it.
The set is chosen per customer id, then customer domain (`[templates] overrides`), then the
queue's `templates`, then "default"; a file missing from the chosen set or language is
taken from the "default" set and from English, and finally from the templates shipped with
ticketgate (the ones `ticketgate init` copies), which are also used when `[templates] dir`
does not exist.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway

if TYPE_CHECKING:
    import jinja2

EVENTS = ("new-ticket", "follow-up", "reject", "new-ticket-rejected", "agent-notification")
DEFAULT_SET = "default"
FALLBACK_LANGUAGE = "en"
RECHECK = 2.0  # seconds a template lookup is reused before the files are looked at again
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


# What `getattr(some_dict, name)` finds; any other name on a dict is looked up as a key.
_DICT_ATTRIBUTES = frozenset(dir(dict))


@functools.cache
def _environment_class() -> type[jinja2.Environment]:
    """The sandbox with a shortcut for `ticket.number` on the plain dicts we pass.

    Defined on first use (jinja2 is imported lazily). The sandbox's `getattr` first tries
    the Python attribute, and on a dict that raises AttributeError for every `a.b` in
    a template, costing ~1 µs each, before it falls back to the item. For an exact dict
    and a name that is not a dict attribute that outcome is certain, so the item (or
    Undefined) is returned at once: the same value, and items never went through the
    attribute safety check before either. Everything else takes the sandbox's own path.
    """
    from jinja2.sandbox import SandboxedEnvironment

    class DictFastSandbox(SandboxedEnvironment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)

    return DictFastSandbox


class Templates:
    """The configured template folder (or the packaged one) behind a sandboxed environment."""

    def __init__(self, directory: Path | None, language: str = "en",
                 overrides: dict[str, str] | None = None) -> None:
        self.language = language or FALLBACK_LANGUAGE
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._resolved: dict[tuple[str, str], tuple[float, Any, Any, Any, Any]] = {}
        # Per template object: jinja2 compiles a new one when its file changes.
        self._verbatim_of: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self.directory = directory if directory is not None and directory.is_dir() \
            else PACKAGED_DIR
        # Imported here: `ticketgate pipe` only pays for jinja2 when it renders something.
        import jinja2

        self.env = _environment_class()(
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

    def _find(self, template_set: str, event: str, ext: str) -> jinja2.Template | None:
        for name in self.candidates(template_set, event, ext):
            tpl = self._find_name(name)
            if tpl is not None:
                return tpl
        return None

    def _find_name(self, name: str) -> jinja2.Template | None:
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
        """The text template and the HTML one beside it (or None), looked up again at most
        every RECHECK seconds: the lookup stats several files, and edits still show up
        within seconds without a reload."""
        _, text_tpl, html_tpl, _, _ = self._entry(template_set, event)
        return text_tpl, html_tpl

    def _entry(self, template_set: str, event: str) -> tuple[float, Any, Any, Any, Any]:
        """(looked up at, text template, HTML template or None, their globals)."""
        key = (template_set, event)
        now = time.monotonic()
        hit = self._resolved.get(key)
        if hit is not None and now - hit[0] < RECHECK:
            return hit
        text_tpl = self._find(template_set, event, "txt")
        if text_tpl is None:
            raise TemplateError(f"no template for {event!r} in set {template_set!r}")
        # The HTML part only from beside the text part that was chosen: a customised text
        # must not go out next to a shipped HTML version that says something else.
        html_tpl = None
        if text_tpl.filename and Path(text_tpl.filename).with_suffix(".html").is_file():
            html_name = (text_tpl.name or "").removesuffix(".txt") + ".html"
            html_tpl = self._find_name(html_name)
        # Each template's globals flattened once: jinja2 would copy them out of a ChainMap
        # into every render's context, which cost about a third of the rendering.
        hit = self._resolved[key] = (
            now, text_tpl, html_tpl, dict(text_tpl.globals),
            dict(html_tpl.globals) if html_tpl is not None else None)
        return hit

    def number_verbatim(self, template_set: str, event: str) -> bool:
        """Do this event's templates print `ticket.number` only as it is (draft.py)?"""
        _, text_tpl, html_tpl, _, _ = self._entry(template_set, event)
        return all(self._verbatim(t) for t in (text_tpl, html_tpl) if t is not None)

    def _verbatim(self, tpl: jinja2.Template) -> bool:
        verdict = self._verbatim_of.get(tpl)
        if verdict is None:
            verdict = self._verbatim_of[tpl] = number_verbatim(self.env, tpl)
        return verdict

    def render(self, template_set: str, event: str, context: dict[str, Any]) -> Rendered:
        _, text_tpl, html_tpl, text_globals, html_globals = self._entry(template_set, event)
        text = render_one(self, text_tpl, context, text_globals)
        html = render_one(self, html_tpl, context, html_globals) \
            if html_tpl is not None else None
        return Rendered(text, html, text_tpl.name or "")

    def all_files(self) -> list[str]:
        """Every template file in the site's folder (or the shipped one), as loader names."""
        return sorted(
            p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*")
            if p.suffix in (".txt", ".html") and p.is_file()
        )


def number_verbatim(env: jinja2.Environment, tpl: jinja2.Template) -> bool:
    """True if the template uses `ticket` only as `ticket.<key>`, and `ticket.number`
    only as a whole `{{ ... }}` of its own, so its output holds the number unchanged
    wherever it appears and nothing else depends on it. Anything that could capture or
    transform output (blocks, macros, `{% set %}` blocks, filter and call blocks,
    includes) makes it False, as does a template whose source cannot be read.
    """
    from jinja2 import nodes

    try:
        tree = env.parse(Path(tpl.filename or "").read_text(encoding="utf-8"))
    except Exception:
        return False
    if any(True for _ in tree.find_all(_capturing())):
        return False

    def ok(node: nodes.Node, parent: nodes.Node | None, grand: nodes.Node | None) -> bool:
        if isinstance(node, nodes.Name) and node.name == "ticket":
            if node.ctx != "load":
                return False
            if isinstance(parent, nodes.Getattr) and parent.node is node:
                key: object = parent.attr
            elif isinstance(parent, nodes.Getitem) and parent.node is node \
                    and isinstance(parent.arg, nodes.Const):
                key = parent.arg.value
            else:
                return False
            if key == "number" and not isinstance(grand, nodes.Output):
                return False
        return all(ok(child, node, parent) for child in node.iter_child_nodes())

    return ok(tree, None, None)


def _capturing() -> tuple[type, ...]:
    from jinja2 import nodes

    return (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.Block,
            nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)


def _rel(templates: Templates, name: str | None) -> str:
    """The file a loader name came from (the site's folder, else the shipped one)."""
    if not name:
        return str(templates.directory)
    own = templates.directory / name
    return str(own if own.is_file() else PACKAGED_DIR / name)


def render_one(templates: Templates, tpl: jinja2.Template, context: dict[str, Any],
               template_globals: MutableMapping[str, Any] | None = None) -> str:
    """Render, turning any failure into a TemplateError naming the file and line.

    What `tpl.render(context)` does, except that the template's globals may be given
    already flattened (`Templates.render` keeps them); jinja2's `handle_exception` still
    rewrites the traceback so `_template_line` finds the template's line.
    """
    import jinja2
    from jinja2.runtime import new_context

    env = tpl.environment
    try:
        try:
            ctx = new_context(env, tpl.name, tpl.blocks, context, False,
                              tpl.globals if template_globals is None else template_globals)
            return env.concat(tpl.root_render_func(ctx))  # type: ignore[attr-defined]
        except Exception:
            env.handle_exception()
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}", _rel(templates, tpl.name),
                            _template_line(exc, tpl.filename)) from None
    except Exception as exc:  # a filter choking on a value: still the template's fault
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
        "ticket": {"number": "2026112210000017", "title": "Printer on fire",
                   "queue": "Support", "state": "new", "priority": 3},
        "customer": {"name": "Ana García", "address": "ana@customer.example",
                     "domain": "customer.example", "id": "ACME"},
        "article": {"subject": "Printer on fire", "text": "Hello,\nthe printer is on fire.\n",
                    "excerpt": "> Hello,\n> the printer is on fire.",
                    "from": "ana@customer.example"},
        "queue": {"name": "Support", "address": "support@helpdesk.example"},
    }
