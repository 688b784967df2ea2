"""CLI handlers: init, db upgrade, spool list/replay; how a command's failure is printed."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from importlib import resources
from pathlib import Path

from .runtime import load_or_exit, note_defaults, setup_logging
from .sysexits import EX_CONFIG, EX_TEMPFAIL, EX_USAGE
from .terminal import printable

STARTER = "starter"


def cmd_init(args: argparse.Namespace) -> int:
    """Copy the starter config, rules and templates into DIR, and make a site secret;
    never overwrite a file."""
    target = Path(args.dir)
    secret = target / SITE_SECRET
    if args.secret_only:
        if secret.exists():
            print(f"ticketgate init: refusing to overwrite {secret}", file=sys.stderr)
            return 1
        target.mkdir(parents=True, exist_ok=True)
        write_site_secret(secret)
        print(f"wrote {secret} (mode 0600); restart the server to use it")
        return 0
    given = [d for d in (args.state_dir, args.run_dir) if d]
    if given and not (target.is_absolute() and all(Path(d).is_absolute() for d in given)):
        print("ticketgate init: --state-dir and --run-dir need absolute paths, and an "
              "absolute DIR", file=sys.stderr)
        return EX_USAGE
    state = Path(args.state_dir) if args.state_dir else target / "var"
    run = Path(args.run_dir) if args.run_dir else state / "run"
    root = resources.files("gateway").joinpath(STARTER)
    plan: list[tuple[Path, bytes]] = []
    for src, rel in _walk(root, Path()):
        data = src.read_bytes()
        if rel == Path("ticketgate.toml") and target.is_absolute():
            data = absolute_paths(data.decode(), target, state, run).encode()
        plan.append((target / rel, data))
    existing = [str(p) for p in [secret, *(p for p, _ in plan)] if p.exists()]
    if existing:
        print("ticketgate init: refusing to overwrite existing files:", file=sys.stderr)
        for p in existing:
            print(f"  {p}", file=sys.stderr)
        return 1
    for path, data in plan:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for folder in ("rules", "templates", *(() if args.state_dir else ("var",))):
        (target / folder).mkdir(parents=True, exist_ok=True)
    write_site_secret(secret)
    if args.state_dir or args.run_dir:
        print(f"the database and spool go to {state}, the hand-off socket to {run}: "
              "the service user must own them (docs/operations.md)")
    print(f"wrote {len(plan)} files and a site secret ({secret.name}, mode 0600) to "
          f"{target}/ — edit {target / 'ticketgate.toml'}, then "
          f"`ticketgate -c {target / 'ticketgate.toml'} serve`")
    return 0


# The starter config's relative paths, and where each goes in an absolute install.
_PATH_LINES = {
    'url = "sqlite:///var/ticketgate.db"': 'url = "sqlite:///{state}/ticketgate.db"',
    'spool_dir = "var/spool"': 'spool_dir = "{state}/spool"',
    'handoff_socket = "var/run/lmtp.sock"': 'handoff_socket = "{run}/lmtp.sock"',
    'dir = "rules"': 'dir = "{target}/rules"',
    'dir = "templates"': 'dir = "{target}/templates"',
    'site_secret_file = "site.secret"': 'site_secret_file = "{target}/site.secret"',
}


def absolute_paths(text: str, target: Path, state: Path, run: Path) -> str:
    """The starter config with absolute paths: an /etc install keeps its data in
    /var/lib and its socket in /run (`--state-dir`, `--run-dir`), not under /etc."""
    for relative, absolute in _PATH_LINES.items():
        if text.count(relative) != 1:
            raise AssertionError(f"starter config lost its line {relative!r}")
        text = text.replace(relative, absolute.format(state=state, run=run, target=target))
    return text


SITE_SECRET = "site.secret"  # the default of [verify] site_secret_file


def write_site_secret(path: Path) -> None:
    """256 random bits, hex, readable by the owner only (created so, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def _walk(node: object, rel: Path) -> list[tuple[object, Path]]:
    out: list[tuple[object, Path]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):  # type: ignore[attr-defined]
        if child.name.startswith((".", "__")):
            continue
        if child.is_dir():
            out.extend(_walk(child, rel / child.name))
        else:
            out.append((child, rel / child.name))
    return out


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ticketstore.db import make_engine, upgrade

    config = load_or_exit(args.config)
    setup_logging(args.verbose)
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin list is noise
    engine = make_engine(config.database_url, config.database.busy_timeout)
    upgrade(engine)
    engine.dispose()
    print(f"database schema is up to date ({engine.url.render_as_string(hide_password=True)})")
    return 0


def cmd_spool_list(args: argparse.Namespace) -> int:
    from .spool import entries

    config = load_or_exit(args.config)
    note_defaults(config)
    items = entries(config.path(config.intake.spool_dir))
    if not items:
        print("spool is empty")
    for entry in items:
        _raw, _env, meta = entry.read()
        print(printable(f"{entry.path.name}  {meta.get('quarantined_at', '?')}  "
                        f"attempts={meta.get('attempts', 1)}  {meta.get('error', '?')}"))
    return 0


def cmd_spool_replay(args: argparse.Namespace) -> int:
    """Process quarantined messages again; each one that is stored leaves the spool."""
    from .runtime import build_intake, open_store
    from .spool import entries

    config = load_or_exit(args.config)
    setup_logging(args.verbose)
    intake = build_intake(config, open_store(config))
    failed = 0
    items = entries(config.path(config.intake.spool_dir))
    for entry in items:
        raw, envelope, _meta = entry.read()
        try:
            disposition = intake.process(raw, envelope)
        except Exception as exc:
            failed += 1
            print(f"{entry.path.name}: still failing: {type(exc).__name__}: {exc}")
            continue
        entry.remove()
        print(f"{entry.path.name}: {disposition.outcome.value} "
              f"{disposition.ticket_number or ''}".rstrip())
    print(f"replayed {len(items) - failed} of {len(items)}")
    return 1 if failed else 0


def report_failure(exc: BaseException, args: argparse.Namespace) -> int | None:
    """One line instead of a traceback for what an admin fixes outside the code: a schema
    to upgrade (or a host to upgrade), a database that is down, locked or read-only.

    Returns the exit code (78 for the schema, 75 for the rest), or None for a bug, whose
    traceback is worth seeing.
    """
    from ticketstore.db import StoreUnavailable, is_transient

    if isinstance(exc, StoreUnavailable):
        print(f"ticketgate: {exc}", file=sys.stderr)
        return EX_CONFIG
    if not is_transient(exc):
        return None
    from .causes import cause_of
    from .config import ConfigError, load_config

    try:
        config = load_config(getattr(args, "config", None))
        url, timeout = config.database_url, config.database.busy_timeout
    except (ConfigError, OSError):
        url, timeout = None, None
    print(f"ticketgate: {cause_of(exc, url, timeout)}", file=sys.stderr)
    return EX_TEMPFAIL
