"""The systemd units: `systemd-analyze verify` clean, and the settings serve relies on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import integration_missing

UNITS = Path(__file__).parent.parent / "systemd"
INSTALLED = "/opt/ticketgate/venv/bin/ticketgate"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_service_is_type_notify_with_watchdog_reload_and_hardening() -> None:
    svc = _unit("ticketgate.service")["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"].endswith(" serve")
    assert "kill -HUP $MAINPID" in svc["ExecReload"]
    assert int(svc["WatchdogSec"]) > 0
    for key, value in {"User": "ticketgate", "StateDirectory": "ticketgate",
                       "RuntimeDirectory": "ticketgate", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():
        assert svc[key] == value, key


def test_service_fixes_glibcs_mmap_threshold() -> None:
    """What keeps a 25 MB message's buffers from staying resident after it is stored."""
    svc = _unit("ticketgate.service")["Service"]
    name, _eq, value = svc["Environment"].partition("=")
    assert name == "GLIBC_TUNABLES"
    assert "glibc.malloc.mmap_threshold=131072" in value.split(":")


def test_socket_unit_activates_the_service_with_lmtp_sockets() -> None:
    sock = _unit("ticketgate.socket")["Socket"]
    assert sock["Service"] == "ticketgate.service"
    assert sock["FileDescriptorName"] == "lmtp"
    # The service must not delete the folder the socket unit's socket file lives in.
    assert _unit("ticketgate.service")["Service"]["RuntimeDirectoryPreserve"] == "yes"


def test_outbox_timer_drives_the_oneshot_service() -> None:
    assert _unit("ticketgate-outbox.service")["Service"]["ExecStart"].endswith("outbox send")
    assert _unit("ticketgate-outbox.timer")["Timer"]["OnUnitActiveSec"]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        integration_missing("systemd-analyze")
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    ticketgate = Path(sys.executable).with_name("ticketgate")
    if not ticketgate.exists():
        pytest.fail(f"{ticketgate} missing: install the project (pip install -e .)")
    names = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer",
                                                                  ".socket"))
    assert "ticketgate.service" in names
    for name in names:
        text = (UNITS / name).read_text().replace(INSTALLED, str(ticketgate))
        (tmp_path / name).write_text(text)
    # --man=no: a minimal Debian with systemd has no `man`, and verify would fail on
    # Documentation=man:... (the units' content is what is checked, not the man pages).
    out = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)],
                         capture_output=True, text=True, timeout=120, check=False)
    # verify exits 0 on unknown keys and bad values, but names the file: any mention fails.
    complaints = [line for line in (out.stdout + out.stderr).splitlines()
                  if str(tmp_path) in line or any(n in line for n in names)]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr
