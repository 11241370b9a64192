"""The `InsightsBackend` interface and the values it trades in (pure data, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

InsightKind = Literal["decision", "action_item", "question", "summary"]


@dataclass(frozen=True, slots=True)
class FinalLine:
    """One stored final as insights read it."""

    segment_no: int
    text: str
    start_s: float = 0.0
    speaker: str | None = None
    source: str = "mic"


@dataclass(frozen=True, slots=True)
class Insight:
    """One tip: a decision, an action item, a question or a short summary, with its evidence."""

    kind: InsightKind
    text: str
    segment_nos: tuple[int, ...]
    owner: str | None = None
    due: str | None = None


@dataclass(frozen=True, slots=True)
class ActionItem:
    text: str
    owner: str | None = None
    due: str | None = None


@dataclass(frozen=True, slots=True)
class MeetingNotes:
    """Post-meeting notes; every backend produces this shape."""

    summary: str
    decisions: tuple[str, ...] = ()
    action_items: tuple[ActionItem, ...] = ()
    questions: tuple[str, ...] = ()
    backend: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class InsightsBackend(Protocol):
    """Turns finals into tips and notes. `rules` (offline default) and `llm` implement it."""

    name: str

    async def tips(
        self, window: Sequence[FinalLine], recent: Sequence[Insight], language: str
    ) -> list[Insight]:
        """Items found in `window` (finals not yet covered, oldest first), best first.

        `recent` are tips already published for the meeting, for the backend to avoid repeating.
        The LLM backend returns at most one item; an empty list means nothing worth a tip.
        Raises `InsightsUnavailable` when the backend cannot answer (timeout, breaker open).
        """
        ...

    async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
        """Notes over a whole transcript (the backend chunks what exceeds its context)."""
        ...

    async def aclose(self) -> None: ...


class InsightsUnavailable(Exception):
    """The backend could not answer now; the caller retries on its next run, not before
    `retry_after_s` (an open breaker's cool-down)."""

    def __init__(self, message: str = "", *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendResting(InsightsUnavailable):
    """Not asked at all: the backend's breaker is open after failures of other calls. No
    attempt of the caller's was spent on it."""
