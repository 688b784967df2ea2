"""One typed configuration object, built and validated once at start.

The TOML file is mapped onto frozen dataclasses. Every key is checked against the
dataclass fields, so a typo is an error that names the file and the key instead of a
setting silently ignored. Relative paths are resolved against the config file's folder
(or the working directory for built-in defaults), so a config works wherever it is run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "TICKETGATE_CONFIG"
DEFAULT_CONFIG_NAME = "ticketgate.toml"
log = logging.getLogger("ticketgate.config")

# Keys an older ticketgate read and this one ignores, with what to do instead: a config
# that still sets one keeps working (with a warning) instead of failing to start.
DEPRECATED_KEYS = {
    ("lmtp", "engine"): "aiosmtpd is the only LMTP/SMTP engine now; remove the setting",
}


class ConfigError(Exception):
    """A configuration problem, phrased as `file: key: what is wrong`."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key != "-" else f"{source}: {problem}")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///var/ticketgate.db"
    # Seconds a writer waits for a SQLite lock before we give up and temp-fail (451/75).
    busy_timeout: float = 10.0
    pool_size: int = 5
    # PostgreSQL: let psycopg prepare frequent statements on the server. Off behind
    # PgBouncer in transaction mode older than 1.21 (docs/scale-out.md).
    prepared_statements: bool = True


@dataclass(frozen=True)
class TicketsConfig:
    hook: str = "Ticket#"
    generator: str = "date-checksum"
    system_id: str = "10"
    default_queue: str = "Postmaster"
    # Digits the per-day (or global) counter is padded to, as OTRS does.
    min_counter_size: int = 5
    # Also thread on a ticket number found only in the body (off: too easy to misthread).
    body_threading: bool = False
    # Subject of outgoing mail: "[Ticket#N] subject"; "{hook}" and "{number}" are replaced.
    subject_tag: str = "[{hook}{number}]"


FOLLOW_UP_POLICIES = ("reopen", "reject", "new-ticket")
# What a follow-up by ticket number from someone who is not a participant does
# (docs/identity.md, "Participants and strangers").
STRANGER_POLICIES = ("new-ticket", "accept", "hold")


@dataclass(frozen=True)
class QueueConfig:
    name: str
    addresses: tuple[str, ...] = ()
    follow_up_closed: str = "reopen"
    # False: the queue takes no new tickets (auto-reply "new-ticket-rejected", mail kept).
    accept_new: bool = True
    # Agent notification addresses for new tickets and follow-ups in this queue.
    notify: tuple[str, ...] = ()
    # Template set (a sub-folder of [templates] dir) used for this queue's auto-responses.
    templates: str = ""
    auto_response: bool = True
    # Send an acknowledgement for follow-ups too (off by default).
    follow_up_ack: bool = False
    # A follow-up by number from a non-participant: new-ticket | accept | hold.
    stranger_follow_up: str = "new-ticket"


@dataclass(frozen=True)
class IntakeConfig:
    # Refuse unknown recipients (550 5.1.1 / exit 67) instead of routing them to the default queue.
    strict_recipients: bool = False
    max_message_size: int = 25 * 1024 * 1024
    spool_dir: str = "var/spool"
    # Header fields left out of the duplicate check's content hash besides the built-in
    # list (gateway/intake/dedupe.py): what our own MX hosts or filters add. "X-Foo-*"
    # is a prefix.
    dedupe_ignore_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParticipantsConfig:
    # Anyone at the customer's domain takes part, but at a free-mail domain.
    same_domain: bool = True
    # A file of free-mail domains, one a line, replacing the shipped list ("" = shipped).
    freemail_file: str = ""
    # More free-mail domains, on top of the list.
    freemail_domains: tuple[str, ...] = ()
    # Our agents' own addresses: never made participants from To/Cc (the queues' notify
    # addresses are agents too).
    agents: tuple[str, ...] = ()


