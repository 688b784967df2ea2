"""Templates: sandbox, strict variables, HTML-only escaping, selection, `templates check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresponse.autoresponder import excerpt
from autoresponse.cli import check_templates
from autoresponse.templates import (
    EVENTS,
    PACKAGED_DIR,
    TemplateError,
    Templates,
    sample_context,
)
from gateway.cli import main as cli_main
from gateway.mail.envelope import Envelope
from gateway.runtime import Store
from tests.autoresponse_helpers import (
    answer_text,
    answering_intake,
    build_mail,
    outbox_rows,
    write_toml,
)
from tests.support import make_config


def _write(base: Path, name: str, text: str) -> None:
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ticket.__class__ }}",
    "{{ company_name.format.__globals__ }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    "{{ ticket.items.__self__ }}",
    "{{ customer.get.__globals__ }}",
    "{{ ticket.__init__.__globals__ }}",
])
def test_sandbox_blocks_python_internals(tmp_path: Path, evil: str) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", evil)
    with pytest.raises(TemplateError) as err:
        Templates(tmp_path).render("default", "new-ticket", sample_context())
    assert "new-ticket.txt" in str(err.value)


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", "Hello\n\n{{ ticket.numbr }}\n")
    with pytest.raises(TemplateError) as err:
        Templates(tmp_path).render("default", "new-ticket", sample_context())
    assert err.value.lineno == 3
    assert str(err.value).startswith(str(tmp_path / "default/en/new-ticket.txt") + ":3:")
    assert "numbr" in str(err.value)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", "a\nb\n{% if x %}\n")
    with pytest.raises(TemplateError) as err:
        Templates(tmp_path).render("default", "new-ticket", sample_context())
    assert err.value.filename.endswith("new-ticket.txt") and err.value.lineno


def test_html_is_escaped_and_text_is_not(tmp_path: Path) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", "{{ customer.name }}")
    _write(tmp_path, "default/en/new-ticket.html", "<p>{{ customer.name }}</p>")
    ctx = sample_context()
    ctx["customer"] = {**ctx["customer"], "name": "<script>alert(1)</script> & Co"}
    out = Templates(tmp_path).render("default", "new-ticket", ctx)
    assert out.text == "<script>alert(1)</script> & Co"
    assert out.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co</p>"


def test_selection_overrides_queue_set_language_fallback(tmp_path: Path) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", "default-en")
    _write(tmp_path, "default/es/new-ticket.txt", "default-es")
    _write(tmp_path, "support/es/new-ticket.txt", "support-es")
    _write(tmp_path, "vip/en/new-ticket.txt", "vip-en")
    t = Templates(tmp_path, "es", {"BigCorp.example": "vip", "CUST-7": "vip"})
    ctx = sample_context()
    assert t.choose_set("support", "", "gmail.com") == "support"
    assert t.choose_set("support", "", "bigcorp.example") == "vip"
    assert t.choose_set("", "cust-7", "gmail.com") == "vip"
    assert t.choose_set("", "", "gmail.com") == "default"
    assert t.render("support", "new-ticket", ctx).text == "support-es"
    assert t.render("vip", "new-ticket", ctx).text == "vip-en"  # no vip/es: vip/en
    assert t.render("billing", "new-ticket", ctx).text == "default-es"  # no such set
    assert t.render("support", "new-ticket", ctx).html is None


def test_missing_dir_falls_back_to_packaged_defaults(tmp_path: Path) -> None:
    t = Templates(tmp_path / "does-not-exist")
    assert t.directory == PACKAGED_DIR
    for event in EVENTS:
        assert t.render("default", event, sample_context() | {"event": event}).text.strip()


@pytest.mark.parametrize("language", ["en", "es"])
def test_shipped_templates_check_clean(language: str) -> None:
    templates = Templates(PACKAGED_DIR, language)
    assert check_templates(templates) == []
    assert {n.split("/")[1] for n in templates.all_files()} >= {"en", "es"}
    text = templates.render("default", "new-ticket", sample_context()).text
    assert "2026112210000017" in text


def test_templates_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tdir = tmp_path / "templates"
    for event in EVENTS:
        _write(tdir, f"default/en/{event}.txt", "ok {{ ticket.number }}\n")
    cfg = tmp_path / "t.toml"
    write_toml(cfg, {"templates": {"dir": "templates"}})
    assert cli_main(["-c", str(cfg), "templates", "check"]) == 0
    assert "OK" in capsys.readouterr().out
    _write(tdir, "default/en/reject.txt", "line1\n{{ ticket.nope }}\n")
    _write(tdir, "default/es/follow-up.txt", "{% endif %}\n")
    _write(tdir, "default/en/welcome.txt", "hi\n")
    assert cli_main(["-c", str(cfg), "templates", "check"]) == 1
    err = capsys.readouterr().err
    assert f"{tdir / 'default/en/reject.txt'}:2:" in err
    assert f"{tdir / 'default/es/follow-up.txt'}:1:" in err
    assert "unknown event 'welcome'" in err


def test_excerpt_quotes_and_bounds() -> None:
    text = "\n".join(f"line {i}" for i in range(40))
    out = excerpt(text, lines=3)
    assert out == "> line 0\n> line 1\n> line 2\n> [...]"


def test_site_overrides_one_file_and_the_rest_comes_from_the_shipped_set(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "default/en/new-ticket.txt", "ours {{ ticket.number }}")
    t = Templates(tmp_path)
    out = t.render("default", "new-ticket", sample_context())
    assert out.text == "ours 2026112210000017"
    assert out.html is None  # the shipped HTML says something else: not sent beside ours
    reject = t.render("default", "reject", sample_context())
    assert "is closed" in reject.text  # shipped
    assert t.all_files() == ["default/en/new-ticket.txt"]


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("event", EVENTS)
def test_shipped_templates_render_lines_short_enough_to_go_unencoded(language: str,
                                                                    event: str) -> None:
    """compose sends a part as it is (7bit) only if no line is over 76 characters: with
    ordinary values, the shipped wording must not push an ASCII answer to
    quoted-printable (nor have it broken mid-word)."""
    out = Templates(None, language).render("default", event, sample_context(language))
    for part in (out.text, out.html or ""):
        assert max(map(len, part.splitlines()), default=0) <= 76, part


def test_an_edited_template_is_used_by_the_next_answer(tmp_path: Path) -> None:
    """A running daemon picks up template edits without a reload."""
    import os

    _write(tmp_path, "default/en/new-ticket.txt", "one")
    templates = Templates(tmp_path)
    assert templates.render("default", "new-ticket", sample_context()).text == "one"
    path = tmp_path / "default/en/new-ticket.txt"
    path.write_text("two", encoding="utf-8")
    mtime = path.stat().st_mtime + 10  # jinja2 notices a changed modification time
    os.utime(path, (mtime, mtime))
    assert templates.render("default", "new-ticket", sample_context()).text == "two"


def test_a_template_may_use_jinja2s_own_features(tmp_path: Path) -> None:
    _write(tmp_path, "default/en/new-ticket.txt",
           "{% for k, v in ticket.items() if k == 'number' %}{{ k }}={{ v }}{% endfor %} "
           "{{ customer.name|upper }} {{ ticket.get('nope', 'dflt') }}")
    out = Templates(tmp_path).render("default", "new-ticket", sample_context())
    assert out.text == "number=2026112210000017 ANA GARCÍA dflt"


def test_check_renders_customer_templates_as_a_stranger_sees_them(tmp_path: Path) -> None:
    """A site template that needs the ticket's title fails for a non-participant, whose
    answer has none: `templates check` says so before a stranger meets it."""
    from autoresponse.cli import check_templates

    site = tmp_path / "default" / "en"
    site.mkdir(parents=True)
    (site / "follow-up.txt").write_text("About: {{ ticket.title[0] }}\n", encoding="utf-8")
    (site / "agent-notification.txt").write_text("{{ ticket.title[0] }}\n", encoding="utf-8")
    problems = [p for p in check_templates(Templates(tmp_path))
                if "no text template" not in p]  # the other events are not in this folder
    assert len(problems) == 1 and "follow-up.txt:1: UndefinedError" in problems[0], problems


def test_shipped_templates_name_the_configured_subject_tag(tmp_path: Path, db_url: str,
                                                          store: Store) -> None:
    """Issue 17: a site whose hook is not `Ticket#` gets answers asking customers to keep
    its own tag, not a hard-coded `[Ticket#N]` that would not thread."""
    config = make_config(tmp_path, db_url, tickets={"hook": "Case#",
                                                    "subject_tag": "({hook}{number})"})
    d = answering_intake(config, store).process(
        build_mail(), Envelope("ana@customer.example", ("support@helpdesk.example",)))
    (row,) = outbox_rows(store)
    text = answer_text(row.message)
    assert f"(Case#{d.ticket_number})" in text
    assert "Ticket#" not in text
