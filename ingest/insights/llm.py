"""`llm`: insights from any OpenAI-compatible chat-completions endpoint.

OpenAI, Ollama, vLLM, llama.cpp's server and LM Studio all take `POST {url}/chat/completions`.
Each call asks for one JSON object that fits a schema: with `response_format: json_schema`
(structured output) where the server takes it, and from the prompt alone where it refuses that
field (it is then left off for the backend's lifetime). The answer is validated with pydantic
either way; an answer that does not fit (not JSON, wrong fields, a truncated reply, evidence that
is not in the window) is dropped and counted in `malformed`, never published.

Each attempt is bounded by `timeout_s` as a whole (connecting, and a server that trickles its
answer), and its answer by `MAX_ANSWER_BYTES`; connection errors, timeouts, 429 and 5xx are
retried `retries` times; calls that still fail feed a circuit breaker (ingest.engines.breaker)
which, once open, refuses calls at once with `InsightsUnavailable` until its cool-down has passed.
A call that ends any other way (cancelled by its caller, an error of ours) hands back the
breaker's half-open probe. Prompts are files beside this module (`prompts/`). No transcript text
is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.engines.breaker import BreakerState, CircuitBreaker
from ingest.insights.base import (
    ActionItem,
    BackendResting,
    FinalLine,
    Insight,
    InsightsUnavailable,
    MeetingNotes,
)
from ingest.insights.rules import DUPLICATE_OVERLAP, overlap

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# An answer is at most `max_tokens` tokens: this is far above any, and bounds a runaway server.
MAX_ANSWER_BYTES = 1 << 20


class AnswerTooLarge(Exception):
    pass


def prompt(name: str) -> str:
    """A prompt file shipped with the package (`ingest/insights/prompts/<name>.md`)."""
    return resources.files("ingest.insights").joinpath(f"prompts/{name}.md").read_text("utf-8")


class TipAnswer(BaseModel):
    """What the model answers for live tips: at most one item."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["decision", "action_item", "question", "none"]
    text: str = Field(default="", max_length=400)
    owner: str | None = Field(default=None, max_length=80)
    due: str | None = Field(default=None, max_length=80)
    segment_nos: list[int] = Field(default_factory=list, max_length=64)


class ActionItemAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1, max_length=400)
    owner: str | None = Field(default=None, max_length=80)
    due: str | None = Field(default=None, max_length=80)


class NotesAnswer(BaseModel):
    """What the model answers for notes (of the whole meeting or of one part of it)."""

    model_config = ConfigDict(extra="ignore")

    summary: str = Field(max_length=4000)
    decisions: list[str] = Field(default_factory=list, max_length=50)
    action_items: list[ActionItemAnswer] = Field(default_factory=list, max_length=50)
    questions: list[str] = Field(default_factory=list, max_length=50)


@dataclass(frozen=True)
class LlmConfig:
    url: str  # the API base, e.g. http://127.0.0.1:11434/v1 (Ollama) or https://api.openai.com/v1
    model: str
    api_key: str | None = None
    timeout_s: float = 20.0  # one attempt, connecting included
    retries: int = 1  # more attempts after a connection error, timeout, 429 or 5xx
    max_tokens: int = 400  # of one tip's answer
    # Of one notes answer: its decisions, action items and questions (up to 50 each) need room;
    # at 400 a model's notes of a busy meeting were cut off, and dropped, every time.
    notes_max_tokens: int = 2048
    context_chars: int = 6000  # transcript per call; longer meetings are mapped, then reduced
    breaker_failures: int = 3  # failed calls in a row that open the breaker
    breaker_cooldown_s: float = 60.0


