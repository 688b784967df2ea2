"""Every reply the server sends for our own decisions, in one place.

aiosmtpd answers protocol errors itself (bad syntax, out-of-order commands); what is
here is what the intake's outcome or our failure turns into. Nothing here ever
carries an exception text: a failing server says 451 and logs the detail.
"""

from __future__ import annotations

from gateway.intake.outcome import Disposition

S250_SENDER_OK = "250 2.1.0 Sender OK"
S250_RECIPIENT_OK = "250 2.1.5 Recipient OK"
S354_START_DATA = "354 End data with <CR><LF>.<CR><LF>"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
S451_TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
S503_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
S501_SYNTAX_DATA = "501 5.5.4 Syntax: DATA"
S550_NO_SUCH_USER = "550 5.1.1 No such recipient here"
S552_TOO_BIG = "552 5.3.4 Message too big for this system"


def delivered(disposition: Disposition) -> str:
    """The 250 for a stored/ignored/duplicate message; the ticket number helps admins.

    Postfix copies this text into its log (`status=sent (250 ...)`), which is where an
    admin looks first when asked "did my mail arrive?".
    """
    ticket = f" ticket {disposition.ticket_number}" if disposition.ticket_number else ""
    return f"250 2.0.0 Ok: {disposition.outcome.value}{ticket}"
