"""Exit codes of `ticketgate pipe` (sysexits.h), the only ones it may use.

Postfix and procmail treat unknown codes as permanent failures: an unexpected error
must become EX_TEMPFAIL, never a traceback's exit 1.
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_TEMPFAIL = 75
