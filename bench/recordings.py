#!/usr/bin/env python3
"""Recordings: the local pipeline against faster-whisper transcribing the same file directly.

The file is the real-speech fixture (tests/fixtures/librivox_austen_16k_mono.wav, 29.73 s)
repeated to `--minutes` (default 60), encoded here with PyAV as MP3 (44.1 kHz, what phones and
desktop recorders upload), without ever holding the whole audio in memory. Each side then runs
in its own fresh process, so its peak RSS is its own:
- pipeline: `ingest.files.pipeline` (decode frame by frame -> chunk at pauses -> the
  LocalFileEngine, `max_concurrency` chunks in flight), the code the job runner uses;
- direct: `WhisperModel.transcribe(path)` with the same model, beam size, VAD and
  conditioning, `cpu_threads` = the usable cores (faster-whisper decodes the whole file into
  memory first).
It prints wall time, CPU time, real-time factor and peak RSS of both, their ratio, and the
word error rate of each transcript against the fixture's known text (repeated).
Targets (issue 15): pipeline at most 1.3x the direct time, peak RSS under 600 MB whatever the
length, 1 hour in under 10 minutes on 2 cores with tiny.en.

Usage: .venv/bin/python bench/recordings.py [--minutes 60] [--model tiny.en] [--keep FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "librivox_austen_16k_mono.wav"


def make_file(path: Path, minutes: float) -> float:
    """The fixture repeated to `minutes`, as MP3, streamed through the encoder."""
    import av
    import numpy as np

    with wave.open(str(FIXTURE), "rb") as w:
        clip = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    total = int(minutes * 60 * 16000)
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=44100)
        stream.layout, stream.format = "mono", "fltp"
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=44100)
        pts = 0
        for start in range(0, total, 16000):
            offset = start % len(clip)
            piece = clip[offset : offset + min(16000, total - start)]
            frame = av.AudioFrame.from_ndarray(piece[None, :].copy(), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for converted in [*resampler.resample(frame)]:
                converted.pts, converted.time_base = pts, Fraction(1, 44100)
                pts += converted.samples
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            converted.pts, converted.time_base = pts, Fraction(1, 44100)
            pts += converted.samples
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return total / 16000


def reference(seconds: float) -> list[str]:
    from ingest.engines.local.whisper import spoken_words

    files = json.loads((FIXTURE.parent / "fixtures.json").read_text())["files"]
    entry = next(f for f in files if f["file"] == FIXTURE.name)
    words = spoken_words(" ".join(s["text"] for s in entry["sentences"]).replace("mister", "mr"))
    repeats = seconds / 29.73
    return words * int(repeats) + words[: int(len(words) * (repeats % 1))]


def wer(ref: list[str], hyp: list[str]) -> float:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            best = min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
            diagonal, row[j] = row[j], best
    return row[len(hyp)] / max(1, len(ref))


# -- the two sides, each in its own process --------------------------------------------------


def prepare_pipeline(model: str):
    """The engine, loaded (outside the timing, as the gateway loads it once)."""
    from ingest.files.local import LocalFileEngine, recordings_model

    engine = LocalFileEngine(recordings_model(model))
    engine.load()
    return engine


def run_pipeline(path: Path, engine) -> list[str]:
    from ingest.engines.local.whisper import spoken_words
    from ingest.files.base import FileOptions
    from ingest.files.pipeline import recording_chunks, transcribe_chunks

    async def main() -> list[str]:
        words: list[str] = []
        chunks = recording_chunks(path, engine)
        async for _chunk, segments in transcribe_chunks(chunks, engine, FileOptions("en")):
            words += [w for s in segments for w in spoken_words(s.text)]
        return words

    return asyncio.run(main())


def prepare_direct(model: str):
    from faster_whisper import WhisperModel

    from ingest.engines.local.engine import usable_cpus
    from ingest.files.local import model_source, recordings_model

    spec = recordings_model(model)
    return WhisperModel(
        model_source(spec), device="cpu", compute_type=spec.compute_type, cpu_threads=usable_cpus()
    )


def run_direct(path: Path, whisper) -> list[str]:
    from ingest.engines.local.whisper import spoken_words
    from ingest.files.local import BEAM_SIZE, VAD_PARAMETERS

    segments, _ = whisper.transcribe(
        str(path),
        language="en",
        beam_size=BEAM_SIZE,
        condition_on_previous_text=True,
        vad_filter=True,
        vad_parameters=VAD_PARAMETERS,
    )
    return [w for s in segments for w in spoken_words(s.text)]


def child(side: str, path: Path, model: str) -> None:
    prepare, run = {
        "pipeline": (prepare_pipeline, run_pipeline),
        "direct": (prepare_direct, run_direct),
    }[side]
    loaded = prepare(model)  # model loading is outside the timing on both sides
    started, cpu = time.perf_counter(), time.process_time()
    words = run(path, loaded)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": peak_mb, "words": words}))


def measure(side: str, path: Path, model: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, "--file", str(path), "--model", model],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--keep", type=Path, help="write the MP3 here (and reuse it if present)")
    parser.add_argument("--child", choices=["pipeline", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.model)
        return
    with tempfile.TemporaryDirectory(prefix="bench-recordings-") as tmp:
        path = args.keep or Path(tmp) / "meeting.mp3"
        if path.exists():
            seconds = args.minutes * 60
        else:
            started = time.perf_counter()
            seconds = make_file(path, args.minutes)
            print(f"made {seconds / 60:.1f} min MP3 in {time.perf_counter() - started:.1f} s")
        ref = reference(seconds)
        print(f"cores {os.sched_getaffinity(0).__len__()}  load {os.getloadavg()[0]:.1f}")
        results = {}
        for side in ("direct", "pipeline"):
            r = measure(side, path, args.model)
            results[side] = r
            print(
                f"{side:9s} wall {r['wall']:7.1f} s  cpu {r['cpu']:7.1f} s  "
                f"RTF {r['wall'] / seconds:.3f}  peak RSS {r['peak_mb']:6.0f} MB  "
                f"WER {wer(ref, r['words']):.3f}  words {len(r['words'])}/{len(ref)}"
            )
        ratio = results["pipeline"]["wall"] / results["direct"]["wall"]
        hour = results["pipeline"]["wall"] / seconds * 3600 / 60
        print(
            f"pipeline/direct {ratio:.2f}x (target <= 1.3x); pipeline peak RSS "
            f"{results['pipeline']['peak_mb']:.0f} MB (target < 600); 1 h would take "
            f"{hour:.1f} min (target < 10) at this load {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