class LlmInsights:
    """The `InsightsBackend` over an OpenAI-compatible server (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        config: LlmConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=config.url.rstrip("/"),
            headers=headers,
            timeout=config.timeout_s,
            follow_redirects=False,
            transport=transport,
        )
        self._breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self._clock = clock
        self._structured = True  # until the server refuses `response_format`
        self.malformed = 0  # answers dropped because they did not fit the schema

    async def tips(
        self, window: Sequence[FinalLine], recent: Sequence[Insight], language: str
    ) -> list[Insight]:
        if not window:
            return []
        noted = "\n".join(f"- {tip.kind}: {tip.text}" for tip in recent) or "(none)"
        user = (
            f"Meeting language: {language}\n\nAlready noted:\n{noted}\n\n"
            f"New lines:\n{_transcript(window)}"
        )
        answer = await self._complete(prompt("tip"), user, TipAnswer, "tip")
        if answer is None or answer.kind == "none":
            return []
        tip = _tip_of(answer, window)
        if tip is None:
            self.malformed += 1
            return []
        if any(overlap(tip.text, seen.text) >= DUPLICATE_OVERLAP for seen in recent):
            return []  # a near-duplicate of a tip already published
        return [tip]

    async def notes(self, finals: Sequence[FinalLine], language: str) -> MeetingNotes:
        parts = [
            await self._notes_of(prompt("notes"), f"Meeting language: {language}\n\n{chunk}")
            for chunk in _chunks(
                [piece for f in finals for piece in _pieces(_line(f), self.config.context_chars)],
                self.config.context_chars,
            )
        ]
        # Map-reduce: merge groups of parts' notes until one is left.
        while len(parts) > 1:
            texts = [part.model_dump_json() for part in parts]
            parts = [
                await self._notes_of(prompt("merge"), f"Meeting language: {language}\n\n{group}")
                for group in _chunks(texts, self.config.context_chars, minimum=2)
            ]
        whole = parts[0] if parts else NotesAnswer(summary="")
        return MeetingNotes(
            summary=whole.summary.strip(),
            decisions=tuple(_texts(whole.decisions)),
            action_items=tuple(
                ActionItem(item.text.strip(), item.owner or None, item.due or None)
                for item in whole.action_items
            ),
            questions=tuple(_texts(whole.questions)),
            backend=self.name,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _notes_of(self, system: str, user: str) -> NotesAnswer:
        answer = await self._complete(system, user, NotesAnswer, "notes")
        if answer is None:
            raise InsightsUnavailable("the model's notes did not fit the schema")
        return answer

    async def _complete(self, system: str, user: str, model: type[M], name: str) -> M | None:
        """The model's answer validated as `model`; None when it does not fit (dropped)."""
        probing = self._breaker.state(now := self._clock()) is BreakerState.HALF_OPEN
        if not self._breaker.allow(now):
            reopens_in = self._breaker.reopens_in(now)
            raise BackendResting("llm breaker open", retry_after_s=reopens_in)
        try:
            content, cut_off = await self._chat(system, user, model, name)
        except InsightsUnavailable as exc:
            self._breaker.record_failure(now := self._clock())
            if self._breaker.state(now) is BreakerState.OPEN:
                # This failure opened it (or a probe's reopened it): the next try after the
                # cool-down, not within it, refused unasked.
                exc.retry_after_s = max(exc.retry_after_s, self._breaker.reopens_in(now))
            raise
        except BaseException:  # cancelled, or a bug: not the server's failure, nor a success
            if probing:  # the probe was this call's (not another's, taken since)
                self._breaker.release_probe()
            raise
        self._breaker.record_success(self._clock())
        try:
            return model.model_validate(json.loads(content))
        except (ValueError, ValidationError, RecursionError) as exc:  # JSONDecodeError: ValueError
            self.malformed += 1
            if cut_off:  # said apart: asking again gives the same cut, a bigger limit does not
                log.warning("llm answer dropped: %s cut off at its token limit", name)
            else:
                log.warning("llm answer dropped: does not fit %s (%s)", name, type(exc).__name__)
            return None

    async def _chat(
        self, system: str, user: str, model: type[BaseModel], name: str
    ) -> tuple[str, bool]:
        body: dict[str, object] = {
            "model": self.config.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.config.notes_max_tokens
            if name == "notes"
            else self.config.max_tokens,
        }
        failures = 0
        while True:
            if self._structured:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": model.model_json_schema()},
                }
            else:
                body.pop("response_format", None)
            wait_s = 0.0
            try:
                status, answer, wait_s = await self._post(body)
            except (httpx.HTTPError, TimeoutError, AnswerTooLarge) as exc:
                error = type(exc).__name__  # connecting, timeouts, protocol errors, a flood
            else:
                if status == 400 and self._structured and b"response_format" in answer:
                    # Not a failure: this server takes the schema from the prompt only.
                    log.warning("llm server refuses response_format; asking by prompt only")
                    self._structured = False
                    continue
                if status not in _RETRIED_STATUS:
                    return _content(status, answer)
                error = f"HTTP {status}"
            failures += 1
            if failures > self.config.retries:
                break
            if wait_s:  # a 429's Retry-After (asked again at once, it answered 429 again)
                await asyncio.sleep(wait_s)
        log.warning("llm call failed: %s", error)
        raise InsightsUnavailable(f"llm call failed: {error}")

    async def _post(self, body: dict[str, object]) -> tuple[int, bytes, float]:
        """One attempt: the answer's status and body, within `timeout_s` in all, and how long
        it asks to wait before the next (a 429's `Retry-After` seconds, at most `timeout_s`)."""
        async with asyncio.timeout(self.config.timeout_s):
            async with self._http.stream("POST", "/chat/completions", json=body) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise AnswerTooLarge
                    chunks.append(chunk)
                wait_s = 0.0
                if response.status_code == 429:
                    wait_s = _retry_after_s(response.headers.get("retry-after"))
                return response.status_code, b"".join(chunks), min(wait_s, self.config.timeout_s)


