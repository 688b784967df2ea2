"""The configuration reference documents every key the config loader accepts."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from gateway.config import Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _keys(cls: type, prefix: str = "") -> list[str]:
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("source", "base_dir"):
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += _keys(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
            out += _keys(args[0], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _sections() -> dict[str, str]:
    """Top-level table name -> the text of the doc section that covers it."""
    covered: dict[str, str] = {}
    for chunk in DOC.read_text("utf-8").split("\n## ")[1:]:
        header, _, body = chunk.partition("\n")
        for name in re.findall(r"`\[\[?([a-z_]+)", header):
            covered.setdefault(name, "")
            covered[name] += body
    return covered


def test_every_config_key_is_documented() -> None:
    sections = _sections()
    missing = []
    for key in _keys(Config):
        top, rest = key.split(".", 1)
        text = sections.get(top, "")
        if f"`{rest}`" not in text and f"`{key}`" not in text:
            missing.append(key)
    assert not missing, f"undocumented in {DOC.name}: {missing}"


def test_the_check_sees_nested_and_list_keys() -> None:
    keys = _keys(Config)
    assert {"outbound.dkim.key_file", "queues.follow_up_closed", "lmtp.listen"} <= set(keys)
