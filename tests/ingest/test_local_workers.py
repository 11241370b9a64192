"""The local engine's worker processes: parallel decoding, a responsive event loop, a worker
killed mid-stream, and a shutdown that leaves no process behind. Real processes throughout."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from ingest.engines.base import EngineError, StreamConfig
from ingest.engines.local.engine import LocalEngine, default_decoder
from tests.ingest.helpers import Collector, feed, load_fixture, wer
from tests.ingest.local_decoders import rendezvous_decoder
from tests.ingest.local_streams import (
    MONO_16K,
    MONO_48K,
    STEREO_48K,
    child_pids,
    finals_of,
    open_stream,
    run_stream,
)

MAX_WER = 0.25


async def test_two_streams_decode_at_the_same_time_in_two_processes(tmp_path: Path) -> None:
    # Each worker's decoder waits, at its first frame, until the other process is decoding
    # too: the streams can only finish if both processes really decode at the same time.
    factory = functools.partial(rendezvous_decoder, str(tmp_path), 2)
    local = LocalEngine(workers=2, decoder_factory=factory)
    try:
        await local.warm_up()
        pids = local.worker_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids

        mono, stereo = load_fixture(MONO_16K), load_fixture(STEREO_48K)
        first, second = await open_stream(local, mono), await open_stream(local, stereo)
        assert {first.worker_pid, second.worker_pid} == set(pids)  # one stream per worker
        together = await asyncio.gather(run_stream(first, mono), run_stream(second, stereo))
        assert sorted(map(int, os.listdir(tmp_path))) == sorted(pids)  # both met there
    finally:
        await local.aclose()
    for events, fx in zip(together, (mono, stereo), strict=True):
        finals = finals_of(events)
        assert len(finals) == 2
        assert all(wer(s, f.text) <= MAX_WER for s, f in zip(fx.sentences, finals, strict=True))


async def test_four_streams_decode_in_the_two_workers_least_loaded_first() -> None:
    """The event loop's lag while they decode (p99 1-6 ms with worker processes, 18-25 ms and
    stalls of 0.3 s when decoding ran on a thread here) is a measure that depends on the
    machine's load: bench/local_engine_pool.py reports it."""
    local = LocalEngine(workers=2)
    fixtures = [load_fixture(name) for name in (MONO_16K, STEREO_48K, MONO_48K, MONO_16K)]
    try:
        await local.warm_up(2)  # starting processes and decoders is not part of the measure
        streams = [await open_stream(local, fx) for fx in fixtures]
        results = await asyncio.gather(
            *(run_stream(s, fx) for s, fx in zip(streams, fixtures, strict=True))
        )
    finally:
        await local.aclose()
    assert sorted(Counter(s.worker_pid for s in streams).values()) == [2, 2]  # least loaded
    assert all(len(finals_of(events)) == 2 for events in results)
    assert os.getpid() not in {s.worker_pid for s in streams}  # decoded off this event loop


