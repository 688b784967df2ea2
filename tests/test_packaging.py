"""A real (non-editable) wheel carries every package, migration, template and starter file.

The editable install used for development finds everything through the checkout, so a
module or data folder missing from pyproject.toml would only show up in production.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "rules", "ticketstore", "autoresponse")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: setuptools reuses an in-tree build/ folder, whose stale
    # files would hide a package missing from pyproject.toml.
    src = tmp_path_factory.mktemp("src") / "ticketgate"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "var", "*.egg-info", "__pycache__", ".*cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    [whl] = out.glob("ticketgate-*.whl")
    return zipfile.ZipFile(whl), done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(build: tuple[zipfile.ZipFile, str]) -> zipfile.ZipFile:
    return build[0]


def test_build_warns_about_no_package_data(build: tuple[zipfile.ZipFile, str]) -> None:
    """`make run` on a fresh clone printed ~150 lines of "Package would be ignored"."""
    warnings = [line for line in build[1].splitlines() if "absent from the `packages`" in line]
    assert not warnings, "\n".join(warnings)


def _source_files() -> set[str]:
    files: set[str] = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(ROOT).as_posix())
    return files


def test_wheel_contains_every_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = sorted(f for f in _source_files() if f not in names)
    assert not missing, f"not packaged: {missing}"


def test_wheel_has_the_console_script(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "ticketgate = gateway.cli:main" in wheel.read(entry_points).decode()
