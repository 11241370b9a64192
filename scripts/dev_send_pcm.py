#!/usr/bin/env python3
"""Stream a WAV file to the gateway's ingest WebSocket in (accelerated) real time.

Prints what the server says: ready, errors, the final summary and the close code.
Example: .venv/bin/python scripts/dev_send_pcm.py --meeting m1 --create-test-wav --speed 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "gateway").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # use this checkout's package, installed or not

from gateway.client.bootstrap import DefaultsHelpFormatter, require_installed  # noqa: E402

# Before the imports that need the virtualenv: outside it, say how to run this script.
require_installed("dev_send_pcm.py")

from gateway.client.audio import DEFAULT_TEST_TEXT, conform_pcm, create_test_wav, load_wav_pcm  # noqa: E402
from gateway.client.cli import add_connection_args, positive_float, run_cli, token_from_args  # noqa: E402
from gateway.client.ingest import stream_pcm  # noqa: E402
from gateway.client.pacing import DEFAULT_MAX_FPS  # noqa: E402
from gateway.client.reconnect import stream_pcm_reconnecting  # noqa: E402
from gateway.client.terminal import TranscriptView  # noqa: E402
from gateway.client.urls import ingest_url, subscribe_url  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    add_connection_args(parser, minted_roles="ingest (ingest and viewer with --reconnect)")
    audio = parser.add_mutually_exclusive_group(required=True)
    audio.add_argument("--wav", type=Path, help="WAV file to stream")
    audio.add_argument(
        "--create-test-wav", action="store_true", help="synthesise speech with flite and send it"
    )
    parser.add_argument("--text", default=DEFAULT_TEST_TEXT, help="what --create-test-wav says")
    parser.add_argument(
        "--source", choices=("mic", "system"), default="mic", help="which source of the meeting"
    )
    parser.add_argument("--language", default="en", help="handshake language (or auto)")
    parser.add_argument(
        "--ai-mode", choices=("standard", "super"), default="standard", help="handshake ai_mode"
    )
    parser.add_argument("--device-id", default="dev_send_pcm", help="handshake device_id")
    parser.add_argument(
        "--speed", type=positive_float, default=1.0, help="times faster than real time (inf: max)"
    )
    parser.add_argument(
        "--max-fps", type=positive_float, default=DEFAULT_MAX_FPS, help="frames/s budget"
    )
    parser.add_argument("--finalize", action="store_true", help="send finalize before close")
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="survive gateway restarts: reconnect with backoff and re-send the audio no final "
        "covers yet (follows the meeting as a viewer too: the token needs both roles)",
    )
    return parser.parse_args(argv)


def read_audio(args: argparse.Namespace) -> tuple[bytes, int, int]:
    """The PCM to send, fitted to the handshake's limits (1-2 channels, 8-48 kHz)."""
    if args.wav is not None:
        return conform_pcm(*load_wav_pcm(args.wav))
    with tempfile.TemporaryDirectory(prefix="dev_send_pcm_") as tmp:
        wav = Path(tmp) / "test.wav"
        create_test_wav(wav, args.text)
        return conform_pcm(*load_wav_pcm(wav))


async def run_reconnecting(args: argparse.Namespace, pcm: bytes, rate: int, channels: int) -> int:
    token = token_from_args(args, roles=["ingest", "viewer"])
    view = TranscriptView()

    def on_reconnect(what: str, code: int, delay: float) -> None:
        view.note(f"{what} connection closed code={code}; reconnecting in {delay:.1f}s")

    try:
        summary = await stream_pcm_reconnecting(
            ingest_url(args.url, args.meeting),
            subscribe_url(args.url, args.meeting),
            token,
            pcm,
            sample_rate=rate,
            channels=channels,
            **_stream_options(args),
            on_transcript=view.handle,
            on_reconnect=on_reconnect,
        )
    finally:
        view.close()
    view.note(
        f"closed code={summary.close_code} streams={summary.streams} "
        f"reconnects={max(0, summary.reconnects)} covered={summary.coverage.covered_ms}ms "
        f"elapsed={summary.elapsed_s:.2f}s attempts={len(summary.runs)}"
    )
    return 0 if summary.ok else 1


def _stream_options(args: argparse.Namespace) -> dict[str, Any]:
    """What the plain and the reconnecting stream take alike from the command line."""
    return {
        "source": args.source,
        "language": args.language,
        "ai_mode": args.ai_mode,
        "device_id": args.device_id,
        "speed": args.speed,
        "max_fps": args.max_fps,
        "token_in_query": args.token_in_query,
    }


async def run(args: argparse.Namespace, pcm: bytes, rate: int, channels: int) -> int:
    if args.reconnect:
        return await run_reconnecting(args, pcm, rate, channels)
    token = token_from_args(args, roles=["ingest"])
    view = TranscriptView()
    try:
        summary = await stream_pcm(
            ingest_url(args.url, args.meeting),
            token,
            pcm,
            sample_rate=rate,
            channels=channels,
            **_stream_options(args),
            on_message=view.handle,
            finalize_at_end=args.finalize,
        )
    finally:
        view.close()
    late = " (server did not close in time)" if summary.timed_out else ""
    view.note(
        f"closed code={summary.close_code} reason={summary.close_reason!r} "
        f"frames={summary.frames_sent} bytes={summary.bytes_sent} "
        f"elapsed={summary.elapsed_s:.2f}s{late}"
    )
    return 0 if summary.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pcm, rate, channels = read_audio(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = len(pcm) / (2 * channels * rate)
    print(
        f"streaming {seconds:.1f}s of audio ({rate} Hz, {channels} ch) at {args.speed:g}x "
        f"as {args.source} to meeting {args.meeting}",
        file=sys.stderr,
    )
    return run_cli(run(args, pcm, rate, channels))


if __name__ == "__main__":
    sys.exit(main())
