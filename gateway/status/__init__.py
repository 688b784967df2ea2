"""Read-only status page, JSON, /healthz and /metrics, served by `ticketgate serve`.

Only the daemon imports this package (jinja2 and prometheus-client stay out of the pipe).
"""
