"""`meeting-gateway recordings upload|status|cancel`: a recording job from the terminal.

`upload FILE --meeting ID [--wait]` streams the file (never read whole) to the gateway and, with
`--wait`, follows the job's Server-Sent Events with a progress bar until it ends (exit 0 when it
succeeded, 1 otherwise). Tokens are `--token`, or a dev token minted with `--key`.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx

from gateway.client.rest_cli import (
    add_arguments,
    error_message,
    reaching_the_gateway,
    token_for,
)
from gateway.ids import ID_RULE, valid_id
from shared.backoff import backoff_delay

UPLOAD_BLOCK = 1 << 16
BAR_WIDTH = 30


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(UPLOAD_BLOCK):
            yield block


def progress_line(job: dict[str, Any]) -> str:
    """`[#####.....]  42.0%  12.6/30.0 s  transcribe  ETA 8 s` for a job or an SSE payload."""
    progress = float(job.get("progress") or 0.0)
    filled = int(progress * BAR_WIDTH)
    done, total = job.get("audio_seconds_done", 0.0), job.get("audio_seconds_total", 0.0)
    eta = job.get("eta_seconds")
    tail = f"  ETA {eta:.0f} s" if isinstance(eta, int | float) else ""
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"[{bar}] {progress * 100:5.1f}%  {done:.1f}/{total:.1f} s  {job.get('stage', '')}{tail}"


# Following a job: reconnect with backoff while the gateway cannot be reached, and give up
# (exit 1; the job goes on, `recordings status` tells how it ended) after this long without it.
FOLLOW_RETRY_BASE_S = 0.5
FOLLOW_RETRY_CAP_S = 5.0
FOLLOW_GIVE_UP_S = 120.0


def follow(
    base: str, token: str, job_id: str, out: TextIO, *, give_up_s: float = FOLLOW_GIVE_UP_S
) -> dict[str, Any]:
    """Follow the job's events (reconnecting with Last-Event-ID) until its end; the final job."""
    last_id: str | None = None
    shown = ""  # the bar written last
    failures, unreachable_since = 0, None
    while True:
        headers = {"Authorization": f"Bearer {token}"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            with httpx.stream(
                "GET",
                f"{base}/api/v1/recordings/{job_id}/events",
                headers=headers,
                timeout=httpx.Timeout(60.0, connect=10.0),
            ) as response:
                if response.status_code != 200:
                    raise SystemExit(f"meeting-gateway: {error_message(response)}")
                failures, unreachable_since = 0, None
                event: str | None = None
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        last_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event is not None:
                        data = json.loads(line[6:])
                        bar = progress_line(data) if event in ("progress", "end") else shown
                        if bar != shown:  # the end repeats the last progress: not twice
                            out.write("\r" + bar)
                            out.flush()
                            shown = bar
                        if event == "end":
                            out.write("\n")
                            return data
        except httpx.TransportError as exc:  # resume where the last event left off
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since >= give_up_s:
                raise SystemExit(
                    f"meeting-gateway: lost the gateway at {base} ({type(exc).__name__}) for "
                    f"{give_up_s:.0f} s; the job goes on: `recordings status {job_id}`"
                ) from None
            time.sleep(backoff_delay(failures, FOLLOW_RETRY_BASE_S, FOLLOW_RETRY_CAP_S))
            failures += 1


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"meeting-gateway: no such file: {path}", file=sys.stderr)
        return 2
    if not valid_id(args.meeting):  # ("a/b" would reach no route: a bare 404)
        print(f"meeting-gateway: --meeting must be {ID_RULE}", file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    token = token_for(args, ["ingest", "viewer"])
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not content_type.startswith(("audio/", "video/", "application/ogg")):
        content_type = "application/octet-stream"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    params = {"language": args.language, "label": args.label}
    if args.engine:
        params["engine"] = args.engine
    if args.split_channels:
        params["split_channels"] = "true"
    response = httpx.post(
        f"{base}/api/v1/meetings/{args.meeting}/recordings",
        content=_file_blocks(path),
        headers=headers,
        params=params,
        timeout=httpx.Timeout(600.0, connect=10.0),
    )
    if response.status_code not in (200, 202):
        print(
            f"meeting-gateway: upload refused ({response.status_code}): {error_message(response)}",
            file=sys.stderr,
        )
        return 1
    job = response.json()
    print(f"job {job['id']} {job['status']} ({job['audio_seconds_total']:.1f} s of audio)")
    if not args.wait:
        return 0
    end = follow(base, token, job["id"], sys.stdout)
    if end.get("status") != "succeeded":
        print(f"job {end.get('status')}: {end.get('error') or ''}".rstrip(": "))
        return 1
    print(f"done: {end.get('finals', 0)} finals in meeting {end.get('meeting_id')}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    response = httpx.get(
        f"{base}/api/v1/recordings/{args.job}",
        headers={"Authorization": f"Bearer {token_for(args, ['viewer', 'ingest'])}"},
        timeout=30,
    )
    if response.status_code != 200:
        print(f"meeting-gateway: {error_message(response)}", file=sys.stderr)
        return 1
    job = response.json()
    print(f"{job['id']} {job['status']}  " + progress_line(job))
    if job.get("error"):
        print(f"error: {job['error']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    response = httpx.delete(
        f"{base}/api/v1/recordings/{args.job}",
        headers={"Authorization": f"Bearer {token_for(args, ['ingest'])}"},
        timeout=30,
    )
    if response.status_code not in (200, 202):
        print(f"meeting-gateway: {error_message(response)}", file=sys.stderr)
        return 1
    job = response.json()
    print(
        f"{job['id']} {job['status']}"
        + (" (cancel requested)" if job["status"] == "running" else "")
    )
    return 0


def add_parser(sub: Any) -> None:
    """`recordings upload|status|cancel` under the main command's subparsers."""
    rec = sub.add_parser("recordings", help="upload a recording and follow its job")
    rec_sub = rec.add_subparsers(dest="recordings", required=True)
    upload = rec_sub.add_parser("upload", help="upload FILE to a meeting as a transcription job")
    upload.add_argument("file")
    upload.add_argument("--meeting", required=True)
    upload.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    upload.add_argument("--language", default="en")
    upload.add_argument("--label", default="recording", help="the finals' source")
    upload.add_argument("--engine", help="one of the gateway's file engines (default: the chain)")
    upload.add_argument(
        "--split-channels",
        action="store_true",
        help="transcribe each channel on its own (one person per side; speakers ch1, ch2)",
    )
    upload.add_argument("--idempotency-key", help="repeat an upload without a second job")
    add_arguments(upload)
    upload.set_defaults(func=reaching_the_gateway(cmd_upload))
    status = rec_sub.add_parser("status", help="a job's status")
    status.add_argument("job")
    add_arguments(status)
    status.set_defaults(func=reaching_the_gateway(cmd_status))
    cancel = rec_sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    add_arguments(cancel)
    cancel.set_defaults(func=reaching_the_gateway(cmd_cancel))