@dataclass(frozen=True)
class LmtpConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8024",)
    # Messages whose commits are grouped into one transaction at most.
    group_commit_max: int = 64
    # Intake worker processes serving the listeners: 0 = one per CPU (at most 8),
    # 1 = everything in the one `serve` process.
    workers: int = 0
    # Connections served at once by this gateway, over every listener (the master counts
    # them across workers); one more is answered `421 4.3.2` and closed. Postfix opens at
    # most lmtp_destination_concurrency_limit (20 by default) per destination.
    max_connections: int = 20
    # The master pings each intake worker this often; one that has not answered for three
    # intervals gets no new connections, and one silent for heartbeat_timeout is killed
    # and restarted.
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 20.0


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipeConfig:
    # Hand the message to a running daemon over LMTP on this Unix socket ("" = never).
    handoff_socket: str = "var/run/lmtp.sock"
    # Exit 75 instead of processing in-process when the daemon is not reachable.
    require_daemon: bool = False
    handoff_timeout: float = 30.0


@dataclass(frozen=True)
class RulesConfig:
    dir: str = "rules"
    # Longest text a regex condition is matched against (bounds backtracking cost).
    max_match_chars: int = 65536
    # Seconds between checks for changed rule files in the daemon (0 = only on SIGHUP).
    watch_interval: float = 2.0


@dataclass(frozen=True)
class TemplatesConfig:
    dir: str = "templates"
    language: str = "en"
    # Per customer domain or customer id, the template set to use instead of the queue's.
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AutoResponseConfig:
    enabled: bool = True
    max_per_day: int = 10
    company_name: str = "Support"
    # Senders that never get an answer (robots); matched against the local part.
    noreply_pattern: str = (
        r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?|"
        r"auto-?reply|daemon|root|abuse)([+-].*)?$"
    )
    loop_header: str = "X-Ticketgate-Loop"
    # From (and envelope sender) for queues without an address; "" = first queue address.
    from_address: str = ""
    # Customer answers for the whole site in the last hour; 0 = no limit.
    max_per_hour: int = 500
    # Customer answers to one recipient domain in the last hour; 0 = no limit.
    max_per_domain_per_hour: int = 50
    # Characters that start an address extension (Postfix's recipient_delimiter): the
    # daily limit counts `victim+x@` as `victim@`. "" = no extensions.
    recipient_delimiter: str = "+"
    # Bytes a customer answer may have (headers and parts); a bigger one is not sent.
    max_answer_size: int = 16384


@dataclass(frozen=True)
class DkimConfig:
    domain: str = ""
    selector: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class OutboundConfig:
    smarthost: str = "127.0.0.1:25"
    starttls: bool = False
    username: str = ""
    # The password is read from this file, never from the config itself.
    password_file: str = ""
    helo: str = ""
    timeout: float = 30.0
    max_attempts: int = 12
    retry_base: float = 60.0
    retry_max: float = 3600.0
    # Seconds a claimed outbox row belongs to the worker that claimed it; after that a
    # row left "sending" (its worker died) is taken over and sent by another.
    lease: float = 300.0
    dkim: DkimConfig = field(default_factory=DkimConfig)


@dataclass(frozen=True)
class VerifyConfig:
    # Verify DKIM signatures with dkimpy; false for sites whose MTA already does it (then
    # only a trusted Authentication-Results header gives a verdict).
    dkim: bool = True
    # authserv-ids (RFC 8601) of our own MTA: only their Authentication-Results are read.
    trusted_authserv_ids: tuple[str, ...] = ()
    # ARC sealers (their ARC-Seal d=) whose recorded DKIM results count when the author's
    # signature broke on the way (a mailing list's footer): e.g. ["lists.example.org"].
    trusted_arc_sealers: tuple[str, ...] = ()
    # Seconds all DNS lookups of one message may take together (a timeout: temperror).
    dns_timeout: float = 2.0
    # Seconds a DKIM key (or its absence) is remembered; failed lookups for a minute.
    dns_cache_ttl: float = 3600.0
    # DNS servers for DKIM keys ("192.0.2.53", "127.0.0.1:5353"); empty: the system's.
    nameservers: tuple[str, ...] = ()
    # The site secret (`ticketgate init` writes it, mode 0600): the key of our loop header.
    site_secret_file: str = "site.secret"


