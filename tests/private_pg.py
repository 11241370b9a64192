"""A throwaway PostgreSQL server (initdb + pg_ctl on a free port) for tests that stop it.

The shared server must never be stopped by a test. initdb refuses to run as root, so when the
tests run as root the server runs as the `postgres` user (runuser) in a directory it owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.util import free_port


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (make sysdeps)")
    return found


class PrivatePostgres:
    def __init__(self) -> None:
        self.port = free_port()
        # Under /tmp rather than pytest's tmp_path: the postgres user must reach it.
        self.datadir = Path(tempfile.mkdtemp(prefix="mg-pg-"))
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.datadir, "postgres", "postgres")
        self._cmd(_bin("initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres")

    def _cmd(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._cmd(
            _bin("pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            "-l",
            str(self.datadir / "server.log"),
        )

    def stop(self) -> None:
        self._cmd(_bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.datadir, ignore_errors=True)
