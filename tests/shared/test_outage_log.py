"""OutageLog: one warning per outage, and the recovery when asked."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from shared.outage_log import OutageLog


def test_one_warning_per_outage_and_one_line_when_it_ends() -> None:
    outage = OutageLog(structlog.get_logger(), "claims failing", "claims working again")
    with capture_logs() as lines:
        outage.succeeded()  # nothing to say while all is well
        for _ in range(3):
            outage.failed(ConnectionRefusedError())
        outage.succeeded()
        outage.succeeded()
        outage.failed(TimeoutError())
    assert [(line["log_level"], line["event"], line.get("error")) for line in lines] == [
        ("warning", "claims failing", "ConnectionRefusedError"),
        ("info", "claims working again", None),
        ("warning", "claims failing", "TimeoutError"),
    ]


def test_without_a_recovery_line_only_the_warnings_are_logged() -> None:
    outage = OutageLog(structlog.get_logger(), "rounds failing")
    with capture_logs() as lines:
        outage.failed(OSError())
        outage.succeeded()
        outage.failed(OSError())
    assert [line["event"] for line in lines] == ["rounds failing", "rounds failing"]
