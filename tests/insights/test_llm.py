"""The `llm` insights backend against a real llama.cpp server (SmolLM2-135M: the answers'
quality does not matter here, the protocol, the schema validation and the failure paths do)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from ingest.insights.base import BackendResting, FinalLine, Insight, InsightsUnavailable
from ingest.insights.llm import (
    MAX_ANSWER_BYTES,
    LlmConfig,
    LlmInsights,
    TipAnswer,
    _chunks,
    _pieces,
    _tip_of,
    prompt,
)
from tests.insights.llama_server import llama_server
from tests.util import eventually

MEETING = [
    FinalLine(1, "Good morning everyone, thanks for joining.", 0.0, "Ayşe"),
    FinalLine(2, "We decided to move the budget review to Thursday at three.", 4.0, "Ahmet"),
    FinalLine(3, "Ahmet will send the updated numbers by Friday.", 9.0, "Ayşe"),
    FinalLine(4, "Should we invite the finance team to the review?", 13.0, "Ahmet"),
]
KINDS = {"decision", "action_item", "question"}


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    with llama_server() as url:
        yield url


@pytest.fixture
async def backend(llm_url: str) -> AsyncIterator[LlmInsights]:
    llm = LlmInsights(LlmConfig(llm_url, "smollm2", timeout_s=120, max_tokens=120))
    yield llm
    await llm.aclose()


async def test_a_tip_is_at_most_one_item_citing_the_window(backend: LlmInsights) -> None:
    tips = await backend.tips(MEETING, [], "en")
    # Constrained output fits the schema; a small model may still cite nothing useful (dropped).
    assert len(tips) + backend.malformed <= 1
    for tip in tips:
        assert tip.kind in KINDS and tip.text
        assert set(tip.segment_nos) <= {line.segment_no for line in MEETING}


async def test_a_truncated_answer_is_dropped_not_published(llm_url: str) -> None:
    llm = LlmInsights(
        LlmConfig(llm_url, "smollm2", timeout_s=120, max_tokens=3, notes_max_tokens=3)
    )
    try:
        assert await llm.tips(MEETING, [], "en") == []
        assert llm.malformed == 1  # the server answered; the answer did not fit
        with pytest.raises(InsightsUnavailable, match="did not fit"):
            await llm.notes(MEETING, "en")
    finally:
        await llm.aclose()


async def test_notes_over_a_long_meeting_are_mapped_then_merged(llm_url: str) -> None:
    # A context of 160 characters splits the meeting into parts: three calls at least.
    llm = LlmInsights(
        LlmConfig(
            llm_url,
            "smollm2",
            timeout_s=120,
            max_tokens=200,
            notes_max_tokens=200,
            context_chars=160,
        )
    )
    try:
        try:
            notes = await llm.notes(MEETING, "en")
        except InsightsUnavailable:
            # The server answered (no HTTP error); a small model's reply outgrew max_tokens.
            assert llm.malformed >= 1
        else:
            assert notes.backend == "llm" and llm.malformed == 0
            assert all(item.text for item in notes.action_items)
    finally:
        await llm.aclose()


async def test_a_silent_server_times_out_and_opens_the_breaker() -> None:
    accepted = 0
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        held.append(writer)  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = LlmConfig(
        f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.5, retries=1, breaker_failures=2
    )
    llm = LlmInsights(config)
    try:
        failures = []
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(InsightsUnavailable, match=r"ReadTimeout|TimeoutError") as failed:
                await llm.tips(MEETING, [], "en")
            assert time.monotonic() - started >= 1.0  # two attempts of 0.5 s
            failures.append(failed.value)
        assert accepted == 4
        # The failure that opened the breaker says to come back after its cool-down (the notes
        # worker's next attempt came within it, refused unasked: attempts spent on nothing).
        assert failures[0].retry_after_s == 0 and failures[1].retry_after_s > 50
        with pytest.raises(BackendResting, match="breaker open") as resting:
            await llm.notes(MEETING, "en")
        assert resting.value.retry_after_s > 50
        assert accepted == 4  # refused without a connection
    finally:
        await llm.aclose()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class RawServer:
    """An HTTP server on localhost that answers every request with `answer(writer)`."""

    def __init__(self, answer: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.answer = answer
        self.accepted = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.writers.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await self.answer(writer)

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *_: object) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_a_trickling_answer_is_cut_off_at_the_timeout_and_a_flood_at_its_size() -> None:
    """`timeout_s` bounds the whole attempt (a server sending a byte at a time would otherwise
    hold the call for minutes), and an answer's size is bounded."""

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def flood(writer: asyncio.StreamWriter) -> None:
        size = 2 * MAX_ANSWER_BYTES
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    for answer, error in ((trickle, "TimeoutError"), (flood, "AnswerTooLarge")):
        async with RawServer(answer) as url:
            llm = LlmInsights(LlmConfig(url, "m", timeout_s=1.0, retries=0))
            try:
                with pytest.raises(InsightsUnavailable, match=error):
                    # A deadline far above the 1 s timeout, far below the trickle's 80 minutes.
                    await asyncio.wait_for(llm.notes(MEETING, "en"), 300)
            finally:
                await llm.aclose()


