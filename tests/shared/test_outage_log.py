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


def test_a_stdlib_loggers_outage_lines_warn_once_then_debug(caplog) -> None:
    import logging

    from shared.outage_log import OutageLines

    log = logging.getLogger("test.outage_lines")
    lines = OutageLines(log)
    with caplog.at_level(logging.DEBUG, logger="test.outage_lines"):
        for n in range(3):
            lines.failed("link lost: %s", f"refused {n}")
        lines.succeeded("back")
        lines.succeeded("back")  # not failing: nothing
        lines.failed("link lost: %s", "again")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("WARNING", "link lost: refused 0"),
        ("DEBUG", "link lost: refused 1"),
        ("DEBUG", "link lost: refused 2"),
        ("INFO", "back"),
        ("WARNING", "link lost: again"),
    ]
