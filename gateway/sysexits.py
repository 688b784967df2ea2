"""sysexits.h codes ticketgate exits with.

`ticketgate pipe` uses only EX_OK, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE (a message over
the size limit: bounced) and EX_TEMPFAIL: Postfix and procmail treat unknown codes as
permanent failures, so an unexpected error must become EX_TEMPFAIL, never a traceback's
exit 1. The others are for the CLI and `serve`.
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69  # serve could not start; the pipe: message too big (bounced)
EX_CANTCREAT = 73  # serve cannot write its database or spool (ownership, permissions)
EX_TEMPFAIL = 75
EX_CONFIG = 78  # a configuration the admin must fix