@dataclass(frozen=True)
class StatusConfig:
    listen: str = "127.0.0.1:8025"
    token: str = ""
    max_outbox_backlog: int = 1000
    max_spool_files: int = 0
    # /healthz fails after this many temp-failed (451) deliveries in a row (0: never) ...
    max_tempfail_streak: int = 5
    # ... or when more than this share of the deliveries in the last `tempfail_window`
    # seconds temp-failed (judged from 10 deliveries on; 1.0: never).
    max_tempfail_rate: float = 0.5
    tempfail_window: float = 300.0
    # ... or when an outbox message has failed this many attempts in a row (0: never).
    max_outbox_attempts: int = 3


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    queues: tuple[QueueConfig, ...] = ()
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    participants: ParticipantsConfig = field(default_factory=ParticipantsConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    pipe: PipeConfig = field(default_factory=PipeConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    autoresponse: AutoResponseConfig = field(default_factory=AutoResponseConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # Where the config came from and what relative paths are resolved against.
    source: str = "<defaults>"
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """Resolve a configured path relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def queue(self, name: str) -> QueueConfig:
        for q in self.queues:
            if q.name == name:
                return q
        return QueueConfig(name=name)

    @property
    def queue_names(self) -> tuple[str, ...]:
        names = [q.name for q in self.queues]
        if self.tickets.default_queue not in names:
            names.append(self.tickets.default_queue)
        return tuple(names)

    @property
    def database_url(self) -> str:
        """The URL with a relative SQLite path resolved against base_dir."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix):]
            if rest and rest != ":memory:":
                return prefix + str(self.path(rest).resolve())
        return url


# Environment overrides for what deployments change most: env var -> (section, key).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TICKETGATE_DATABASE_URL": ("database", "url"),
    "TICKETGATE_LMTP_LISTEN": ("lmtp", "listen"),
    "TICKETGATE_SMTP_LISTEN": ("smtp", "listen"),
    "TICKETGATE_SMARTHOST": ("outbound", "smarthost"),
    "TICKETGATE_STATUS_LISTEN": ("status", "listen"),
}


def find_config_file(explicit: str | None, env: typing.Mapping[str, str]) -> Path | None:
    """`-c PATH`, else $TICKETGATE_CONFIG, else ./ticketgate.toml, else None (defaults)."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(
    explicit: str | None = None, env: typing.Mapping[str, str] | None = None
) -> Config:
    env = os.environ if env is None else env
    path = find_config_file(explicit, env)
    if path is None:
        data: dict[str, Any] = {}
        source, base = "<defaults>", str(Path.cwd())
    else:
        source, base = str(path.absolute()), str(path.resolve().parent)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, "-", "no such file") from None
        except OSError as exc:
            raise ConfigError(source, "-", exc.strerror or str(exc)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "-", f"not valid TOML: {exc}") from None
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            value: Any = env[var]
            if _field_type(section, key) is not str:
                value = [v.strip() for v in value.split(",") if v.strip()]
            data.setdefault(section, {})[key] = value
    return config_from_dict(data, source=source, base_dir=base)


def config_from_dict(data: dict[str, Any], source: str = "<dict>", base_dir: str = ".") -> Config:
    data = _without_deprecated(data, source)
    cfg = _build(Config, data, source, prefix="", skip={"source", "base_dir"})
    cfg = dataclasses.replace(cfg, source=source, base_dir=base_dir)
    _validate(cfg)
    return cfg


def _without_deprecated(data: dict[str, Any], source: str) -> dict[str, Any]:
    for (section, key), advice in DEPRECATED_KEYS.items():
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            log.warning("%s: %s.%s is deprecated and ignored: %s", source, section, key, advice)
            data = {**data, section: {k: v for k, v in table.items() if k != key}}
    return data


def _field_type(section: str, key: str) -> Any:
    hints = typing.get_type_hints(Config)
    sub = typing.get_type_hints(hints[section])
    return sub[key]


def _build(cls: type, data: Any, source: str, prefix: str, skip: set[str] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix or "-", "must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - (skip or set())
    for key in data:
        if key not in names:
            raise ConfigError(source, _join(prefix, key), "unknown key")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, source, _join(prefix, key))
    required = [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in kwargs:
            raise ConfigError(source, _join(prefix, name), "is required")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(source, key, f"must be a list, not {_tname(value)}")
        return tuple(_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a table, not {_tname(value)}")
        _k, v_tp = typing.get_args(tp)
        return {str(k): _coerce(v_tp, v, source, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, types.UnionType):
        raise TypeError(f"unsupported config type {tp}")  # pragma: no cover
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"must be true or false, not {_tname(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"must be an integer, not {_tname(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"must be a number, not {_tname(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"must be a string, not {_tname(value)}")
        return value
    raise TypeError(f"unsupported config type {tp}")  # pragma: no cover


def _tname(value: Any) -> str:
    return {list: "a list", dict: "a table", bool: "a boolean", str: "a string",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")
_NAMESERVER = re.compile(r"^(?:[0-9.]+(?::\d{1,5})?|[0-9a-fA-F:]+|\[[0-9a-fA-F:]+\]:\d{1,5})$")
_AUTHSERV_ID = re.compile(r"^[A-Za-z0-9._-]+$")
GENERATORS = ("date-checksum", "date", "autoincrement")
# A header field name (printable ASCII but ":" and "*"), or a prefix of one ending in "*".
_HEADER_PATTERN = re.compile(r"[!-)+-9;-~]+\*?")


def _validate(cfg: Config) -> None:
    src = cfg.source
    t = cfg.tickets
    if t.generator not in GENERATORS:
        raise ConfigError(src, "tickets.generator", f"must be one of {', '.join(GENERATORS)}")
    if not t.system_id.isdigit():
        raise ConfigError(src, "tickets.system_id", "must be digits only")
    if not t.hook or any(c.isspace() for c in t.hook):
        raise ConfigError(src, "tickets.hook", "must be non-empty without spaces")
    if t.min_counter_size < 1 or t.min_counter_size > 12:
        raise ConfigError(src, "tickets.min_counter_size", "must be between 1 and 12")
    if not cfg.database.url:
        raise ConfigError(src, "database.url", "must not be empty")
    seen_names: set[str] = set()
    seen_addrs: dict[str, str] = {}
    for i, q in enumerate(cfg.queues):
        key = f"queues[{i}]"
        if not q.name.strip():
            raise ConfigError(src, f"{key}.name", "must not be empty")
        if q.name in seen_names:
            raise ConfigError(src, f"{key}.name", f"queue {q.name!r} is defined twice")
        seen_names.add(q.name)
        if q.follow_up_closed not in FOLLOW_UP_POLICIES:
            raise ConfigError(
                src, f"{key}.follow_up_closed", f"must be one of {', '.join(FOLLOW_UP_POLICIES)}"
            )
        if q.stranger_follow_up not in STRANGER_POLICIES:
            raise ConfigError(src, f"{key}.stranger_follow_up",
                              f"must be one of {', '.join(STRANGER_POLICIES)}")
        for j, addr in enumerate(q.addresses + q.notify):
            if not _ADDRESS.match(addr):
                raise ConfigError(src, f"{key}.addresses[{j}]", f"{addr!r} is not an address")
        for addr in q.addresses:
            other = seen_addrs.setdefault(addr.lower(), q.name)
            if other != q.name:
                raise ConfigError(src, f"{key}.addresses", f"{addr} already belongs to {other}")
    if not 0 <= cfg.lmtp.workers <= 64:
        raise ConfigError(src, "lmtp.workers", "must be between 0 (one per CPU) and 64")
    if not 1 <= cfg.lmtp.max_connections <= 100000:
        raise ConfigError(src, "lmtp.max_connections", "must be between 1 and 100000")
    if cfg.lmtp.heartbeat_interval <= 0:
        raise ConfigError(src, "lmtp.heartbeat_interval", "must be more than 0 seconds")
    if cfg.lmtp.heartbeat_timeout < 3 * cfg.lmtp.heartbeat_interval:
        raise ConfigError(src, "lmtp.heartbeat_timeout",
                          "must be at least three times lmtp.heartbeat_interval")
    if cfg.intake.max_message_size < 1024:
        raise ConfigError(src, "intake.max_message_size", "must be at least 1024 bytes")
    if cfg.outbound.lease < max(60.0, 2 * cfg.outbound.timeout):
        raise ConfigError(src, "outbound.lease",
                          "must be at least 60 seconds and twice outbound.timeout")
    for i, name in enumerate(cfg.intake.dedupe_ignore_headers):
        if not _HEADER_PATTERN.fullmatch(name):
            raise ConfigError(src, f"intake.dedupe_ignore_headers[{i}]",
                              f"{name!r} is not a header field name (a prefix ends in *)")
    for key in ("max_per_day", "max_per_hour", "max_per_domain_per_hour"):
        if getattr(cfg.autoresponse, key) < 0:
            raise ConfigError(src, f"autoresponse.{key}", "must not be negative")
    if cfg.autoresponse.max_answer_size < 2048:
        raise ConfigError(src, "autoresponse.max_answer_size", "must be at least 2048 bytes")
    if re.search(r"[\sA-Za-z0-9@.]", cfg.autoresponse.recipient_delimiter):
        raise ConfigError(src, "autoresponse.recipient_delimiter",
                          "must be punctuation such as + or - (not a letter, digit, @ or .)")
    st = cfg.status
    for key in ("max_tempfail_streak", "max_outbox_attempts"):
        if getattr(st, key) < 0:
            raise ConfigError(src, f"status.{key}", "must not be negative (0 turns the check off)")
    if not 0.0 < st.max_tempfail_rate <= 1.0:
        raise ConfigError(src, "status.max_tempfail_rate",
                          "must be a share above 0 and at most 1.0 (1.0 turns the check off)")
    if st.tempfail_window <= 0:
        raise ConfigError(src, "status.tempfail_window", "must be a positive number of seconds")
    if cfg.autoresponse.from_address and not _ADDRESS.match(cfg.autoresponse.from_address):
        raise ConfigError(src, "autoresponse.from_address", "is not an address")
    try:
        re.compile(cfg.autoresponse.noreply_pattern)
    except re.error as exc:
        raise ConfigError(src, "autoresponse.noreply_pattern", f"bad regex: {exc}") from None
    v = cfg.verify
    if not 0 < v.dns_timeout <= 30:
        raise ConfigError(src, "verify.dns_timeout", "must be more than 0 and at most 30 seconds")
    if v.dns_cache_ttl < 0:
        raise ConfigError(src, "verify.dns_cache_ttl", "must not be negative")
    for i, server in enumerate(v.nameservers):
        if not _NAMESERVER.match(server):
            raise ConfigError(src, f"verify.nameservers[{i}]",
                              f"{server!r} is not an IP address, optionally with :port")
    for i, sealer in enumerate(v.trusted_arc_sealers):
        if not _AUTHSERV_ID.match(sealer) or "." not in sealer:
            raise ConfigError(src, f"verify.trusted_arc_sealers[{i}]",
                              f"{sealer!r} is not a domain (the ARC-Seal's d=)")
    for i, ident in enumerate(v.trusted_authserv_ids):
        if not _AUTHSERV_ID.match(ident):
            raise ConfigError(src, f"verify.trusted_authserv_ids[{i}]",
                              f"{ident!r} is not an authserv-id (a host name, e.g. mx.example.com)")
    for i, addr in enumerate(cfg.participants.agents):
        if not _ADDRESS.match(addr):
            raise ConfigError(src, f"participants.agents[{i}]", f"{addr!r} is not an address")
    ff = cfg.participants.freemail_file
    if ff and not cfg.path(ff).is_file():
        raise ConfigError(src, "participants.freemail_file", f"{cfg.path(ff)} is not a file")
    for i, domain in enumerate(cfg.participants.freemail_domains):
        if not domain or "@" in domain or any(c.isspace() for c in domain):
            raise ConfigError(src, f"participants.freemail_domains[{i}]",
                              f"{domain!r} is not a domain")
    d = cfg.outbound.dkim
    if d.domain and not (d.selector and d.key_file):
        raise ConfigError(src, "outbound.dkim", "domain needs selector and key_file too")


def read_site_secret(config: Config) -> bytes | None:
    """The site secret's bytes, or None when the file is missing or empty (a site made
    before `ticketgate init` wrote one). Read once at start by whoever signs or checks
    our loop header; the value is never logged."""
    path = config.path(config.verify.site_secret_file)
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    return data or None
