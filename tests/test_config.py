"""Configuration: defaults work, errors name file and key, env overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ticketgate.toml"
    p.write_text(text, "utf-8")
    return p


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env={})
    assert cfg.source == "<defaults>"
    assert cfg.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'ticketgate.db'}"
    assert cfg.tickets.default_queue == "Postmaster"
    assert cfg.queue_names == ("Postmaster",)


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, '[tickets]\nhook = "Ticket#"\ngenrator = "date"\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(p), env={})
    assert str(p) in str(err.value)
    assert "tickets.genrator" in str(err.value)
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[tickets]\ngenerator = "random"\n', "tickets.generator", "must be one of"),
        ("[intake]\nstrict_recipients = 1\n", "intake.strict_recipients", "true or false"),
        ('[[queues]]\naddresses = ["a@b.c"]\n', "queues[0].name", "is required"),
        ('[[queues]]\nname = "A"\nfollow_up_closed = "ignore"\n',
         "queues[0].follow_up_closed", "must be one of"),
        ('[[queues]]\nname = "A"\naddresses = ["not-an-address"]\n',
         "queues[0].addresses[0]", "not an address"),
        ('[[queues]]\nname = "A"\n[[queues]]\nname = "A"\n', "queues[1].name", "twice"),
        ("[database\n", "-", "not valid TOML"),
        ("[lmtp]\nworkers = -1\n", "lmtp.workers", "between 0"),
        ("[lmtp]\nworkers = 65\n", "lmtp.workers", "between 0"),
    ],
)
def test_invalid_values_are_reported(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(str(write(tmp_path, text)), env={})
    assert err.value.key == key
    assert problem in err.value.problem


def test_lookup_order_explicit_then_env_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[tickets]\nsystem_id = "11"\n')
    other = tmp_path / "other.toml"
    other.write_text('[tickets]\nsystem_id = "22"\n')
    assert load_config(None, env={}).tickets.system_id == "11"
    assert load_config(None, env={"TICKETGATE_CONFIG": str(other)}).tickets.system_id == "22"
    third = tmp_path / "third.toml"
    third.write_text('[tickets]\nsystem_id = "33"\n')
    env = {"TICKETGATE_CONFIG": str(other)}
    assert load_config(str(third), env=env).tickets.system_id == "33"


def test_env_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, '[database]\nurl = "sqlite:///a.db"\n')
    env = {"TICKETGATE_DATABASE_URL": "postgresql+psycopg://u@h/db",
           "TICKETGATE_LMTP_LISTEN": "127.0.0.1:9000, unix:/tmp/x.sock"}
    cfg = load_config(str(p), env=env)
    assert cfg.database_url == "postgresql+psycopg://u@h/db"
    assert cfg.lmtp.listen == ("127.0.0.1:9000", "unix:/tmp/x.sock")


def test_relative_sqlite_path_resolves_against_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    p = sub / "t.toml"
    p.write_text('[database]\nurl = "sqlite:///data/x.db"\n')
    assert load_config(str(p), env={}).database_url == f"sqlite:///{sub.resolve()}/data/x.db"
