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

A template that is only text, `{{ a.b }}` and `{% if a.b %}` is rendered without jinja2's
runtime (`simple_template`), to the same output; see `Templates._render`.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, NamedTuple

import gateway

from .simple_template import DICT_ATTRIBUTES, SimpleTemplate, compile_simple

if TYPE_CHECKING:
    import jinja2
    from jinja2 import nodes

log = logging.getLogger("ticketgate.autoresponse")

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
            if type(obj) is dict and attribute not in DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)

    return DictFastSandbox


class _Facts:
    """What one template object's source allows, worked out once it is worth it.

    Kept per template object: jinja2 compiles a new one when its file changes.
    """

    __slots__ = ("analysed", "excerpt", "fallbacks", "fast", "rendered", "verbatim")

    def __init__(self) -> None:
        self.analysed = False
        self.rendered = False  # by jinja2, before the analysis
        self.verbatim = False  # see `number_verbatim`
        self.excerpt = True  # may it read `article.excerpt`? (see `reads_excerpt`)
        self.fast: SimpleTemplate | None = None  # None: jinja2 renders it
        self.fallbacks = 0  # renders the simple form left to jinja2 (for tests, debugging)


class Lookup(NamedTuple):
    """One event's templates in one set, as looked up (see `Templates.lookup`)."""

    at: float  # time.monotonic() of the lookup
    text: jinja2.Template
    html: jinja2.Template | None
    text_globals: dict[str, Any]
    html_globals: dict[str, Any] | None
    text_facts: _Facts
    html_facts: _Facts | None


class Templates:
    """The configured template folder (or the packaged one) behind a sandboxed environment."""

    def __init__(self, directory: Path | None, language: str = "en",
                 overrides: dict[str, str] | None = None) -> None:
        self.language = language or FALLBACK_LANGUAGE
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._resolved: dict[tuple[str, str], Lookup] = {}
        self._facts_of: weakref.WeakKeyDictionary[Any, _Facts] = weakref.WeakKeyDictionary()
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
        within seconds without a reload. Their sources are analysed now too (for
        `warm_up`), not on their second render."""
        hit = self._entry(template_set, event)
        for tpl in (hit.text, hit.html):
            if tpl is not None:
                self._analysed(tpl)
        return hit.text, hit.html

    def _entry(self, template_set: str, event: str) -> Lookup:
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
        hit = self._resolved[key] = Lookup(
            now, text_tpl, html_tpl, dict(text_tpl.globals),
            dict(html_tpl.globals) if html_tpl is not None else None,
            self._facts(text_tpl), self._facts(html_tpl) if html_tpl is not None else None)
        return hit

    def _facts(self, tpl: jinja2.Template) -> _Facts:
        facts = self._facts_of.get(tpl)
        if facts is None:
            facts = self._facts_of[tpl] = _Facts()
        return facts

    def _analysed(self, tpl: jinja2.Template) -> _Facts:
        """The template's facts, worked out from its source (once) if not done yet."""
        facts = self._facts(tpl)
        if not facts.analysed:
            tree = _source_tree(self.env, tpl)
            facts.verbatim = tree is not None and _number_verbatim(tree)
            facts.excerpt = tree is None or not _only_keys(tree, "article",
                                                            _ARTICLE_BUT_EXCERPT)
            facts.fast = _simple(tpl, tree) if tree is not None else None
            facts.analysed = True
        return facts

    def lookup(self, template_set: str, event: str) -> Lookup:
        """This event's templates, for `number_verbatim`, `reads_excerpt` and `render_of`:
        an answer that asks several things of them looks them up once (each lookup reads
        the clock)."""
        return self._entry(template_set, event)

    def number_verbatim(self, hit: Lookup) -> bool:
        """Do these templates print `ticket.number` only as it is (draft.py)?"""
        # The lookup's facts are the templates' own (`_facts`), reached without the
        # weak dictionary: this is asked for every drafted answer.
        text, html = hit.text_facts, hit.html_facts
        if not text.analysed:
            self._analysed(hit.text)
        if html is not None and not html.analysed:
            self._analysed(hit.html)  # type: ignore[arg-type]
        return text.verbatim and (html is None or html.verbatim)

    @staticmethod
    def reads_excerpt(hit: Lookup) -> bool:
        """May these templates read `article.excerpt`? False only once both are analysed
        and neither can: then the answer need not quote the customer's text (which costs
        more than rendering a template that does not print it)."""
        return hit.text_facts.excerpt or (hit.html_facts is not None
                                          and hit.html_facts.excerpt)

    def render(self, template_set: str, event: str, context: dict[str, Any]) -> Rendered:
        return self.render_of(self._entry(template_set, event), context)

    def render_of(self, hit: Lookup, context: dict[str, Any]) -> Rendered:
        text = self._render(hit.text, hit.text_facts, context, hit.text_globals)
        html = self._render(hit.html, hit.html_facts, context, hit.html_globals) \
            if hit.html is not None else None
        return Rendered(text, html, hit.text.name or "")

    def _render(self, tpl: jinja2.Template, facts: _Facts, context: dict[str, Any],
                template_globals: dict[str, Any] | None) -> str:
        """`render_one`, by the template's simple form (`simple_template`) if it has one.

        The source is analysed on a template object's second render, so a process that
        renders once (`ticketgate pipe`) does not pay for it. Whatever the simple form
        cannot say (a missing key, a value that is not a plain dict) goes to jinja2, for
        the same output or its proper error.
        """
        if not facts.analysed:
            if not facts.rendered:
                facts.rendered = True
                return render_one(self, tpl, context, template_globals)
            self._analysed(tpl)
        fast = facts.fast
        if fast is not None:
            try:
                out = fast.render(context)
            except Exception:
                facts.fallbacks += 1
            else:
                return out if fast.checked \
                    else self._confirmed(tpl, facts, fast, out, context, template_globals)
        return render_one(self, tpl, context, template_globals)

    def _confirmed(self, tpl: jinja2.Template, facts: _Facts, fast: SimpleTemplate,
                   out: str, context: dict[str, Any],
                   template_globals: dict[str, Any] | None) -> str:
        """The first output of a template object's simple form, checked against jinja2's.

        A difference would be a piece of jinja2's behaviour `simple_template` misses: that
        template object is then left to jinja2 for good, and jinja2's output (or error)
        is what counts.
        """
        try:
            expected = render_one(self, tpl, context, template_globals)
        except TemplateError as exc:
            facts.fast = None
            log.debug("%s: jinja2 fails where the simple form did not (%s), not simple",
                      tpl.name, exc)
            raise
        if expected != out:
            facts.fast = None
            log.debug("%s: the simple form rendered differently from jinja2, not simple",
                      tpl.name)
            return expected
        fast.checked = True
        return out

    def all_files(self) -> list[str]:
        """Every template file in the site's folder (or the shipped one), as loader names."""
        return sorted(
            p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*")
            if p.suffix in (".txt", ".html") and p.is_file()
        )


