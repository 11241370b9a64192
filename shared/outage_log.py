"""One warning per outage, not one per round, for a loop that retries an operation forever (a
poll of the database, a refresh): the first failure is logged, the rest of the outage is not,
and the recovery is, when asked."""

from __future__ import annotations

from typing import Any


class OutageLog:
    __slots__ = ("_failing", "_failing_event", "_log", "_recovered_event")

    def __init__(self, log: Any, failing: str, recovered: str | None = None) -> None:
        self._log = log
        self._failing_event = failing
        self._recovered_event = recovered
        self._failing = False

    def failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._log.warning(self._failing_event, error=type(exc).__name__)
        self._failing = True

    def succeeded(self) -> None:
        if self._failing and self._recovered_event is not None:
            self._log.info(self._recovered_event)
        self._failing = False
