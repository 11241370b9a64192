"""Transcript persistence, migrations and export formats. Never imports `gateway`."""