def _source_tree(env: jinja2.Environment, tpl: jinja2.Template) -> nodes.Template | None:
    """The parsed source of `tpl`, or None if it cannot be read or parsed, or is not what
    `tpl` was compiled from (the file changed since: jinja2 compiles a new template
    object at its next lookup).

    The file is read apart from jinja2's loading, so the source is compiled again and its
    code compared with the template's: equal code is the same template, whatever the
    source's history.
    """
    try:
        source = Path(tpl.filename or "").read_text(encoding="utf-8")
        module = env.compile(source, tpl.name, tpl.filename)
        root = tpl.root_render_func.__code__  # type: ignore[attr-defined]
        if not any(isinstance(c, CodeType) and c.co_name == "root" and c == root
                   for c in module.co_consts):
            return None
        return env.parse(source, tpl.name, tpl.filename)
    except Exception:
        return None


def _simple(tpl: jinja2.Template, tree: nodes.Template) -> SimpleTemplate | None:
    """The template's simple form, if it has one and its environment prints values plainly
    (no `finalize`, not async: what `simple_template` assumes)."""
    env = tpl.environment
    if env.finalize is not None or env.is_async:
        return None
    autoescape = env.autoescape(tpl.name) if callable(env.autoescape) \
        else bool(env.autoescape)
    try:
        return compile_simple(tree, autoescape)
    except Exception:  # an unexpected tree: jinja2 renders it as before
        return None


def _number_verbatim(tree: nodes.Template) -> bool:
    """True if the template uses `ticket` only as `ticket.<key>`, and `ticket.number`
    only as a whole `{{ ... }}` of its own, so its output holds the number unchanged
    wherever it appears and nothing else depends on it. Anything that could capture or
    transform output (blocks, macros, `{% set %}` blocks, filter and call blocks,
    includes) makes it False. (A template whose source cannot be read, or is no longer
    the one it was compiled from, has no tree: `_source_tree`.)
    """
    from jinja2 import nodes

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


def _only_keys(tree: nodes.Template, name: str, keys: frozenset[str]) -> bool:
    """Does the template use `name` only as `name.<key>` or `name["<key>"]`, `<key>` one
    of `keys`? Any other use (another key, `.items()`, a filter, a loop or a test given
    `name` whole, a computed key, an assignment, another template that sees the same
    context) could reach the rest of it."""
    from jinja2 import nodes

    if any(True for _ in tree.find_all(_capturing())):
        return False
    looked_up: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner = node.node
        if isinstance(inner, nodes.Name) and inner.name == name:
            key = node.attr if isinstance(node, nodes.Getattr) else (
                node.arg.value if isinstance(node.arg, nodes.Const) else None)
            if key not in keys:
                return False
            looked_up.add(id(inner))
    return not any(n.name == name and id(n) not in looked_up
                   for n in tree.find_all(nodes.Name))


# What a template may read of `article` and still not need its excerpt.
_ARTICLE_BUT_EXCERPT = frozenset({"subject", "text", "from"})


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
