"""Auto-responses and outbound mail: templates, loop safety, outbox, DKIM.

The intake core calls a `Responder` (gateway.intake.ports) inside the message's
transaction once the ticket and article are stored; it writes outbox rows and events
there, never sends directly.
"""
