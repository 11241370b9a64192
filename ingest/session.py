"""The per-message rules of an ingest stream, without I/O (the `websockets` protocol-core model).

The socket loop (`gateway/ws/ingest.py`) hands every message after the handshake to
`IngestRules.receive` with the time it arrived and acts on the answer: `Feed` the frame to the
engine, run a `Control` message, or close with the `Violation`'s kind (the gateway maps kinds to
close codes). The rules own the rate bucket, the frame checks, the accepted-audio tally and the
backpressure exemption, so they are tested with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ingest.protocol import (
    BYTES_PER_SAMPLE,
    ControlType,
    FrameTooLarge,
    ProtocolError,
    audio_ms,
    check_pcm_frame,
    parse_control,
)

# An engine send that blocks this long means the client's frames queued up in the socket.
BACKPRESSURE_S = 0.5
# Audio a client may be ahead of the time since its stream began (what it captured while the
# connection opened) and still have frames past the rate accepted as catching up.
REALTIME_SLACK_S = 2.0
# ... plus this share of the time since, up to CLOCK_DRIFT_MAX_S: a sound card's clock runs
# fast of the server's by up to a few hundred ppm, and a long meeting's audio drifts seconds
# ahead (0.1% is 3.6 s an hour); more ahead than that is a flood, not a clock.
CLOCK_DRIFT_ALLOWED = 0.001
CLOCK_DRIFT_MAX_S = 10.0
# A resumed stream's audio began before it connected (`resumes`): that much more (at most this)
# is late audio, re-sent at once, not audio ahead of its time.
RESUMED_BACKLOG_MAX_S = 120.0
# ... and the most it may be behind: late audio past this is not a stall's (a connection held
# up longer is dropped by the heartbeat), but time saved up by sending little, to be spent as a
# flood of messages.
CATCH_UP_MAX_S = 30.0

ViolationKind = Literal["rate_limited", "too_big", "protocol"]


@dataclass(frozen=True, slots=True)
class Feed:
    """An accepted PCM frame for the engine."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Control:
    """A valid control message; `text` is kept for the parts the gateway validates (refresh)."""

    type: ControlType
    text: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The stream must close; everything accepted before this message stays accepted."""

    kind: ViolationKind
    reason: str


Verdict = Feed | Control | Violation


class RateLimit(Protocol):
    """A rate limiter with the clock passed in (`fanout.token_bucket.TokenBucket`)."""

    rate: float

    def take(self, now: float, n: float = 1.0) -> bool: ...


class IngestRules:
    """Rate limit, frame checks and tallies for one stream."""

    __slots__ = (
        "_exempt_until",
        "_ms_per_byte",
        "began_before_s",
        "bucket",
        "bytes_in",
        "channels",
        "frames",
        "lag_ms",
        "least_lag_ms",
        "max_bytes",
        "messages",
        "sample_rate",
        "started_at",
    )

    def __init__(
        self,
        *,
        sample_rate: int,
        channels: int,
        max_bytes: int,
        bucket: RateLimit,
        started_at: float,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.max_bytes = max_bytes
        self.bucket = bucket  # charged one token per message
        self.started_at = started_at  # the stream's start, on the clock `receive` is given
        self._exempt_until = 0.0
        self.messages = 0  # every message, refused or not
        self.frames = 0  # audio frames accepted
        self.bytes_in = 0
        self.began_before_s = 0.0  # see `resumed`
        self._ms_per_byte = 1000 / (BYTES_PER_SAMPLE * channels * sample_rate)
        # How far the audio is behind its time (the time since the stream's audio began, a
        # resumed stream's before it connected), in ms: at the last frame, and the least it has
        # been. A lag grown past the least is audio a stall held up, or a pause in sending.
        self.lag_ms = 0.0
        self.least_lag_ms = 0.0

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio accepted so far."""
        return audio_ms(self.bytes_in, self.sample_rate, self.channels)

    def resumed(self, began_before_s: float) -> None:
        """The stream's audio began this long before it connected (a resumed stream re-sending
        what no final covered): that much of it is late audio, not ahead of its time (at most
        RESUMED_BACKLOG_MAX_S). Time counts from the connection still."""
        self.began_before_s = min(max(began_before_s, 0.0), RESUMED_BACKLOG_MAX_S)
        self.lag_ms = self.least_lag_ms = self.began_before_s * 1000

    def _lag_ms(self, now: float, nbytes: int) -> float:
        elapsed_ms = (now - self.started_at + self.began_before_s) * 1000
        return elapsed_ms - nbytes * self._ms_per_byte

    @property
    def behind_ms(self) -> int:
        """How much further behind its time the audio was at the last frame than it had been at
        best: a client that stopped sending for a while (a muted microphone) instead of sending
        silence; what it sent after is placed that much early on the meeting's clock. (A client
        that is behind all along, a resumed stream re-sending in real time, placed right: 0.)"""
        return max(round(self.lag_ms - self.least_lag_ms), 0)

    def receive(self, *, data: bytes | None, text: str | None, now: float) -> Verdict:
        """The verdict on one message (binary `data` or `text`) that arrived at `now`."""
        self.messages += 1
        if data is None:
            return self._control(text or "", now)
        # Audio is exempt after engine backpressure, and when it is late (catching up); control
        # messages never are.
        if now >= self._exempt_until and not self.bucket.take(now):
            refused = self._not_catching_up(len(data), now)
            if refused is not None:
                return refused
        try:
            check_pcm_frame(data, channels=self.channels, max_bytes=self.max_bytes)
        except FrameTooLarge as exc:
            return Violation("too_big", str(exc))
        except ProtocolError as exc:
            return Violation("protocol", str(exc))
        self.frames += 1
        self.bytes_in += len(data)
        self.lag_ms = lag = self._lag_ms(now, self.bytes_in)
        if lag < self.least_lag_ms:
            self.least_lag_ms = lag
        return Feed(data)

    def _not_catching_up(self, nbytes: int, now: float) -> Violation | None:
        """None when a frame past the rate is late audio, not a flood: frames a network stall or a
        busy machine held up arrive at once, more of them than the burst. It is, while the frame
        holds at least 1/rate s of audio (small frames stay refused), the stream's audio with it
        is not ahead of its time (the time since its audio began: a resumed stream's before it
        connected) by more than REALTIME_SLACK_S and the clock drift allowed, and it had fallen
        behind by at most CATCH_UP_MAX_S more than it ever was (a stream that sent little for an
        hour has no hour of frames to send at once; one re-sending in real time what it missed
        is behind all along, and its stalls are caught up as any stream's). Otherwise the
        violation, saying which rule the frame broke."""
        bytes_per_s = BYTES_PER_SAMPLE * self.channels * self.sample_rate
        if nbytes * self.bucket.rate < bytes_per_s:
            return self._rate_limited()
        lag_before = self._lag_ms(now, self.bytes_in)
        lag_after = self._lag_ms(now, self.bytes_in + nbytes)
        connected_ms = (now - self.started_at) * 1000
        drift_ms = min(CLOCK_DRIFT_ALLOWED * connected_ms, CLOCK_DRIFT_MAX_S * 1000)
        if -lag_after > REALTIME_SLACK_S * 1000 + drift_ms:
            return Violation(
                "rate_limited",
                "audio ahead of its time: more audio than time has passed since the stream's "
                "audio began (2 s more allowed, and a resumed stream's re-sent audio, at most "
                f"{RESUMED_BACKLOG_MAX_S:g} s); messages before this one were accepted",
            )
        if lag_before - self.least_lag_ms > CATCH_UP_MAX_S * 1000:
            return Violation(
                "rate_limited",
                f"audio saved up: after more than {CATCH_UP_MAX_S:g} s without sending it, audio "
                "is not taken past the rate at once (send silence while muted); messages before "
                "this one were accepted",
            )
        return None

    def _control(self, text: str, now: float) -> Verdict:
        if len(text) > self.max_bytes or len(text.encode()) > self.max_bytes:  # the limit is bytes
            return Violation("too_big", "message too large")
        try:
            kind = parse_control(text)
        except ProtocolError as exc:
            return Violation("protocol", str(exc))
        # `close` is never refused: ending the stream is what a client over its rate should do,
        # and it gets `closed` after its last finals as any other end.
        if kind != "close" and not self.bucket.take(now):
            return self._rate_limited()
        return Control(kind, text)

    def _rate_limited(self) -> Violation:
        return Violation(
            "rate_limited",
            f"ingest rate limit exceeded ({self.bucket.rate:g} messages/s, audio frames and "
            f"control messages alike: send {1000 / self.bucket.rate:g} ms of audio or more per "
            "frame); messages before this one were accepted",
        )

    def engine_waited(self, started: float, ended: float) -> None:
        """The engine made a send wait from `started` to `ended`.

        The client's frames queued up in the socket meanwhile: the burst that follows is ours to
        absorb, not the client's fault. Audio frames arriving within as long again are not
        charged (the engine's backpressure still bounds them); text messages are, since nothing
        bounds them then (a flood of refreshes, each a signature to verify).
        """
        blocked = ended - started
        if blocked > BACKPRESSURE_S:
            self._exempt_until = ended + blocked
