"""ticketgate: turns support email into helpdesk tickets."""

__version__ = "0.1.0"
