"""Simple templates render without jinja2's runtime, to exactly what jinja2 renders.

The oracle is jinja2 itself: `render_one` (the environment `Templates` uses) and a stock
`SandboxedEnvironment` with the same settings. `Templates._facts_of` holds what the fast
path knows about each template object, which is how these tests see which path ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from autoresponse.simple_template import SimpleTemplate, compile_simple
from autoresponse.templates import (
    PACKAGED_DIR,
    TemplateError,
    Templates,
    render_one,
    sample_context,
)

SHIPPED = sorted(p.relative_to(PACKAGED_DIR).as_posix() for p in PACKAGED_DIR.rglob("*")
                 if p.suffix in (".txt", ".html"))
# `{% if ticket.state == "new" %}`: a comparison, left to jinja2.
NOT_SIMPLE_SHIPPED = {n for n in SHIPPED if "/agent-notification." in n}


def _variant(**changes: dict[str, Any]) -> dict[str, Any]:
    ctx = sample_context()
    for key, values in changes.items():
        ctx[key] = {**ctx[key], **values}
    return ctx


CONTEXTS = [
    sample_context(),
    sample_context("es"),
    _variant(customer={"name": ""}),
    _variant(customer={"name": None}),
    _variant(customer={"name": "<Zoë> & \"Ørsted\" 'x' — 日本"}),
    _variant(customer={"name": Markup("<b>already safe</b>")}),
    _variant(ticket={"number": 2026112210000017, "priority": 0, "title": None,
                     "state": "open"}),
    _variant(ticket={"title": "a < b && c > \"d\"\n\tline two\r\n"},
             article={"excerpt": "> <script>alert('x')</script>\n> %s {0} {{ }}"},
             queue={"address": "o'brien+support@example.test"}),
    {**sample_context(), "company_name": None},
    {**sample_context(), "company_name": 12},
    {**sample_context(), "company_name": True},
]


def _stock(source: str, ext: str, context: dict[str, Any]) -> str:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined,
                               autoescape=lambda name: bool(name and name.endswith(".html")),
                               keep_trailing_newline=True,
                               loader=jinja2.DictLoader({f"default/en/new-ticket.{ext}": source}))
    return env.get_template(f"default/en/new-ticket.{ext}").render(context)


def _assert_as_stock(templates: Templates, source: str, ext: str,
                     context: dict[str, Any]) -> None:
    """`templates` renders what stock jinja2 renders, or fails where it fails."""
    try:
        expected = _stock(source, ext, context)
    except jinja2.TemplateError as exc:
        with pytest.raises(TemplateError, match=type(exc).__name__):
            _render(templates, context, ext)
    else:
        assert _render(templates, context, ext) == expected


def _site(tmp_path: Path, source: str, ext: str = "txt") -> Templates:
    """A template folder whose default/en new-ticket template (`ext`) is `source`."""
    path = tmp_path / "default" / "en" / f"new-ticket.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    if ext == "html":
        (path.parent / "new-ticket.txt").write_text("text part", encoding="utf-8")
    return Templates(tmp_path)


def _render(templates: Templates, context: dict[str, Any], ext: str = "txt") -> str:
    out = templates.render("default", "new-ticket", context)
    return out.html if ext == "html" else out.text  # type: ignore[return-value]


def _template(templates: Templates, ext: str = "txt") -> jinja2.Template:
    text, html = templates.resolve("default", "new-ticket")
    return html if ext == "html" else text  # type: ignore[return-value]


def _facts(templates: Templates, ext: str = "txt") -> Any:
    return templates._facts_of[_template(templates, ext)]


# -- the shipped templates -------------------------------------------------------------


def test_shipped_templates_are_classified() -> None:
    assert NOT_SIMPLE_SHIPPED and len(SHIPPED) > len(NOT_SIMPLE_SHIPPED)
    templates = Templates(None)
    simple = {n for n in SHIPPED
              if templates._analysed(templates.env.get_template(n)).fast is not None}
    assert simple == set(SHIPPED) - NOT_SIMPLE_SHIPPED
    assert any(n.endswith(".html") for n in simple)


@pytest.mark.parametrize("name", sorted(set(SHIPPED) - NOT_SIMPLE_SHIPPED))
def test_shipped_template_fast_output_equals_jinja2(name: str) -> None:
    templates = Templates(None)
    tpl = templates.env.get_template(name)
    fast = templates._analysed(tpl).fast
    assert fast is not None
    for ctx in CONTEXTS:
        assert fast.render(ctx) == render_one(templates, tpl, ctx)


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("event", ["new-ticket", "follow-up", "reject",
                                   "new-ticket-rejected"])
def test_templates_render_takes_the_fast_path_for_shipped_templates(language: str,
                                                                    event: str) -> None:
    templates = Templates(None, language=language)
    text_tpl, html_tpl = templates.resolve("default", event)
    parts = [t for t in (text_tpl, html_tpl) if t is not None]
    for ctx in CONTEXTS:
        out = templates.render("default", event, ctx)
        assert out.text == render_one(templates, text_tpl, ctx)
        assert out.html == (render_one(templates, html_tpl, ctx) if html_tpl else None)
    for tpl in parts:
        facts = templates._facts_of[tpl]
        assert facts.fast is not None and facts.fast.checked and facts.fallbacks == 0


def test_shipped_number_verbatim_shares_the_analysis() -> None:
    templates = Templates(None)
    assert templates.number_verbatim(templates.lookup("default", "new-ticket"))
    text_tpl, html_tpl = templates._entry("default", "new-ticket")[1:3]
    for tpl in (text_tpl, html_tpl):
        facts = templates._facts_of[tpl]
        assert facts.analysed and facts.verbatim and facts.fast is not None


# -- what is simple and what is not ----------------------------------------------------

SIMPLE = [
    "plain text only\n",
    "",
    "{{ company_name }}{{ ticket.number }}{{ ticket['title'] }}{{ customer[\"name\"] }}",
    "{% if not customer.name %}Hello{% elif ticket.priority %}P{{ ticket.priority }}"
    "{% elif customer.id %}id{% else %}else {{ queue.name }}{% endif %}!",
    "{% if ticket.title %}{% if not customer.name %}anon{% endif %}{% endif %}.",
    "{% if company_name %}{% else %}no company{% endif %}",
    "a {#- comment -#} b\n  {%- if customer.name -%}\n  x\n  {%- endif %}\n",
    "{% raw %}{{ not evaluated }}{% endraw %} 100% {0} %s \\ '\"\n",
    "{{ article.from }}\r\nline\rtwo\n\n",
]
NOT_SIMPLE = [
    "{{ customer.name|upper }}",
    "{{ customer.name|e }}",
    "{% for k in ticket %}{{ k }}{% endfor %}",
    "{% set x = ticket.number %}{{ x }}",
    "{{ ticket.get('number') }}",
    "{{ ticket.items }}",
    "{{ ticket.keys }}",
    "{% if ticket.state == 'new' %}n{% endif %}",
    "{% if customer.name is defined %}d{% endif %}",
    "{{ ticket.priority + 1 }}",
    "{{ ticket.number ~ '!' }}",
    "{{ 'literal' }}",
    "{{ ticket[0] }}",
    "{{ ticket[customer.name] }}",
    "{% if customer.name and ticket.title %}x{% endif %}",
    "{% if not not customer.name %}x{% endif %}",
    "{{ customer.name if customer.name else 'there' }}",
    "{{ self }}",
    "{% macro m() %}x{% endmacro %}{{ m() }}",
    "{% filter upper %}{{ customer.name }}{% endfilter %}",
    "{% autoescape false %}{{ customer.name }}{% endautoescape %}",
]


@pytest.mark.parametrize("ext", ["txt", "html"])
@pytest.mark.parametrize("source", SIMPLE)
def test_simple_sources_render_like_jinja2(tmp_path: Path, source: str, ext: str) -> None:
    templates = _site(tmp_path, source, ext)
    facts = _facts(templates, ext)
    assert facts.fast is not None
    for ctx in CONTEXTS:
        assert _render(templates, ctx, ext) == _stock(source, ext, ctx)
    assert facts.fast is not None and facts.fast.checked and facts.fallbacks == 0


@pytest.mark.parametrize("ext", ["txt", "html"])
@pytest.mark.parametrize("source", NOT_SIMPLE)
def test_other_sources_are_left_to_jinja2(tmp_path: Path, source: str, ext: str) -> None:
    templates = _site(tmp_path, source, ext)
    facts = _facts(templates, ext)
    assert facts.analysed and facts.fast is None
    _assert_as_stock(templates, source, ext, _variant(customer={"name": "<Ana> & García"}))


def test_a_template_is_analysed_on_its_second_render_only(tmp_path: Path) -> None:
    """One render per process (`ticketgate pipe`) pays nothing for the fast path."""
    templates = _site(tmp_path, "Hi {{ customer.name }}")
    ctx = sample_context()
    assert _render(templates, ctx) == "Hi Ana García"
    facts = templates._facts_of[templates._entry("default", "new-ticket").text]
    assert facts.rendered and not facts.analysed and facts.fast is None
    assert _render(templates, ctx) == "Hi Ana García"  # analysed, then checked
    assert facts.analysed and facts.fast is not None and facts.fast.checked


# -- falling back ----------------------------------------------------------------------


def test_missing_variable_gives_jinja2s_error_with_file_and_line(tmp_path: Path) -> None:
    source = "Hello\n{{ ticket.number }}\n{% if customer.name %}\n{{ ticket.numbr }}\n{% endif %}"
    with pytest.raises(TemplateError) as before:  # the first render: jinja2 alone
        _render(_site(tmp_path / "a", source), sample_context())
    templates = _site(tmp_path / "b", source)
    facts = _facts(templates)
    assert facts.fast is not None
    with pytest.raises(TemplateError) as err:
        _render(templates, sample_context())
    assert facts.fallbacks == 1
    assert err.value.lineno == 4 == before.value.lineno
    assert err.value.filename == str(tmp_path / "b" / "default" / "en" / "new-ticket.txt")
    assert str(err.value).replace("/b/", "/a/") == str(before.value)
    assert "numbr" in str(err.value)
    # A branch not taken needs no variable, as in jinja2.
    assert _render(templates, _variant(customer={"name": ""})) == "Hello\n2026112210000017\n"
    assert facts.fallbacks == 1


@pytest.mark.parametrize("source", [
    "{{ company_name.upper }}",  # a str's attribute: the sandbox's getattr
    "{% if customer.name.strip %}x{% endif %}",
    "{{ nope }}",  # not in the context: jinja2 looks at its globals, then fails
    "{{ range }}",  # a global
])
def test_what_is_not_a_plain_dict_key_goes_to_jinja2(tmp_path: Path, source: str) -> None:
    templates = _site(tmp_path, source)
    facts = _facts(templates)
    assert facts.fast is not None
    _assert_as_stock(templates, source, "txt", sample_context())
    assert facts.fallbacks == 1


def test_dicts_of_another_type_go_to_jinja2(tmp_path: Path) -> None:
    class Attrs(dict):  # type: ignore[type-arg]
        name = "attribute"

    templates = _site(tmp_path, "{{ customer.name }}")
    facts = _facts(templates)
    ctx = {**sample_context(), "customer": Attrs(name="item")}
    assert _render(templates, ctx) == _stock("{{ customer.name }}", "txt", ctx)
    assert facts.fallbacks == 1
    assert _render(templates, sample_context()) == "Ana García"
    assert facts.fast is not None and facts.fallbacks == 1


# -- the self-check and the race with an edit ------------------------------------------


def _other(source: str, autoescape: bool = False) -> SimpleTemplate:
    fast = compile_simple(jinja2.Environment().parse(source), autoescape)
    assert fast is not None
    return fast


def test_a_disagreeing_simple_form_is_dropped_for_jinja2s(tmp_path: Path) -> None:
    templates = _site(tmp_path, "Hello {{ customer.name }}")
    facts = _facts(templates)
    facts.fast = _other("Bye {{ customer.name }}")  # what a misread source would give
    assert _render(templates, sample_context()) == "Hello Ana García"
    assert facts.fast is None
    assert _render(templates, sample_context()) == "Hello Ana García"


def test_a_simple_form_that_jinja2_refutes_with_an_error_is_dropped(tmp_path: Path) -> None:
    templates = _site(tmp_path, "{{ ticket.numbr }}")
    facts = _facts(templates)
    facts.fast = _other("{{ ticket.number }}")
    with pytest.raises(TemplateError, match="numbr"):
        _render(templates, sample_context())
    assert facts.fast is None


def test_once_confirmed_the_simple_form_alone_renders(tmp_path: Path) -> None:
    """The check runs once per template object: afterwards jinja2 is not asked."""
    templates = _site(tmp_path, "Hello {{ customer.name }}")
    facts = _facts(templates)
    assert _render(templates, sample_context()) == "Hello Ana García"
    assert facts.fast.checked
    swapped = _other("Bye {{ customer.name }}")
    swapped.checked = True
    facts.fast = swapped
    assert _render(templates, sample_context()) == "Bye Ana García"


def test_a_source_edited_after_compiling_is_not_trusted(tmp_path: Path) -> None:
    """The file read for the analysis is not the one jinja2 compiled: no fast path, and
    the template object's own output as before."""
    templates = _site(tmp_path, "{{ ticket.number }} old")
    ctx = sample_context()
    assert _render(templates, ctx) == "2026112210000017 old"
    path = tmp_path / "default" / "en" / "new-ticket.txt"
    path.write_text("{{ ticket.number }} new", encoding="utf-8")
    facts = _facts(templates)  # the same template object, within RECHECK seconds
    assert facts.analysed and facts.fast is None and not facts.verbatim
    assert _render(templates, ctx) == "2026112210000017 old"


def test_escaping_matches_markupsafe_for_every_kind_of_value(tmp_path: Path) -> None:
    templates = _site(tmp_path, "<p>{{ customer.name }}</p>", "html")
    facts = _facts(templates, "html")
    assert facts.fast is not None
    for value in ["".join(map(chr, range(0x300))), "", "&amp;", Markup("<i>x</i>"), 0, -1.5,
                  None, False, ["<a>"], {"k": "<v>"}]:
        ctx = _variant(customer={"name": value})
        assert _render(templates, ctx, "html") == _stock("<p>{{ customer.name }}</p>",
                                                         "html", ctx)
    assert facts.fallbacks == 0 and facts.fast is not None
