"""`ticketgate serve`: LMTP/SMTP listeners in front of the intake core.

Modules: `listeners` (address syntax), `activation` (systemd's sockets), `protocol`
(aiosmtpd's LMTP/SMTP sessions, registered for a clean shutdown), `handler` (aiosmtpd
handler hooks: size, recipients, per-recipient replies), `groupcommit` (one writer
thread committing batches), `workers`/`worker` (intake worker processes), `sdnotify`
(systemd), `app` (start, reload, stop). Only the CLI imports this package.
"""
