"""The subject parser: tags anywhere, prefixes in many languages, property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mail.subject import find_numbers, strip_tags, tag_subject

HOOK = "Ticket#"
N = "2026112210000013"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")

PREFIXES = ["Re:", "RE:", "AW:", "WG:", "Fwd:", "FW:", "SV:", "VS:", "Antw:", "Odp:", "RV:",
            "R:", "TR:", "Re[2]:", "RE (3):", "回复:", "答复：", "回覆:", "转发:", "返信:",
            "転送:", "I:", "Rif:", "Enc:", "RES:", "YNT:", "VB:", "PD:", "Doorst:"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_tag_after_any_prefix_is_found_and_prefix_stripped(prefix: str) -> None:
    subject = f"{prefix} [Ticket#{N}] Drucker kaputt"
    assert find_numbers(subject, HOOK) == [N]
    assert strip_tags(subject, HOOK) == "Drucker kaputt"


@pytest.mark.parametrize(
    "subject",
    [
        f"[Ticket#{N}] Drucker kaputt",
        f"Drucker kaputt [Ticket#{N}]",
        f"Drucker [Ticket#{N}] kaputt",
        f"Ticket#: {N} Drucker kaputt",
        f"Ticket# {N} Drucker kaputt",
        f"Ticket#{N}: Drucker kaputt",
        f"[ Ticket# {N} ] Drucker kaputt",
        f"[ticket#{N}] Drucker kaputt",  # case-insensitive hook
        f"AW: WG: Re: [Ticket#{N}] AW: [Ticket#{N}] Drucker kaputt",  # repeated
        f"［Ｔｉｃｋｅｔ＃{N}］ Drucker kaputt",  # full-width hook
        "Re: [Ticket#" + N.translate(FULLWIDTH) + "] Drucker kaputt",  # full-width digits
        f"Re:\t[Ticket#{N}]\u3000Drucker kaputt",
    ],
)
def test_tag_forms(subject: str) -> None:
    assert find_numbers(subject, HOOK) == [N]
    assert strip_tags(subject, HOOK) == "Drucker kaputt"


def test_several_numbers_in_order_without_duplicates() -> None:
    s = "Re: [Ticket#111] [Ticket#222] Ticket#: 111 x"
    assert find_numbers(s, HOOK) == ["111", "222"]


def test_number_glued_to_more_digits_is_not_cut() -> None:
    assert find_numbers(f"Ticket#{N}9", HOOK) == [N + "9"]


def test_no_tag_no_number() -> None:
    assert find_numbers("Invoice 2026112210000013 overdue", HOOK) == []
    assert find_numbers("Ticket# abc", HOOK) == []
    assert find_numbers("Ticket#7", HOOK) == []  # one digit is not a ticket number


def test_custom_hook() -> None:
    assert find_numbers("AW: [Anfrage-Nr. 2026112210000013] x", "Anfrage-Nr.") == [N]
    assert strip_tags("AW: [Anfrage-Nr. 2026112210000013] x", "Anfrage-Nr.") == "x"


def test_titles_keep_the_customers_characters() -> None:
    assert strip_tags("Re: 見積書①の件（至急）", HOOK) == "見積書①の件（至急）"


def test_tag_subject() -> None:
    assert tag_subject("AW: Re: [Ticket#1234] Drucker", HOOK, N) == f"[Ticket#{N}] Drucker"
    assert tag_subject("", HOOK, N) == f"[Ticket#{N}]"
    assert tag_subject("x", HOOK, N, "{hook}{number}:") == f"Ticket#{N}: x"


# -- properties ------------------------------------------------------------------------

numbers_st = st.from_regex(r"\A[1-9][0-9]{5,19}\Z")
prefix_st = st.lists(st.sampled_from(PREFIXES), max_size=5).map(" ".join)
tag_st = st.sampled_from(["[{h}{n}]", "[{h} {n}]", "{h}: {n} ", "{h} {n} ", "{h}{n} "])
hooks_st = st.sampled_from(["Ticket#", "Anfrage#", "Req-", "TN:", "ＩＤ"])


@given(numbers_st, prefix_st, st.text(max_size=40), st.text(max_size=40), tag_st, hooks_st)
def test_any_number_tagged_into_any_subject_is_found(
    number: str, prefixes: str, before: str, after: str, tag: str, hook: str
) -> None:
    subject = f"{prefixes} {before} {tag.format(h=hook, n=number)} {after}"
    assert number in find_numbers(subject, hook)


@given(st.text(max_size=120), hooks_st)
def test_strip_tags_is_idempotent(subject: str, hook: str) -> None:
    once = strip_tags(subject, hook)
    assert strip_tags(once, hook) == once
    assert find_numbers(once, hook) == []


@given(st.text(max_size=120), numbers_st, hooks_st)
def test_tagged_subject_threads_and_strips_back(subject: str, number: str, hook: str) -> None:
    tagged = tag_subject(subject, hook, number)
    assert find_numbers(tagged, hook)[0] == number
    assert strip_tags(tagged, hook) == strip_tags(subject, hook)


@given(st.text(), st.text(max_size=12))
def test_random_unicode_never_crashes(subject: str, hook: str) -> None:
    hook = hook or "#"
    for n in find_numbers(subject, hook):
        assert n.isascii() and n.isdigit()
    assert isinstance(strip_tags(subject, hook), str)
    assert isinstance(tag_subject(subject, hook, "123"), str)
