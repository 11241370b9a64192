"""The worker process behind `LocalEngine`: hosts many streams' recognizers and a decoder pool.

`serve` is the process's entry point (started with the "spawn" method, so it shares nothing with
the gateway but the pipe). It answers requests one at a time in arrival order and exits on
`Stop` or when the parent goes away (EOF on the pipe).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from multiprocessing.connection import Connection

from pocketsphinx import Decoder

from ingest.engines.base import EngineError, EngineEvent
from ingest.engines.local.ipc import (
    Answer,
    Close,
    Envelope,
    Failed,
    Feed,
    Finalize,
    Open,
    Release,
    Request,
    Stop,
    Warm,
)
from ingest.engines.local.recognizer import Recognizer
from ingest.engines.local.two_pass import TwoPassRecognizer
from ingest.engines.local.whisper import FinalsModel, WhisperFinals


def serve(
    conn: Connection,
    decoder_factory: Callable[[], Decoder],
    idle_decoders: int,
    finals: FinalsModel | None = None,
) -> None:
    # The parent shuts workers down in order (Stop, then SIGKILL after a grace period). A Ctrl-C,
    # a SIGTERM sent to the whole process group (systemd, dumb-init) or a hangup must not kill
    # them first, or the gateway could not flush its streams' last finals.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    worker = Worker(decoder_factory, idle_decoders, finals)
    while True:
        try:
            envelope: Envelope = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        rid, request = envelope
        if isinstance(request, Stop):
            return
        result = worker.handle(request)
        if rid is None:
            continue
        answer: Answer = (rid, result)
        try:
            conn.send(answer)
        except OSError:
            return


class Worker:
    """The requests' effects, without the pipe (so they read, and could be tested, plainly)."""

    def __init__(
        self,
        decoder_factory: Callable[[], Decoder],
        idle_decoders: int,
        finals: FinalsModel | None = None,
    ) -> None:
        self._decoder_factory = decoder_factory
        self._idle_max = idle_decoders
        self._idle: list[Decoder] = []
        self._recognizers: dict[int, Recognizer | TwoPassRecognizer] = {}
        self._finals_model = finals
        self._finals: WhisperFinals | None = None  # loaded once, by the first Warm or Open

    def handle(self, request: Request) -> list[EngineEvent] | Failed:
        try:
            return self._handle(request)
        except Exception as exc:
            if isinstance(request, Open | Warm):  # creating a decoder or loading Whisper failed
                retryable = exc.retryable if isinstance(exc, EngineError) else True
                return Failed(f"the local engine could not start: {exc}", retryable)
            if isinstance(request, Feed | Finalize | Close):
                # Its decoder's state is unknown now: drop it rather than pool it.
                self._recognizers.pop(request.sid, None)
            if isinstance(exc, EngineError):
                return Failed(str(exc), exc.retryable)
            return Failed(f"local engine failed: {exc!r}", retryable=True)

    def _handle(self, request: Request) -> list[EngineEvent]:
        match request:
            case Feed(sid, pcm):
                return self._recognizer(sid).feed(pcm)
            case Finalize(sid):
                return self._recognizer(sid).finalize()
            case Close(sid):
                return self._recognizer(sid).close()
            case Open(sid, config, tuning):
                finals = self._whisper()
                decoder = self._idle.pop() if self._idle else self._decoder_factory()
                if finals is None:
                    self._recognizers[sid] = Recognizer(decoder, config, tuning)
                else:
                    self._recognizers[sid] = TwoPassRecognizer(decoder, config, tuning, finals)
            case Release(sid):
                recognizer = self._recognizers.pop(sid, None)
                decoder = recognizer.release() if recognizer is not None else None
                if decoder is not None and len(self._idle) < self._idle_max:
                    self._idle.append(decoder)
            case Warm(decoders):
                self._whisper()
                while len(self._idle) < min(decoders, self._idle_max):
                    self._idle.append(self._decoder_factory())
            case _:
                raise EngineError(f"unexpected request {request!r}", retryable=False)
        return []

    def _whisper(self) -> WhisperFinals | None:
        """The worker's Whisper model (None for one-pass), loaded on first use."""
        if self._finals is None and self._finals_model is not None:
            self._finals = WhisperFinals(self._finals_model)
        return self._finals

    def _recognizer(self, sid: int) -> Recognizer | TwoPassRecognizer:
        recognizer = self._recognizers.get(sid)
        if recognizer is None:
            raise EngineError(f"no stream {sid} in this worker", retryable=False)
        return recognizer
