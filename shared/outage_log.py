"""One warning per outage, not one per round, for a loop that retries an operation forever (a
poll of the database, a refresh): the first failure is logged, the rest of the outage is not,
and the recovery is, when asked."""

from __future__ import annotations

import logging
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


class OutageLines:
    """The same for a stdlib logger whose lines say more than the exception's type: the first
    failure of an outage at WARNING, the rest at DEBUG, the recovery at INFO when asked."""

    __slots__ = ("_failing", "_log")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._failing = False

    def failed(self, msg: str, *args: object) -> None:
        self._log.log(logging.DEBUG if self._failing else logging.WARNING, msg, *args)
        self._failing = True

    def succeeded(self, recovered: str | None = None, *args: object) -> None:
        if self._failing and recovered is not None:
            self._log.info(recovered, *args)
        self._failing = False
