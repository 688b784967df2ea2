"""docs/operations.md works as written: every command of its `sh` blocks is run, in order.

The manual's absolute paths (/opt/ticketgate, /etc/ticketgate, /var/lib/ticketgate, ...)
are moved under one temporary folder, and its ports to free ones; nothing else is changed.
`apt-get`, `systemctl` and `journalctl` need a package mirror or a running systemd: they
are checked (the units they name ship in systemd/), not run; `systemctl enable --now`
is played by starting the unit's ExecStart as its User=, as systemd would.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import integration_missing

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
UNITS = ROOT / "systemd"
NOT_RUN = ("apt-get", "systemctl", "journalctl")
MOVED = ("/opt/ticketgate", "/etc/ticketgate", "/var/lib/ticketgate", "/run/ticketgate",
         "/var/backups/ticketgate", "/etc/systemd/system")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the distribution's python3, not a pyenv


def commands(text: str) -> list[str]:
    """The command lines of every ```sh block, in document order."""
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        out += [line for line in block.splitlines() if line.strip()
                and not line.lstrip().startswith("#")]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A folder the service user can traverse (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="tg-manual-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    subprocess.run(["pkill", "-f", f"{base}/opt/ticketgate/venv/bin/ticketgate"], check=False)
    shutil.rmtree(base, ignore_errors=True)


def test_the_manual_runs_only_commands_it_can_check() -> None:
    lines = commands(DOC.read_text())
    assert len(lines) > 15
    for line in lines:
        verb = shlex.split(line)[0]
        assert verb not in ("sudo", "su"), f"{line}: the manual uses runuser"
        if line == "systemctl daemon-reload":
            continue
        if verb in ("systemctl", "journalctl"):
            named = [w for w in shlex.split(line) if w.startswith("ticketgate")]
            assert named and all((UNITS / w).exists() for w in named), line


def test_the_manual_works_as_written(sandbox: Path) -> None:
    if os.geteuid() != 0:
        integration_missing("root (useradd, runuser, chown)")
    for tool in ("runuser", "useradd", "sqlite3", "curl"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            integration_missing(tool)
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"],
                      check=False).returncode != 0:
        integration_missing("python3-venv")
    src = sandbox / "src" / "ticketgate"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "var", "*.egg-info", "__pycache__", ".*cache"))
    (sandbox / "etc" / "systemd" / "system").mkdir(parents=True)
    lmtp, status = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TICKETGATE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=SYSTEM_PATH, SRC=str(src), TICKETGATE_LMTP_LISTEN=f"127.0.0.1:{lmtp}",
               TICKETGATE_STATUS_LISTEN=f"127.0.0.1:{status}")
    service = _unit("ticketgate.service")["Service"]

    def moved(line: str) -> str:
        for path in MOVED:
            line = line.replace(path, f"{sandbox}{path}")
        return line.replace("127.0.0.1:8025", f"127.0.0.1:{status}")

    daemon: subprocess.Popen[bytes] | None = None
    try:
        for line in commands(DOC.read_text()):
            verb = shlex.split(line)[0]
            if verb in NOT_RUN:
                if "enable --now ticketgate.service" in line:
                    daemon = _start_like_systemd(service, moved, sandbox, env, status)
                continue
            if verb == "useradd" and _user_exists("ticketgate"):
                continue
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", moved(line)], env=env,
                                  capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if "PRAGMA integrity_check" in line:
                assert done.stdout.strip() == "ok"
            if "/healthz" in line:
                assert json.loads(done.stdout)["status"] == "ok", done.stdout
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
    db = sandbox / "var" / "lib" / "ticketgate" / "ticketgate.db"
    assert db.stat().st_uid == _uid("ticketgate")


def _start_like_systemd(service: configparser.SectionProxy, moved: Callable[[str], str],
                        sandbox: Path, env: dict[str, str], status: int
                        ) -> subprocess.Popen[bytes]:
    user = service["User"]
    run_dir = sandbox / "run" / service["RuntimeDirectory"]
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, user, service["Group"])
    exec_start = moved(service["ExecStart"])
    log = sandbox / "serve.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(["runuser", "-u", user, "--", *shlex.split(exec_start)],
                                  env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{status}/healthz", timeout=2):
                return daemon
        except OSError:
            time.sleep(0.5)
    daemon.kill()
    daemon.wait(timeout=10)
    pytest.fail(f"ticketgate serve did not answer /healthz within 60 s:\n{log.read_text()}")


def _user_exists(name: str) -> bool:
    return subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0


def _uid(name: str) -> int:
    return int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                              check=True).stdout)
