"""An ingest stream's unexpected failure is logged by kind and place, not by what it says (a
validation error quotes its input: a transcript)."""

from __future__ import annotations

from gateway.ws.ingest import _where


def test_an_unexpected_failure_is_named_without_its_message() -> None:
    try:
        raise ValueError("the board approved the merger")
    except ValueError as exc:
        failure = exc
    where = _where(failure)
    assert where.startswith("ValueError at test_ingest_failure_log.py:")
    assert "merger" not in where
    assert _where(None) == "None"
