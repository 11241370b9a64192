#!/usr/bin/env python3
"""Two-pass local engine (Whisper finals) against the one-pass pocketsphinx baseline, same run.

N streams each play the real read-speech fixture (tests/fixtures/librivox_austen_16k_mono.wav,
five sentences with known spans) at real-time pace in 100 ms chunks, starting a random
0-2 s apart. For each engine and N it prints:
- WER of all finals against the reference (lowercase words, no punctuation);
- first-partial latency: from a sentence's first sample being sent to its first event;
- final lag p50/p95: from a sentence's last sample being sent to its final;
- CPU per audio second: CPU of the gateway-side process and the workers over the run, divided
  by the audio streamed;
and the most concurrent streams whose final lag p95 stayed under `--max-lag` (2 s). The last
column is the machine's 1-minute load average after the row: on a shared machine, compare the
two engines' rows at similar load.

Usage: .venv/bin/python bench/local_engine.py [--levels 1,2,4,6] [--sentences 5]
       [--engines whisper,pocketsphinx] [--model tiny.en]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.engines.base import EngineEvent, StreamConfig  # noqa: E402
from ingest.engines.local.engine import LocalEngine  # noqa: E402
from ingest.engines.local.whisper import finals_model_from_setting, spoken_words  # noqa: E402
from ingest.wav import read_wav  # noqa: E402

FIXTURE = "librivox_austen_16k_mono.wav"
CHUNK_MS = 100


@dataclass
class Clip:
    pcm: bytes
    rate: int
    sentences: list[str]
    spans_ms: list[tuple[int, int]]

    @classmethod
    def load(cls, sentences: int) -> Clip:
        pcm, rate, channels = read_wav(ROOT / "tests" / "fixtures" / FIXTURE)
        assert channels == 1
        entry = next(
            f
            for f in json.loads((ROOT / "tests" / "fixtures" / "fixtures.json").read_text())[
                "files"
            ]
            if f["file"] == FIXTURE
        )
        chosen = entry["sentences"][:sentences]
        end_ms = min(entry["duration_ms"], chosen[-1]["end_ms"] + 1000)
        return cls(
            pcm=pcm[: end_ms * rate * 2 // 1000],
            rate=rate,
            sentences=[s["text"] for s in chosen],
            spans_ms=[(s["start_ms"], s["end_ms"]) for s in chosen],
        )

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.rate)


@dataclass
class StreamResult:
    events: list[tuple[float, EngineEvent]] = field(default_factory=list)  # (wall, event)
    t0: float = 0.0


def wer(reference: list[str], hypothesis: list[str]) -> float:
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, start=1):
            best = min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
            diagonal, row[j] = row[j], best
    return row[len(hypothesis)] / max(1, len(reference))


async def play(engine: LocalEngine, clip: Clip, delay_s: float) -> StreamResult:
    await asyncio.sleep(delay_s)
    result = StreamResult()
    stream = await engine.open(StreamConfig(clip.rate, 1, "en"))

    async def collect() -> None:
        async for event in stream.events():
            result.events.append((time.monotonic(), event))

    collector = asyncio.create_task(collect())
    size = clip.rate * 2 * CHUNK_MS // 1000
    result.t0 = time.monotonic()
    for index, offset in enumerate(range(0, len(clip.pcm), size)):
        # Real-time pace: chunk k is sent once its audio has been "spoken".
        await asyncio.sleep(max(0.0, result.t0 + (index + 1) * CHUNK_MS / 1000 - time.monotonic()))
        await stream.send(clip.pcm[offset : offset + size])
    await stream.close()
    await collector
    return result


def measure(clip: Clip, results: list[StreamResult]) -> dict[str, float]:
    first_partial, lags, errors, words = [], [], 0.0, 0
    reference = spoken_words(" ".join(clip.sentences))
    for result in results:
        finals = [(t, e) for t, e in result.events if e.is_final and e.text]
        said = spoken_words(" ".join(e.text for _, e in finals))
        errors += wer(reference, said) * len(reference)
        words += len(reference)
        for start_ms, end_ms in clip.spans_ms:
            spoken_at = result.t0 + start_ms / 1000
            ended_at = result.t0 + end_ms / 1000
            seen = [t for t, e in result.events if e.end_ms > start_ms and e.start_ms < end_ms]
            if seen:
                first_partial.append(min(seen) - spoken_at)
            done = [t for t, e in finals if e.end_ms >= end_ms - 400]
            lags.append((min(done) if done else float("inf")) - ended_at)
    lags.sort()
    return {
        "wer": errors / max(1, words),
        "first_partial_p50": statistics.median(first_partial) if first_partial else float("nan"),
        "final_lag_p50": lags[len(lags) // 2],
        "final_lag_p95": lags[min(len(lags) - 1, round(0.95 * (len(lags) - 1)))],
    }


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of this process and `pids` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run_level(kind: str, model: str, clip: Clip, streams: int) -> dict[str, float]:
    engine = LocalEngine(
        max_streams=1000,
        overload_backlog_s=1e9,  # measure the lag, do not refuse
        finals=finals_model_from_setting(model if kind == "whisper" else "pocketsphinx"),
    )
    try:
        await engine.warm_up(decoders=min(streams, 2))
        pids = engine.worker_pids()
        cpu_before = cpu_seconds(pids)
        rng = random.Random(streams)
        results = await asyncio.gather(
            *(play(engine, clip, rng.uniform(0, 2)) for _ in range(streams))
        )
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        await engine.aclose()
    figures = measure(clip, list(results))
    figures["cpu_per_audio_s"] = cpu / (clip.seconds * streams)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,2,4,6", help="concurrent streams to try")
    parser.add_argument("--sentences", type=int, default=5, help="sentences of the clip (1-5)")
    parser.add_argument("--engines", default="whisper,pocketsphinx")
    parser.add_argument("--model", default="tiny.en", help="LOCAL_FINALS_MODEL for whisper")
    parser.add_argument("--max-lag", type=float, default=2.0)
    args = parser.parse_args()
    clip = Clip.load(args.sentences)
    levels = [int(n) for n in args.levels.split(",")]
    print(
        f"clip: {clip.seconds:.1f} s of real read speech, {len(clip.sentences)} sentences, "
        f"real-time pace; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    header = "engine        streams   WER  1st-partial p50  final lag p50  p95  CPU/audio-s  load"
    print(header)
    capacity: dict[str, int] = {}
    for kind in args.engines.split(","):
        capacity[kind] = 0
        keeping_up = True
        for streams in levels:
            f = await run_level(kind, args.model, clip, streams)
            print(
                f"{kind:<13} {streams:>7}  {f['wer']:.3f}  {f['first_partial_p50']:>13.2f} s"
                f"  {f['final_lag_p50']:>11.2f} s  {f['final_lag_p95']:.2f} s"
                f"  {f['cpu_per_audio_s']:.3f}        {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            keeping_up = keeping_up and f["final_lag_p95"] < args.max_lag
            if keeping_up:
                capacity[kind] = streams
    for kind, streams in capacity.items():
        print(f"{kind}: most real-time streams with final lag p95 < {args.max_lag:g} s: {streams}")


if __name__ == "__main__":
    asyncio.run(main())
