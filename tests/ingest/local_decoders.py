"""Decoder factories for local engine tests. They run inside the engine's worker processes, so
they live in an importable module (a spawned worker unpickles them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pocketsphinx import Decoder

from ingest.engines.local.recognizer import EN_US_CMNINIT, SAMPLE_RATE

MEET_TIMEOUT_S = 20.0


class Exploding(Decoder):
    def process_raw(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("decoder exploded")


def exploding_decoder() -> Decoder:
    return Exploding(samprate=SAMPLE_RATE, loglevel="FATAL")


class Rendezvous(Decoder):
    """The default decoder, except that its first `process_raw` waits until decoders in
    `parties` different processes are all inside `process_raw` at the same time: it can only
    return if decoding really runs in parallel (else it fails the stream after a timeout)."""

    meeting_point: Path | None = None
    parties = 2

    def process_raw(self, data: bytes, *args: object, **kwargs: object) -> int:
        if self.meeting_point is not None:
            self._meet(self.meeting_point)
            self.meeting_point = None
        return super().process_raw(data, *args, **kwargs)

    def _meet(self, meeting_point: Path) -> None:
        (meeting_point / str(os.getpid())).touch()
        deadline = time.monotonic() + MEET_TIMEOUT_S
        while len(list(meeting_point.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no other process decoded within {MEET_TIMEOUT_S} s")
            time.sleep(0.001)  # in the worker process: the test's event loop never waits here


def rendezvous_decoder(meeting_point: str, parties: int) -> Decoder:
    decoder = Rendezvous(
        samprate=SAMPLE_RATE, loglevel="FATAL", cmninit=EN_US_CMNINIT, fwdflat=False
    )
    decoder.meeting_point = Path(meeting_point)
    decoder.parties = parties
    return decoder