async def test_a_killed_worker_fails_its_streams_and_is_replaced() -> None:
    local = LocalEngine(workers=2)
    mono = load_fixture(MONO_16K)
    first_start, first_end = mono.spans_ms[0]
    middle = mono.offset((first_start + first_end) // 2)
    try:
        doomed = await open_stream(local, mono)
        survivor = await open_stream(local, mono)
        bystander = await open_stream(local, mono)  # idle on the doomed worker: no request out
        assert doomed.worker_pid == bystander.worker_pid != survivor.worker_pid
        victim = doomed.worker_pid
        assert victim is not None
        collectors = [Collector(s).start() for s in (doomed, survivor, bystander)]
        await feed(doomed, mono.chunks(0, middle))
        await collectors[0].wait_for(lambda c: len(c.events) >= 1)  # mid-utterance

        os.kill(victim, signal.SIGKILL)
        for collector in (collectors[0], collectors[2]):
            await collector.wait_for(lambda c: c.ended)
            assert isinstance(collector.error, EngineError), collector.error
            assert collector.error.retryable
            assert "SIGKILL" in str(collector.error)
        assert finals_of(collectors[0].events) == []
        for stream in (doomed, bystander):
            with pytest.raises(EngineError, match="SIGKILL"):
                await stream.send(mono.pcm[:640])
            with pytest.raises(EngineError, match="SIGKILL"):
                await stream.finalize()
            async with asyncio.timeout(30):
                await stream.close()  # does not hang on a dead worker
        assert local.active_streams == 1
        assert victim not in local.worker_pids()
        assert victim not in child_pids()  # reaped: no zombie

        # The other worker's stream never noticed; a new stream gets a new process.
        await feed(survivor, mono.chunks(0, middle))
        await survivor.close()
        assert len(finals_of(await collectors[1].finish())) == 1
        replacement = await open_stream(local, mono)
        assert replacement.worker_pid not in (victim, None)
        assert replacement.worker_pid in local.worker_pids()
        finals = finals_of(await run_stream(replacement, mono))
        assert len(finals) == 2
        assert all(wer(s, f.text) <= MAX_WER for s, f in zip(mono.sentences, finals, strict=True))
        assert local.active_streams == 0
    finally:
        await local.aclose()


async def test_a_worker_that_stops_answering_is_killed_and_replaced() -> None:
    # Long enough that starting a worker on a busy machine (a spawn, imports, a decoder: the
    # clock runs from the first request queued) is not mistaken for a stall, the replacement
    # included; the watchdog then fires within this of the SIGSTOP.
    local = LocalEngine(workers=1, stall_timeout_s=20.0)
    mono = load_fixture(MONO_16K)
    try:
        stream = await open_stream(local, mono)
        collector = Collector(stream).start()
        (stuck,) = local.worker_pids()
        os.kill(stuck, signal.SIGSTOP)  # alive, but answers nothing
        await feed(stream, mono.chunks(0, mono.offset(1000)))
        async with asyncio.timeout(90):
            await collector.wait_for(lambda c: c.ended, timeout=90)
        assert isinstance(collector.error, EngineError) and collector.error.retryable
        assert "stopped answering" in str(collector.error)
        assert stuck not in child_pids()  # killed and reaped
        finals = finals_of(await run_stream(await open_stream(local, mono), mono))
        assert len(finals) == 2  # a fresh worker took over
    finally:
        await local.aclose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_workers_survive_a_signal_sent_to_the_whole_process_group(sig: int) -> None:
    """systemd and dumb-init signal the whole group, and a closed terminal hangs it up: the
    gateway, not its workers, decides when decoding stops, so a stream being flushed still
    gets its finals."""
    local = LocalEngine(workers=1)
    mono = load_fixture(MONO_16K)
    try:
        stream = await open_stream(local, mono)
        collector = Collector(stream).start()
        half = mono.offset(3300)  # mid-way: in the pause between the sentences
        await feed(stream, mono.chunks(0, half))
        for pid in local.worker_pids():
            os.kill(pid, sig)
        await feed(stream, mono.chunks(half))
        await stream.close()
        finals = finals_of(await collector.finish())
        assert collector.error is None
        assert len(finals) == 2
    finally:
        await local.aclose()


async def test_aclose_stops_every_worker_even_a_stuck_one_and_leaves_no_process() -> None:
    before = child_pids()
    never_started = LocalEngine(workers=2)
    await never_started.aclose()  # nothing to stop
    assert never_started.worker_pids() == []

    local = LocalEngine(workers=2, stop_grace_s=3.0)  # per step (Stop, SIGTERM, SIGKILL)
    try:
        await local.warm_up()
        pids = local.worker_pids()
        assert len(pids) == 2 and set(pids) <= child_pids()
        fx = load_fixture(MONO_16K)
        stream = await open_stream(local, fx)
        collector = Collector(stream).start()
        await feed(stream, fx.chunks(0, fx.offset(fx.spans_ms[0][1])))
        await collector.wait_for(lambda c: len(c.events) >= 1)
        os.kill(pids[1], signal.SIGSTOP)  # cannot read its Stop request: it must be terminated
    finally:
        await local.aclose()
    assert child_pids() - before == set()  # every worker exited and was reaped
    assert local.worker_pids() == []
    await collector.wait_for(lambda c: c.ended)
    assert isinstance(collector.error, EngineError)  # the open stream ended, with an error
    with pytest.raises(EngineError):
        await local.open(StreamConfig(16000, 1, "en"))
    await local.aclose()  # twice is fine


async def test_a_decoder_factory_that_cannot_reach_the_workers_fails_open() -> None:
    local = LocalEngine(decoder_factory=lambda: default_decoder())  # not picklable
    try:
        with pytest.raises(EngineError, match="pickle") as info:
            await local.open(StreamConfig(16000, 1, "en"))
        assert info.value.retryable
        assert local.active_streams == 0
    finally:
        await local.aclose()
