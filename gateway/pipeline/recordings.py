"""The recording job runner: any replica claims queued jobs and transcribes them into the meeting.

A job is claimed with a lease (store.jobs), renewed while it runs; a watcher also notices a
cancel request within a second. Stages: validate -> transcribe (decode, resample, chunk at pauses
and transcribe chunks concurrently, ingest.files.pipeline) -> done. Each chunk's finals are stored
with the next segment_nos of the meeting AND the checkpoint advanced in one transaction, then
published on the meeting topic as stored (the same `transcript.final` message as live finals),
so a job resumed after its replica died (its lease lapsed) starts decoding at the checkpoint's
audio position and never stores a chunk twice. A file that crashes its runner again and again
fails after RECORDING_MAX_ATTEMPTS. A SIGTERM drain hands running jobs back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fanout.messages import RecordingStatusMessage
from fanout.topics import status_topic, transcript_topic
from gateway.config import Settings
from gateway.observability.logs import get_logger
from gateway.observability.metrics import Metrics
from gateway.pipeline.stored_finals import final_message, new_final
from gateway.services import Services
from ingest.engines.base import EngineError, engine_name
from ingest.engines.breaker import CircuitBreaker
from ingest.files.base import AudioChunk, FileEngine, FileOptions, FileSegment
from ingest.files.chain import FileEngineChain
from ingest.files.decode import (
    TRUNCATION_MARGIN_MS,
    TRUNCATION_MARGIN_RATIO,
    DecodeError,
    MediaError,
    probe,
)
from ingest.files.pipeline import recording_chunks, transcribe_cuts
from ingest.files.vendors import VendorFileConfig, build_file_engine
from ingest.segments import normalize_text
from shared.backoff import backoff_delay
from shared.outage_log import OutageLog
from shared.tasks import cancel_and_wait, detach, run_to_end
from store.base import FinalSegment
from store.errors import DATABASE_UNREACHABLE
from store.jobs import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    Job,
    JobStore,
    LeaseLost,
    Reserve,
    job_stream_id,
)
from store.numbering import Claim, NumberingUnavailable

log = get_logger("gateway.pipeline.recordings")

WATCH_EVERY_S = 1.0  # how soon a cancel request is noticed
GONE_CHECK_S = 5.0  # how long a stopped job asks whether it was deleted
FINALS_PER_CHUNK_MAX = 10_000  # stream_seq = chunk index * this + position in the chunk
CHECKPOINT_ATTEMPTS = 8  # a chunk's write, with its finals, while the database is away
RESERVE_TIMEOUT_S = 1.0  # a chunk's block of numbers, asked inside its transaction
COUNTER_RAISE_ATTEMPTS = 40  # the counter raised above store-numbered finals: about 20 minutes


def vendor_file_config(settings: Settings) -> VendorFileConfig:
    """The batch engines' settings as plain values (ingest/ does not read Settings)."""
    key = settings.deepgram_api_key
    return VendorFileConfig(
        deepgram_api_key=key.get_secret_value() if key is not None else None,
        deepgram_model=settings.deepgram_model,
        deepgram_language=settings.deepgram_language,
        deepgram_url=settings.deepgram_url,
        deepgram_keyterms=tuple(
            term.strip() for term in settings.deepgram_keyterms.split(",") if term.strip()
        ),
        deepgram_file_timeout_s=settings.deepgram_file_timeout_s,
        gcp_model=settings.gcp_recordings_model or settings.gcp_speech_model,
        gcp_endpoint=settings.gcp_speech_endpoint,
        gcp_insecure=settings.gcp_speech_insecure,
        gcp_operation_timeout_s=settings.gcp_operation_timeout_s,
        gcp_bucket=settings.gcp_recordings_bucket,
        attempts=settings.recording_vendor_attempts,
    )


def build_file_engines(settings: Settings, metrics: Metrics | None = None) -> dict[str, FileEngine]:
    """The file engines this replica offers, first choice first: the live chain's engines
    (ASR_ENGINE), each as its file engine (Deepgram pre-recorded, Google LongRunningRecognize,
    local Whisper over chunks). A vendor's retried requests are counted in `metrics`."""
    from gateway.engines import engine_names
    from ingest.files.local import LocalFileEngine, recordings_model

    engines: dict[str, FileEngine] = {}
    for name in engine_names(settings):  # aliases resolved, as the live chain's
        if name == "local":
            engines[name] = LocalFileEngine(
                recordings_model(settings.local_recordings_model, settings.local_finals_model)
            )
        elif name in ("deepgram", "google"):
            engines[name] = build_file_engine(
                name, vendor_file_config(settings), _count_retries(name, metrics)
            )
    if not engines:
        engines["local"] = LocalFileEngine(
            recordings_model(settings.local_recordings_model, settings.local_finals_model)
        )
    return engines


