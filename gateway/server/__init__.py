"""`ticketgate serve`: LMTP/SMTP listeners in front of the intake core.

Modules: `listeners` (address syntax), `replies` (every reply we send, named),
`protocol` (aiosmtpd subclasses: DATA reading, SIZE, 451 on failure), `handler`
(recipient checks, prepare off the loop, per-recipient replies), `groupcommit` (one
writer thread committing batches), `sdnotify` (systemd), `app` (start, reload, stop).
"""
