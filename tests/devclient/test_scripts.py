"""The scripts as users run them: `python scripts/...` from another directory, as subprocesses."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
import wave
from pathlib import Path

import pytest

from .conftest import FakeGateway, KeyPair

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


async def run_script(name: str, *args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPTS / name),
        *args,
        cwd=cwd,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x10\x00" * int(rate * seconds))
    return path


async def test_generate_keys_script(tmp_path: Path) -> None:
    code, out, _ = await run_script("generate_keys.py", cwd=tmp_path)
    assert code == 0, out
    key = tmp_path / "keys" / "jwt.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "jwt.pub").is_file()
    before = key.read_bytes()
    code, _, err = await run_script("generate_keys.py", cwd=tmp_path)
    assert code == 1
    assert "--force" in err
    assert key.read_bytes() == before
    code, _, _ = await run_script("generate_keys.py", "--force", cwd=tmp_path)
    assert code == 0
    assert key.read_bytes() != before


async def test_send_script_streams_a_wav_with_a_minted_ingest_token(
    fake_gateway: FakeGateway, keypair: KeyPair, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "a.wav")
    code, out, err = await run_script(
        "dev_send_pcm.py",
        *("--meeting", "m1", "--wav", str(wav), "--url", fake_gateway.url),
        *("--key", str(keypair.key_path), "--speed", "20", "--source", "system", "--finalize"),
        cwd=tmp_path,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[ready] stream_id=s1 engine=fake sample_rate=16000")
    assert lines[1] == "[summary] frames=" + str(len(fake_gateway.frames))
    assert lines[2].startswith("closed code=1000 reason='stream closed'")
    assert fake_gateway.handshakes[0]["source"] == "system"
    assert fake_gateway.controls == ["finalize", "close"]
    assert sum(size for _, size in fake_gateway.frames) == 16000


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")
async def test_send_script_can_synthesise_its_audio(
    fake_gateway: FakeGateway, keypair: KeyPair, tmp_path: Path
) -> None:
    code, _, err = await run_script(
        "dev_send_pcm.py",
        *("--meeting", "m1", "--create-test-wav", "--text", "hello", "--speed", "20"),
        *("--url", fake_gateway.url, "--key", str(keypair.key_path)),
        cwd=tmp_path,
    )
    assert code == 0, err
    assert fake_gateway.frames


async def test_send_script_reports_a_refusal(
    fake_gateway: FakeGateway, keypair: KeyPair, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "a.wav")
    code, _, err = await run_script(
        "dev_send_pcm.py",
        *("--meeting", "m1", "--wav", str(wav), "--url", fake_gateway.url),
        *("--token", keypair.token(["viewer"])),
        cwd=tmp_path,
    )
    assert code == 1
    assert "code=4403" in err
    assert "Traceback" not in err


async def test_scripts_explain_a_missing_key(tmp_path: Path) -> None:
    code, _, err = await run_script("dev_subscribe_ws.py", "--meeting", "m1", cwd=tmp_path)
    assert code == 1
    assert "generate_keys.py" in err
    assert "Traceback" not in err


async def test_subscribe_script_prints_the_transcript_and_the_close(
    fake_gateway: FakeGateway, keypair: KeyPair, tmp_path: Path
) -> None:
    fake_gateway.subscriber_script = [
        {"type": "transcript.partial", "segment_no": 1, "text": "hel", "source": "mic",
         "start_ms": 0, "end_ms": 500},
        {"type": "transcript.final", "segment_no": 1, "text": "hello", "source": "mic",
         "start_ms": 0, "end_ms": 800},
    ]  # fmt: skip
    code, out, err = await run_script(
        "dev_subscribe_ws.py",
        *("--meeting", "m1", "--since", "0", "--url", fake_gateway.url),
        *("--key", str(keypair.key_path)),
        cwd=tmp_path,
    )
    assert code == 0, err
    assert out.splitlines() == [
        "~#1 [00:00.000-00:00.500] (mic) hel",
        "#1 [00:00.000-00:00.800] (mic) hello",
        "closed code=1000 reason='meeting ended'",
    ]
    assert fake_gateway.requests[0][0].endswith("?since=0")


async def test_subscribe_script_exits_cleanly_on_ctrl_c(
    fake_gateway: FakeGateway, keypair: KeyPair, tmp_path: Path
) -> None:
    fake_gateway.subscriber_stays_open = True
    fake_gateway.subscriber_script = [{"type": "status", "event": "stream.started"}]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPTS / "dev_subscribe_ws.py"),
        *("--meeting", "m1", "--url", fake_gateway.url, "--key", str(keypair.key_path)),
        cwd=tmp_path,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(120):  # a Python start and imports, on a loaded machine
        # Once a message is printed the client is subscribed, not still opening the connection.
        assert (await proc.stdout.readline()).startswith(b"[status] event=stream.started")
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in err.decode()
    async with asyncio.timeout(30):
        while not fake_gateway.subscriber_closes:  # noqa: ASYNC110 - the server task is finishing
            await asyncio.sleep(0.01)
    assert fake_gateway.subscriber_closes == [1000]  # a close handshake, not a dropped socket


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("dev_send_pcm.py", "soxr"),
        ("dev_subscribe_ws.py", "websockets"),
        ("generate_keys.py", "jwt"),
    ],
)
async def test_outside_the_virtualenv_a_script_says_how_to_run_it(
    tmp_path: Path, name: str, missing: str
) -> None:
    """A bare `python scripts/...` from a fresh clone: an interpreter without the project's
    dependencies (`-S`: no site-packages at all) gets the fix, not an import traceback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        str(SCRIPTS / name),
        "--meeting",
        "m1",
        cwd=tmp_path,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text and not out
    assert f"'{missing}'" in text
    assert f"/.venv/bin/python scripts/{name}" in text


@pytest.mark.parametrize(
    ("name", "roles"),
    [("dev_send_pcm.py", "roles ingest"), ("dev_subscribe_ws.py", "roles viewer")],
)
async def test_help_shows_defaults_and_the_tenant_of_self_minted_tokens(
    tmp_path: Path, name: str, roles: str
) -> None:
    code, out, err = await run_script(name, "--help", cwd=tmp_path)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "--tenant TENANT tenant_id of a self-minted token (default: dev)" in flat
    assert "(default: http://127.0.0.1:8000)" in flat and "(default: keys/jwt.key)" in flat
    assert "for tenant --tenant (default 'dev')" in flat and roles in flat
    assert "valid for --meeting only" in flat
