"""Measure what one gateway process needs, to size Kubernetes requests and limits.

Starts `meeting-gateway serve` (SQLite, in-process bus, LOCAL_ENGINE_WORKERS=1, as one pod of
k8s/base runs it), then prints the process tree's resident memory idle and at peak while
`--streams` real-time streams of the speech fixture run at once, and the CPU time they used.

    .venv/bin/python scripts/measure_pod_resources.py --streams 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.client.audio import load_wav_pcm  # noqa: E402
from gateway.client.ingest import stream_pcm  # noqa: E402
from gateway.client.tokens import dev_token  # noqa: E402
from gateway.client.urls import ingest_url  # noqa: E402
from gateway.tokens import generate_keypair  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "two_sentences_16k_mono.wav"
TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack += children.get(current, [])
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway() -> tuple[subprocess.Popen[bytes], str, Path]:
    work = Path(tempfile.mkdtemp(prefix="measure-"))
    private, public = generate_keypair(work)
    port = free_port()
    env = {
        **os.environ,
        "JWT_PUBLIC_KEY_PATH": str(public),
        "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'gateway.db'}",
        "REDIS_URL": "",
        "LOCAL_ENGINE_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    return subprocess.Popen(cmd, cwd=REPO, env=env), f"http://127.0.0.1:{port}", private


async def measure(process: subprocess.Popen[bytes], base: str, private: Path, streams: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    pids = tree(process.pid)
    idle, cpu_before = rss_mib(pids), cpu_s(pids)
    print(f"idle: {idle:.0f} MiB in {len(pids)} processes", flush=True)

    pcm, rate, channels = load_wav_pcm(FIXTURE)
    peak = idle

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mib(tree(process.pid)))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            stream_pcm(
                ingest_url(base, f"measure-{n}"),
                dev_token(private, tenant="measure", user="measure", roles=["ingest"]),
                pcm,
                sample_rate=rate,
                channels=channels,
                speed=1.0,
                close_timeout_s=120,
            )
            for n in range(streams)
        )
    )
    wall = time.monotonic() - started
    sampler.cancel()
    used = cpu_s(tree(process.pid)) - cpu_before
    audio_s = len(pcm) / (2 * channels * rate)
    print(
        f"{streams} real-time streams of {audio_s:.1f} s: peak {peak:.0f} MiB, "
        f"{used:.1f} CPU s ({used / audio_s:.2f} cores while the audio plays; "
        f"{wall:.1f} s until all closed); close codes {[r.close_code for r in results]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    streams = parser.parse_args().streams
    process, base, private = start_gateway()
    try:
        asyncio.run(measure(process, base, private, streams))
    finally:
        process.terminate()
        process.wait(60)


if __name__ == "__main__":
    main()
