"""The faster rendering path gives what jinja2's own sandbox gives, errors included.

`Templates` renders through a sandbox subclass that looks up `a.b` on plain dicts
directly, and builds the render context from globals it flattened once. The oracle here
is a stock `SandboxedEnvironment` with the same settings rendering the same source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from autoresponse import templates as templates_mod
from autoresponse.templates import RECHECK, TemplateError, Templates, sample_context

SOURCES = [
    "{{ ticket.number }} {{ customer.name }} {{ queue.address }} {{ article.excerpt }}",
    "{% if customer.name %}Hi {{ customer.name }}{% endif %}, {{ company_name }}",
    # Names that are dict methods stay methods, as in jinja2: `.items` is not a key.
    "{% for k, v in ticket.items() %}{{ k }}={{ v }};{% endfor %}",
    "{{ ticket.get('number') }} {{ ticket.get('nope', 'dflt') }} {{ ticket.keys()|list }}",
    "{{ ticket.items is callable }} {{ customer.values()|list|length }}",
    "{{ ticket['number'] }} {{ ticket|length }} {{ ticket.priority + 1 }}",
    "{% for i in range(3) %}{{ loop.index }}{% endfor %}{{ dict(a=1).a }}",
    "{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}{% endfor %}"
    "{{ ns.n }} {{ cycler('a', 'b').next() }} {{ joiner(',')() }}",
    "{{ customer.nope is defined }} {{ ticket.number|string|upper }}",
    "{{ article.text.splitlines()|first }} {{ article.subject.upper() }}",
    "{{ customer.name|e }} & <b>{{ ticket.title }}</b>",
    "{{ lipsum is defined }} {{ event }} {{ language }}",
]
FAILING = [
    "{{ ticket.numbr }}",
    "{{ customer.nope.deeper }}",
    "{{ ticket.__class__ }}",
    "{{ ticket.__class__.__mro__ }}",
    "{{ ticket.items.__self__ }}",
    "{{ customer.get.__globals__ }}",
    "{{ ticket.__init__.__globals__ }}",
    "{{ company_name.format.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
]


def _context() -> dict[str, Any]:
    ctx = sample_context()
    ctx["customer"] = {**ctx["customer"], "name": "<Ana> & \"García\""}
    return ctx


def _stock(source: str, ext: str) -> str:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined,
                               autoescape=lambda name: bool(name and name.endswith(".html")),
                               keep_trailing_newline=True,
                               loader=jinja2.DictLoader({f"t.{ext}": source}))
    return env.get_template(f"t.{ext}").render(_context())


def _ours(tmp_path: Path, source: str, ext: str) -> str:
    path = tmp_path / "default" / "en" / f"new-ticket.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    if ext == "html":
        (path.parent / "new-ticket.txt").write_text("x", encoding="utf-8")
    out = Templates(tmp_path).render("default", "new-ticket", _context())
    return out.html if ext == "html" else out.text  # type: ignore[return-value]


@pytest.mark.parametrize("ext", ["txt", "html"])
@pytest.mark.parametrize("source", SOURCES)
def test_output_equals_stock_sandbox(tmp_path: Path, source: str, ext: str) -> None:
    assert _ours(tmp_path, source, ext) == _stock(source, ext)


@pytest.mark.parametrize("source", FAILING)
def test_what_stock_sandbox_refuses_is_still_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(jinja2.TemplateError) as stock:
        _stock(source, "txt")
    with pytest.raises(TemplateError) as ours:
        _ours(tmp_path, source, "txt")
    assert type(stock.value).__name__ in str(ours.value)
    assert str(stock.value) in str(ours.value)


def test_error_line_still_found_on_the_fast_path(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as err:
        _ours(tmp_path, "a\n{{ ticket.number }}\n\n{{ customer.nope }}\n", "txt")
    assert err.value.lineno == 4


def test_globals_added_to_the_environment_are_seen_after_the_recheck(tmp_path: Path) -> None:
    """The flattened globals are taken when a template is looked up, like the template."""
    path = tmp_path / "default" / "en" / "new-ticket.txt"
    path.parent.mkdir(parents=True)
    path.write_text("{{ greeting is defined }}", encoding="utf-8")
    templates = Templates(tmp_path)
    assert templates.render("default", "new-ticket", _context()).text == "False"
    templates.env.globals["greeting"] = "hi"
    templates._resolved.clear()  # what RECHECK seconds do
    assert templates.render("default", "new-ticket", _context()).text == "True"


def test_an_edited_template_is_used_after_recheck_seconds(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup is reused for RECHECK seconds, then the files are looked at again."""
    clock = [1000.0]
    monkeypatch.setattr(templates_mod.time, "monotonic", lambda: clock[0])
    path = tmp_path / "default" / "en" / "new-ticket.txt"
    path.parent.mkdir(parents=True)
    path.write_text("one", encoding="utf-8")
    templates = Templates(tmp_path)
    assert templates.render("default", "new-ticket", _context()).text == "one"
    path.write_text("two", encoding="utf-8")
    mtime = path.stat().st_mtime + 10  # jinja2's own reload check compares mtimes
    os.utime(path, (mtime, mtime))
    clock[0] = 1000.0 + RECHECK - 0.01
    assert templates.render("default", "new-ticket", _context()).text == "one"
    clock[0] = 1000.0 + RECHECK
    assert templates.render("default", "new-ticket", _context()).text == "two"