def _retry_after_s(value: str | None) -> float:
    """A Retry-After header's seconds (a date, or anything else, counts as none)."""
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _content(status: int, answer: bytes) -> tuple[str, bool]:
    """The answer's text: a chat completion's first message ("" fails validation: dropped), and
    whether it was cut off at the token limit (`finish_reason` `length`)."""
    if status != 200:
        raise InsightsUnavailable(f"llm answered HTTP {status}")
    try:
        choice = json.loads(answer)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return "", False
    cut_off = isinstance(choice, dict) and choice.get("finish_reason") == "length"
    return (content if isinstance(content, str) else ""), cut_off


def _line(final: FinalLine) -> str:
    who = final.speaker or final.source
    return f"[{final.segment_no}] {who}: {' '.join(final.text.split())}"


def _transcript(window: Sequence[FinalLine]) -> str:
    return "\n".join(_line(final) for final in window)


def _chunks(lines: Sequence[str], budget: int, minimum: int = 1) -> list[str]:
    """`lines` joined into chunks of at most `budget` characters (a longer line is its own
    chunk), each holding at least `minimum` lines where there are that many (so merging always
    makes progress)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for line in lines:
        current = chunks[-1]
        if current and size + len(line) > budget and len(current) >= minimum:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    return ["\n".join(chunk) for chunk in chunks if chunk]


def _pieces(line: str, budget: int) -> list[str]:
    """`line` cut at spaces into pieces of at most `budget` characters (a final longer than a
    call's context, as an hour-long recording's single final, must not overflow it)."""
    if len(line) <= budget:
        return [line]
    pieces: list[str] = []
    while len(line) > budget:
        cut = line.rfind(" ", 0, budget + 1)
        cut = cut if cut > 0 else budget  # one word longer than the budget: cut inside it
        pieces.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    return [*pieces, line] if line else pieces


def _texts(items: Sequence[str]) -> list[str]:
    return [text.strip() for text in items if text.strip()]


def _tip_of(answer: TipAnswer, window: Sequence[FinalLine]) -> Insight | None:
    """The answer as a tip, or None when it is not one (no text, evidence outside the window)."""
    text = " ".join(answer.text.split())
    in_window = {final.segment_no for final in window}
    cited = tuple(n for n in dict.fromkeys(answer.segment_nos) if n in in_window)
    if not text or answer.kind == "none" or (answer.segment_nos and not cited):
        return None
    evidence = cited or (window[-1].segment_no,)
    return Insight(answer.kind, text, evidence, answer.owner or None, answer.due or None)
