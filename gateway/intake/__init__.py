"""The intake core: raw bytes + envelope in, a Disposition out, one transaction."""
