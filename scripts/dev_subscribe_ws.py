#!/usr/bin/env python3
"""Follow a meeting's live transcript: partials update in place, finals print as lines.

When the gateway goes away (restart 1012, too slow 4408, unavailable 4503, a dropped connection)
it reconnects with jittered exponential backoff and resumes with `since=` the last final it saw, so
no final is missed or repeated; it exits on any other close (printing the code and reason), or
on Ctrl-C. `--no-reconnect` exits on the first close.
Example: .venv/bin/python scripts/dev_subscribe_ws.py --meeting m1 --since 0
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "gateway").is_dir() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # use this checkout's package, installed or not

from gateway.client.bootstrap import DefaultsHelpFormatter, require_installed  # noqa: E402

# Before the imports that need the virtualenv: outside it, say how to run this script.
require_installed("dev_subscribe_ws.py", ("websockets", "jwt", "cryptography"))

from gateway.client.cli import add_connection_args, positive_float, run_cli, token_from_args  # noqa: E402
from gateway.client.resume import follow  # noqa: E402
from gateway.client.subscribe import subscribe  # noqa: E402
from gateway.client.terminal import TranscriptView  # noqa: E402
from gateway.client.urls import subscribe_url  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    add_connection_args(parser, minted_roles="viewer")
    parser.add_argument("--since", type=int, help="replay finals after this segment number")
    parser.add_argument(
        "--ping-interval", type=positive_float, help="send {'type': 'ping'} every this many seconds"
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit on the first close, whatever its code",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, view: TranscriptView) -> int:
    token = token_from_args(args, roles=["viewer"])
    # Ctrl-C ends the subscription with a close handshake (1000), then exits 130; a second one
    # while closing interrupts at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        code = await _subscribe(args, view, token, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if stop.is_set():
        print("interrupted", file=sys.stderr)
        return 130
    return code


async def _subscribe(
    args: argparse.Namespace, view: TranscriptView, token: str | None, stop: asyncio.Event
) -> int:
    if args.no_reconnect:
        closed = await subscribe(
            subscribe_url(args.url, args.meeting),
            token,
            since=args.since,
            on_message=view.handle,
            token_in_query=args.token_in_query,
            ping_interval_s=args.ping_interval,
            stop=stop,
        )
    else:
        closed = await follow(
            subscribe_url(args.url, args.meeting),
            token,
            since=args.since,
            on_message=view.handle,
            token_in_query=args.token_in_query,
            ping_interval_s=args.ping_interval,
            stop=stop,
            on_reconnect=lambda c, delay: view.note(
                f"connection closed code={c.code} reason={c.reason!r}; resuming in {delay:.1f}s"
            ),
        )
    view.close()
    view.note(f"closed code={closed.code} reason={closed.reason!r}")
    return 0 if closed.code in (1000, 1001) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    view = TranscriptView()
    try:
        return run_cli(run(args, view))
    finally:
        view.close()


if __name__ == "__main__":
    sys.exit(main())
