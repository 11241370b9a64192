"""Which store failures are a refusal of the values written (never cured by a retry), told
apart from a database away or a connection's own failure, with plain exception values."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError, StatementError

from store.errors import refused_for_its_values


class _PgError(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


def test_data_exceptions_and_values_refused_before_sending_are_refusals() -> None:
    for code in ("22000", "22003", "22021", "22P05"):
        assert refused_for_its_values(DBAPIError("INSERT", {}, _PgError(code)))
    assert refused_for_its_values(StatementError("bad value", "INSERT", {}, ValueError("high")))
    assert refused_for_its_values(StatementError("bad value", "INSERT", {}, TypeError("x")))
    assert refused_for_its_values(UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates"))


def test_a_database_away_or_a_connection_failing_is_not() -> None:
    for code in ("08006", "40P01", "53100", "57P01", "23505"):
        assert not refused_for_its_values(DBAPIError("INSERT", {}, _PgError(code)))
    assert not refused_for_its_values(OperationalError("INSERT", {}, Exception("locked")))
    assert not refused_for_its_values(StatementError("I/O", "INSERT", {}, OSError("gone")))
    assert not refused_for_its_values(TimeoutError())
    assert not refused_for_its_values(OSError("connection refused"))
