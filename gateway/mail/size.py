"""How big a message is, for the size limit.

A message's size is counted with each line end as one byte, as the sender's system (and
Postfix's `message_size_limit`) count it: LMTP and SMTP carry every line end as CRLF,
so a message of many short lines grows on the way (a pipe's hand-off to the daemon
converts LF to CRLF too), and counting the wire bytes would refuse mail that the MTA,
checking the same limit, accepted.
"""

from __future__ import annotations


def message_size(raw: bytes) -> int:
    """The size of `raw` with every CRLF counted as one byte."""
    return len(raw) - raw.count(b"\r\n")