async def test_a_cancelled_call_hands_back_the_breakers_probe() -> None:
    """A half-open breaker lets one call through; that call cancelled (a tips deadline, a
    deleted meeting) must not leave the breaker refusing every call for good."""

    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    server = RawServer(silent)
    async with server as url:
        config = LlmConfig(
            url, "m", timeout_s=0.3, retries=0, breaker_failures=1, breaker_cooldown_s=0
        )
        llm = LlmInsights(config)
        try:
            with pytest.raises(InsightsUnavailable, match="TimeoutError"):
                await llm.notes(MEETING, "en")  # opens the breaker: half-open at once
            probe = asyncio.create_task(llm.notes(MEETING, "en"))
            await eventually(lambda: server.accepted == 2, what="the probe's request")
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            with pytest.raises(InsightsUnavailable, match="TimeoutError"):
                await llm.notes(MEETING, "en")  # a probe again, not "breaker open"
        finally:
            await llm.aclose()


def test_a_tip_citing_lines_outside_its_window_is_refused() -> None:
    outside = TipAnswer(kind="decision", text="Ship Friday.", segment_nos=[99])
    assert _tip_of(outside, MEETING) is None
    assert _tip_of(TipAnswer(kind="decision", text="  ", segment_nos=[2]), MEETING) is None
    cited = _tip_of(TipAnswer(kind="decision", text="Ship  Friday.", segment_nos=[2, 2]), MEETING)
    assert cited == Insight("decision", "Ship Friday.", (2,))
    uncited = _tip_of(TipAnswer(kind="question", text="Invite finance?"), MEETING)
    assert uncited is not None and uncited.segment_nos == (4,)


def test_chunks_fit_the_budget_and_merging_always_progresses() -> None:
    lines = ["a" * 50] * 5
    assert [len(c) for c in _chunks(lines, 120)] == [101, 101, 50]
    assert _chunks(["x" * 500], 100) == ["x" * 500]  # a long line is its own chunk
    assert len(_chunks(["y" * 500, "z" * 500], 100, minimum=2)) == 1


def test_a_final_longer_than_a_calls_context_is_cut_at_spaces() -> None:
    line = " ".join(f"w{n:03d}" for n in range(300))  # 1,499 characters
    pieces = _pieces(line, 100)
    assert all(len(piece) <= 100 for piece in pieces) and " ".join(pieces) == line
    assert _pieces("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]
    assert _pieces("short", 100) == ["short"]


def test_prompts_ship_with_the_package() -> None:
    for name in ("tip", "notes", "merge"):
        assert "JSON" in prompt(name)


class ChatServer:
    """A chat-completions server on localhost: each request's JSON body is kept (with when it
    came), and answered with `answer(n)`'s status line, headers and JSON body (n from 1)."""

    def __init__(self, answer: Callable[[int], tuple[str, dict[str, str], object]]) -> None:
        self.answer = answer
        self.asked: list[tuple[float, dict]] = []

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            self.asked.append((time.monotonic(), json.loads(await reader.readexactly(length))))
            status, headers, payload = self.answer(len(self.asked))
            body = json.dumps(payload).encode()
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
            lines.append(f"Content-Length: {len(body)}")
            writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_notes_have_room_and_an_answer_cut_at_the_limit_is_said_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At 400 tokens the suite's own model's notes came back cut (`finish_reason` `length`),
    and were logged as not fitting the schema: the limit, not the model, was at fault."""
    cut = {"choices": [{"message": {"content": '{"summary": "We agr'}, "finish_reason": "length"}]}
    server = ChatServer(lambda _n: ("200 OK", {}, cut))
    async with server as url:
        llm = LlmInsights(LlmConfig(url, "m", retries=0))
        try:
            with pytest.raises(InsightsUnavailable):
                await llm.notes(MEETING, "en")
        finally:
            await llm.aclose()
    assert server.asked and server.asked[0][1]["max_tokens"] >= 2048
    assert "notes cut off at its token limit" in caplog.text


async def test_a_429s_retry_after_is_waited_before_asking_again() -> None:
    """The retry went out 4 ms after a 429 saying `Retry-After: 1`, and got 429 again."""
    tip = {"choices": [{"message": {"content": json.dumps({"tips": []})}}]}
    server = ChatServer(
        lambda n: (
            ("429 Too Many Requests", {"Retry-After": "1"}, {}) if n == 1 else ("200 OK", {}, tip)
        )
    )
    async with server as url:
        llm = LlmInsights(LlmConfig(url, "m", retries=1))
        try:
            await llm.tips(MEETING, [], "en")
        finally:
            await llm.aclose()
    (first, _), (second, _) = server.asked
    assert second - first >= 0.95
