"""Where a message really comes from: DKIM (dkimpy), From alignment, trusted
Authentication-Results. Produces the `SenderVerdict` the intake puts on `Prepared`."""