def _count_retries(
    engine: str, metrics: Metrics | None
) -> Callable[[EngineError, float], None] | None:
    if metrics is None:
        return None
    return lambda error, _wait_s: metrics.recording_vendor_retry(engine, error.reason)


class TooLong(Exception):
    """Decoding passed RECORDING_MAX_SECONDS (a header that understated it, or had no length)."""


def _within(chunks: Iterator[AudioChunk], limit_ms: int) -> Iterator[AudioChunk]:
    """The chunks up to the length limit; TooLong at the first that ends past it, before any
    engine hears it (the chunks before it are transcribed and stay, as for a damaged file)."""
    for chunk in chunks:
        if chunk.end_ms > limit_ms:
            raise TooLong
        yield chunk


@dataclass(frozen=True)
class AudioSpan:
    """What a checkpoint covers: a chunk, or the whole file as chunk 0."""

    start_ms: int
    end_ms: int
    index: int


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None]
    released: bool = False


class RecordingRunner:
    """Claims and runs recording jobs on this replica (RECORDING_WORKERS at once)."""

    def __init__(self, services: Services, jobs: JobStore, engines: dict[str, FileEngine]) -> None:
        self.services = services
        self.settings = services.settings
        self.jobs = jobs
        self.engines = engines
        s = self.settings
        self.breakers = {
            name: CircuitBreaker(
                s.engine_breaker_failures, s.engine_breaker_cooldown_s, s.engine_breaker_successes
            )
            for name in engines
        }
        self.owner = services.replica_id
        self._running: dict[str, _Running] = {}
        # Jobs this runner ended, by id, until their `_run` reads it: a cancel that lands
        # after the ending committed (while it is announced) still finds the job ended here.
        self._ended: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.recording_workers > 0:
            self._loop = asyncio.create_task(self._claim_loop(), name="recordings")

    def wake(self) -> None:
        """A job was queued here: claim now rather than at the next poll."""
        self._wake.set()

    async def drain(self) -> None:
        """Stop claiming; hand running jobs back to the queue at their last checkpoint."""
        self._stopping = True
        if self._loop is not None:
            await cancel_and_wait(self._loop)
        running = list(self._running.values())
        for entry in running:
            entry.released = True
        with contextlib.suppress(Exception):  # a job's error was logged by its task
            await cancel_and_wait(*(entry.task for entry in running))

    async def aclose(self) -> None:
        await self.drain()
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                await engine.aclose()

    @property
    def running(self) -> int:
        return len(self._running)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        s = self.settings
        # One warning per database outage, not one per RECORDING_POLL_S.
        outage = OutageLog(
            log, "recording job claims failing", "recording job claims working again"
        )
        while not self._stopping:
            job = None
            if len(self._running) < s.recording_workers:
                try:
                    job = await self.jobs.claim(
                        self.owner,
                        lease_s=s.recording_lease_s,
                        per_tenant_running=s.recording_jobs_per_tenant,
                        # Not a job of ours whose lease lapsed while it runs here (a stalled
                        # loop): a second task would run it beside the first.
                        exclude=self._running.keys(),
                    )
                except Exception as exc:  # the database is away: try again later
                    outage.failed(exc)
                else:
                    outage.succeeded()
            if job is not None:
                task = asyncio.create_task(self._run(job), name=f"recording:{job.job_id}")
                entry = self._running[job.job_id] = _Running(job, task)
                task.add_done_callback(lambda _t, e=entry: self._forget(e))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.recording_poll_s):
                    await self._wake.wait()

    def _forget(self, entry: _Running) -> None:
        if self._running.get(entry.job.job_id) is entry:
            del self._running[entry.job.job_id]

    # -- one job -----------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        # Every line of the job's task (the file engines' too) says whose job it is.
        structlog.contextvars.bind_contextvars(
            job_id=job.job_id, tenant=job.tenant_id, meeting=job.meeting_id
        )
        metrics = self.services.metrics
        jlog = log.bind(attempt=job.attempts)  # the job's ids come with the context, above
        metrics.recording_jobs_running.inc()
        if job.attempts == 1:
            metrics.recording_waited(
                (job.started_at or job.created_at).timestamp() - job.created_at.timestamp()
            )
        work = asyncio.current_task()
        assert work is not None
        cancelled, deleted = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(self._watch(job, work, cancelled, deleted))
        ended: str | None = None
        try:
            if job.cancel_requested:  # asked while its last runner was dying: no new attempt
                ended = await self._end(job, CANCELLED, None, reason=None)
                return
            if job.attempts > self.settings.recording_max_attempts:
                error = (
                    f"gave up after {job.attempts - 1} attempts: each ended with its replica "
                    "(the file may crash the decoder or the engine, or the gateway was killed)"
                )
                ended = await self._end(job, FAILED, error, reason="attempts")
                return
            ended = await self._transcribe(job, jlog)
        except (asyncio.CancelledError, LeaseLost):
            # A drain delivers its cancel again (shared.tasks): neither ending may be cut.
            if cancelled.is_set():
                ended = await run_to_end(self._end(job, CANCELLED, None, reason=None))
            elif (entry := self._running.get(job.job_id)) is not None and entry.released:
                await run_to_end(self._hand_back(job, jlog))
            # The work may notice the deletion first (its write finds no row); a cancel that
            # lands meanwhile (the watcher's) must not cut the check and its line.
            elif deleted.is_set() or await run_to_end(self._gone(job)):
                jlog.info("recording job ended: its meeting was deleted")
            else:
                jlog.warning("recording job lost its lease")
        except Exception as exc:  # a bug or the database: the lease lapses and a retry follows
            # Its upload removed with its meeting, mid-read (FileNotFoundError): not a failure.
            if deleted.is_set() or await run_to_end(self._gone(job)):
                jlog.info("recording job ended: its meeting was deleted")
            else:
                jlog.warning("recording job stopped", error=type(exc).__name__)
        finally:
            watcher.cancel()
            metrics.recording_jobs_running.dec()
            ended = self._ended.pop(job.job_id, None) or ended
            if ended is not None and not self.settings.recording_keep_audio:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(Path(job.file_path).unlink, missing_ok=True)

    async def _gone(self, job: Job) -> bool:
        """Whether the job's row is gone with its meeting (not taken over by another replica);
        False when the database does not say within seconds (the slot is not held for it)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GONE_CHECK_S):
                return await self.jobs.get(job.job_id) is None
        return False

    async def _hand_back(self, job: Job, jlog: structlog.stdlib.BoundLogger) -> None:
        released = False
        with contextlib.suppress(Exception):
            released = await self.jobs.release(job.job_id, self.owner)
        if not released:  # it ended just before the drain's cancel, or is another's now
            return
        jlog.info("recording job handed back to the queue")
        await self._publish_status(job, "queued", "queued")

    async def _watch(
        self, job: Job, work: asyncio.Task[None], cancelled: asyncio.Event, deleted: asyncio.Event
    ) -> None:
        """Renew the lease and notice a cancel request or the job's deletion (with its meeting);
        stop the work when one says so."""
        s = self.settings
        renew_every = max(WATCH_EVERY_S, s.recording_lease_s / 3)
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            try:
                current = await self.jobs.get(job.job_id)
                if current is None:  # gone with its meeting
                    deleted.set()
                    work.cancel()
                    return
                if current.cancel_requested:
                    cancelled.set()
                    work.cancel()
                    return
                if time.monotonic() - last_renew >= renew_every:
                    if not await self.jobs.renew(
                        job.job_id, self.owner, lease_s=s.recording_lease_s
                    ):
                        # Taken over: stop writing (checkpoints would refuse anyway). Unless the
                        # work itself just ended the job: cut now, it would keep the upload.
                        after = await self.jobs.get(job.job_id)
                        if after is None:
                            deleted.set()
                        if after is None or after.status not in (SUCCEEDED, FAILED, CANCELLED):
                            work.cancel()
                        return
                    last_renew = time.monotonic()
            except Exception as exc:
                log.warning("recording lease not renewed", error=type(exc).__name__)

    async def _transcribe(self, job: Job, jlog: object) -> str | None:
        metrics = self.services.metrics
        path = Path(job.file_path)
        started = time.monotonic()
        await self._stage(job, "validate")
        try:
            info = await asyncio.to_thread(probe, path)
        except MediaError as exc:
            return await self._end(job, FAILED, exc.reason, reason="unreadable")
        except OSError:
            return await self._end(job, FAILED, "the uploaded file is gone", reason="missing")
        metrics.recording_stage_done("validate", time.monotonic() - started)

        engine = self._engine_for(job)
        if engine is None or not engine.supports(job.language):
            error = f"no configured engine transcribes {job.language!r}"
            return await self._end(job, FAILED, error, reason="language")
        separate = job.split_channels and info.channels > 1  # a mono file: as without it
        # A channel's finals are labelled with it: no diarization within one.
        diarize = job.diarize and not separate
        options = FileOptions(language=job.language, diarize=diarize, job=job.job_id)
        await self._stage(job, "transcribe")
        started = time.monotonic()
        limit_ms = int(self.settings.recording_max_seconds * 1000)
        # A header's length is an estimate (VBR MP3): allow the decoder's truncation margin.
        decode_limit_ms = limit_ms + max(
            TRUNCATION_MARGIN_MS, int(limit_ms * TRUNCATION_MARGIN_RATIO)
        )
        # Decoding runs on a worker thread no cancel reaches: told to stop when the job's work
        # ends (a resume decodes from the file's start, a minute for two hours of AAC).
        stop_decoding = threading.Event()
        chunks: Iterator[AudioChunk] = _within(
            recording_chunks(
                path,
                engine,
                start_ms=job.audio_ms_done,
                first_index=job.next_chunk,
                separate_channels=separate,
                stop=stop_decoding,
            ),
            decode_limit_ms,
        )
        done_ms = job.audio_ms_done
        try:
            # A fresh job whose first engine takes files whole (Deepgram) sends the original
            # file once: one diarization for the whole meeting, no decoding here.
            # Not for a file whose channels are transcribed apart: the engines take chunks.
            fresh = job.next_chunk == 0 and job.audio_ms_done == 0 and not separate
            if fresh and info.duration_ms is not None and info.duration_ms <= limit_ms:
                whole = await engine.transcribe_whole(path, options)
                if whole is not None:
                    segments, served = whole
                    # The header's length is a guess: what was heard may run past it, and past
                    # the limit (then only what lies within it is kept, as for chunks).
                    heard_ms = max([info.duration_ms, *(seg.end_ms for seg in segments)])
                    too_long = heard_ms > decode_limit_ms
                    if too_long:
                        segments = [seg for seg in segments if seg.end_ms <= limit_ms]
                        heard_ms = limit_ms
                    # Done up to all it heard: a resumed job decodes nothing of it again.
                    span = AudioSpan(0, heard_ms, 0)
                    job = await self._checkpoint(job, span, heard_ms, segments, {served: heard_ms})
                    if too_long:
                        raise TooLong
                    metrics.recording_stage_done("transcribe", time.monotonic() - started)
                    return await self._end(job, SUCCEEDED, None, reason=None)
            async for cut, segments in transcribe_cuts(chunks, engine, options):
                served: dict[str, int] = {}  # engine -> audio ms it transcribed of the cut
                for side in cut:
                    name = engine.served.pop((side.index, side.channel), engine.name)
                    served[name] = served.get(name, 0) + side.end_ms - side.start_ms
                chunk = cut[0]  # (every chunk of a cut spans the same audio)
                done_ms = max(done_ms, chunk.end_ms)  # where decoding resumes, never a guess
                span = AudioSpan(chunk.start_ms, chunk.end_ms, chunk.index)
                job = await self._checkpoint(job, span, done_ms, segments, served)
        except DecodeError as exc:
            error = f"the file is damaged after {exc.decoded_ms / 1000:.1f} s: {exc}"
            return await self._end(job, FAILED, error, reason="damaged")
        except TooLong:
            error = (
                f"the recording lasts more than {limit_ms // 1000} s "
                "(RECORDING_MAX_SECONDS); its header did not say so"
            )
            return await self._end(job, FAILED, error, reason="too_long")
        except EngineError as exc:
            return await self._end(job, FAILED, f"transcription failed: {exc}", reason=exc.reason)
        finally:
            stop_decoding.set()
        metrics.recording_stage_done("transcribe", time.monotonic() - started)
        return await self._end(job, SUCCEEDED, None, reason=None)

    async def _checkpoint(
        self,
        job: Job,
        span: AudioSpan,
        done_ms: int,
        segments: list[FileSegment],
        served: dict[str, int],
    ) -> Job:
        """Store one chunk's finals (or the whole file's) with the job's checkpoint, publish
        them; the job as it now stands. `served`: the audio ms each engine transcribed (a
        chunk per channel of a cut, when they are transcribed apart)."""
        finals = [
            new_final(
                seg,
                text=normalize_text(seg.text),
                source=job.label,
                stream_id=job_stream_id(job.job_id),
                stream_seq=span.index * FINALS_PER_CHUNK_MAX + i,
            )
            for i, seg in enumerate(segments)
            if seg.text.strip()
        ]
        numbers_above = await self._live_numbers_taken(job) if finals else 0
        stored = await self._store_chunk(
            job,
            chunk_index=span.index,
            audio_ms_done=done_ms,
            finals=finals,
            engines_ms=served,
            numbers_above=numbers_above,
            reserve=self._reserver(job, span),
        )
        for name, ms in served.items():
            self.services.metrics.recording_audio(name, ms / 1000)
        await self._publish_finals(job, stored)
        job = await self._refresh(job)
        engine = max(served, key=served.__getitem__)  # the one that did most of it
        await self._publish_status(job, "running", "transcribe", engine=engine)
        return job

    def _engine_for(self, job: Job) -> FileEngineChain | None:
        # A job queued by an older release may name an alias (gcp).
        names = [engine_name(job.engine)] if job.engine else list(self.engines)
        engines = [self.engines[n] for n in names if n in self.engines]
        if not engines:
            return None
        return FileEngineChain(
            engines,
            self.breakers,
            attempts=self.settings.engine_retry_attempts,
            outage_s=self.settings.recording_engine_outage_s,
        )

    async def _refresh(self, job: Job) -> Job:
        return (await self.jobs.get(job.job_id)) or job

    async def _stage(self, job: Job, stage: str) -> None:
        await self.jobs.set_stage(job.job_id, self.owner, stage)
        await self._publish_status(await self._refresh(job), "running", stage)

    async def _end(
        self, job: Job, status: str, error: str | None, *, reason: str | None
    ) -> str | None:
        """End the job as `status` (or `cancelled`, when a cancel was asked for meanwhile);
        None when it was no longer this runner's to end (another replica took it over: its
        file is not ours to remove)."""
        ended_as = await self.jobs.finish(job.job_id, self.owner, status, error=error)
        if ended_as is None:
            if job.job_id not in self._ended:  # else ended here, just before this cancel
                log.info("recording job not ended here: no longer ours", job_id=job.job_id)
            return self._ended.get(job.job_id)
        status = self._ended[job.job_id] = ended_as
        self.services.metrics.recording_state(status)
        if reason is not None and status == FAILED:
            self.services.metrics.recording_failed(reason)
        job = await self._refresh(job)
        log.info("recording job ended", job_id=job.job_id, status=status, finals=job.finals)
        await self._publish_status(job, job.status, job.stage)
        return status

    async def _store_chunk(self, job: Job, **checkpoint: Any) -> list[FinalSegment]:
        """The chunk's checkpoint, written whatever cancels this task meanwhile (numbers asked
        of the live numbering inside it must not go unused; finals stored then are published
        in the background, as no attempt will publish them), and tried again with the same
        finals while the database is away: another attempt's transcription might hold another
        number of finals, and leave numbers of this one's block unused."""
        failures = 0
        while True:
            write = asyncio.ensure_future(
                self.jobs.checkpoint(job.job_id, self.owner, **checkpoint)
            )
            try:
                return await asyncio.shield(write)
            except asyncio.CancelledError:
                stored: list[FinalSegment] = []
                with contextlib.suppress(Exception):  # stored (or refused), then cancelled
                    stored = await run_to_end(write)
                if stored:  # the next attempt resumes after this chunk: publish them now
                    detach(self._publish_finals(job, stored), "recording-finals")
                raise
            except DATABASE_UNREACHABLE as exc:
                failures += 1
                if failures >= CHECKPOINT_ATTEMPTS:
                    raise
                log.warning("chunk not stored yet: database away", error=type(exc).__name__)
                await asyncio.sleep(backoff_delay(failures, 0.5, 5.0))

    def _reserver(self, job: Job, span: AudioSpan) -> Reserve:
        """Asked inside the chunk's transaction: a block of the meeting's live numbers (Redis,
        or this process), so a live final numbered while the chunk is stored takes a number
        after the block, never one of it. None when the numbering cannot be reached: the
        store numbers the chunk above what is known (`_live_numbers_taken`)."""
        numbering = self.services.finals.numbering

        async def reserve(count: int) -> int | None:
            # The count is part of the claim: a chunk transcribed again into another number of
            # finals (another engine) gets a new block, not one that overlaps numbers live
            # finals took since. (An unused block is a gap in the numbering; README.)
            seq = span.index * FINALS_PER_CHUNK_MAX + count
            claim = Claim(job_stream_id(job.job_id), seq)
            try:
                # Asked under the database's locks (the meeting's, or SQLite's write lock):
                # live finals' writes wait behind it, so a slow Redis gets a second, not 7.
                async with asyncio.timeout(RESERVE_TIMEOUT_S):
                    return await numbering.reserve(job.tenant_id, job.meeting_id, claim, count)
            except (NumberingUnavailable, TimeoutError) as exc:
                log.warning("chunk numbered by the store: numbering away", error=type(exc).__name__)
                return None

        return reserve

    async def _live_numbers_taken(self, job: Job) -> int:
        """The highest number live finals of the meeting may carry that the store may not hold
        yet: the meeting's counter (Redis, or this process), this replica's outbox and its
        viewers' room. Without a reserved block, a recording's finals are numbered above it, or
        a live final waiting in an outbox (a database outage) would be renumbered after viewers
        saw it; a live final numbered while the chunk is being stored may then collide, and the
        store renumbers it (README, "Delivery guarantees")."""
        tenant_id, meeting_id = job.tenant_id, job.meeting_id
        finals = self.services.finals
        known = [
            finals.numbering.floor(tenant_id, meeting_id),
            self.services.rooms.high_water(tenant_id, meeting_id) or 0,
        ]
        try:
            known.append(await finals.outbox.pending_high(tenant_id, meeting_id))
            known.append(await finals.numbering.current(tenant_id, meeting_id) or 0)
        except Exception as exc:  # numbered from what is known, and the store's own counter
            log.warning("meeting's live numbering not read", error=type(exc).__name__)
        return max(known)

    async def _publish_finals(self, job: Job, stored: list[FinalSegment]) -> None:
        if not stored:
            return
        services = self.services
        highest = max(f.segment_no for f in stored)
        try:
            await services.finals.numbering.ensure_at_least(job.tenant_id, job.meeting_id, highest)
        except Exception as exc:
            # Numbered by the store while the counter was away: until the counter is above
            # them, live finals would take their numbers (and be renumbered). Keep trying.
            log.warning("meeting's counter not raised yet", error=type(exc).__name__)
            detach(self._raise_counter(job, highest), "raise-counter")
        topic = transcript_topic(job.tenant_id, job.meeting_id)
        for segment in stored:
            try:
                await services.bus.publish(topic, final_message(job.meeting_id, segment))
            except Exception as exc:  # stored: viewers recover it with since=
                log.warning("recorded final not published", error=type(exc).__name__)

    async def _raise_counter(self, job: Job, highest: int) -> None:
        numbering = self.services.finals.numbering
        since = time.monotonic()
        for attempt in range(COUNTER_RAISE_ATTEMPTS):
            await asyncio.sleep(backoff_delay(attempt, 1.0, 30.0))
            if self.services.deletions.deleted_since(job.tenant_id, job.meeting_id, since):
                return  # a meeting started again under its id is numbered from 1
            try:
                await numbering.ensure_at_least(job.tenant_id, job.meeting_id, highest)
            except Exception:
                continue
            log.info("meeting's counter raised after an outage", job_id=job.job_id)
            return
        log.warning("meeting's counter not raised: gave up", job_id=job.job_id)

    async def _publish_status(
        self, job: Job, status: str, stage: str, *, engine: str | None = None
    ) -> None:
        message = RecordingStatusMessage(
            meeting_id=job.meeting_id,
            job_id=job.job_id,
            status=status,
            stage=stage,
            progress=round(job.progress, 4),
            audio_ms_done=job.audio_ms_done,
            audio_ms_total=job.audio_ms_total,
            engine=engine,
            error=job.error,
        )
        try:
            await self.services.bus.publish(
                status_topic(job.tenant_id, job.meeting_id), message.encode()
            )
        except Exception as exc:
            log.warning("recording status not published", error=type(exc).__name__)
