"""`serve --workers N`: N processes on one listening socket, each running a `GatewayServer`.

uvicorn's own supervisor builds each worker's server itself (a plain `uvicorn.Server`), so the
CLI keeps its own: bind once, start N spawned workers, start another when one dies (a worker that
fails at startup stops them all: it would fail the same way again), and on SIGTERM/SIGINT/SIGHUP
pass SIGTERM to every worker, each of which drains its own connections, then wait for them. A
worker whose supervisor dies without that (SIGKILL) gets SIGTERM from the kernel and drains too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("uvicorn.error")

POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this worker when its supervisor dies (killed, or gone without stopping it):
    it drains and exits rather than serving on alone, past the SQLite lock the supervisor
    held. Linux's PR_SET_PDEATHSIG; a parent already gone is a SIGTERM now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(config: uvicorn.Config, sock: socket.socket, parent: int) -> None:
    from gateway.server.server import GatewayServer

    _stop_with_parent(parent)
    config.configure_logging()
    server = GatewayServer(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _forget_metrics_of(process: BaseProcess) -> None:
    """A dead worker's live gauges (connections, streams, meetings, outbox) leave the replica's
    sums; its counters stay, as prometheus-client's multiprocess mode keeps them."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and process.pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid, directory)


def run_workers(config: uvicorn.Config, workers: int, stop_within_s: float | None = None) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; the exit status. A second SIGINT
    (to this process) is passed on to the workers, which then stop at once; a worker still
    running `stop_within_s` after the stop began is killed."""
    sock = config.bind_socket()
    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    processes: list[BaseProcess] = []

    def stop(sig: int, frame: FrameType | None) -> None:
        if stopping.is_set() and sig == signal.SIGINT:
            for process in processes:
                if process.is_alive() and process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGINT)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a hangup stops as SIGTERM
        signal.signal(sig, stop)

    def start() -> BaseProcess:
        process = spawn.Process(target=_worker, args=(config, sock, os.getpid()), daemon=False)
        process.start()
        return process

    processes.extend(start() for _ in range(workers))
    status = 0
    try:
        while not stopping.wait(POLL_S):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                process.join()
                _forget_metrics_of(process)
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping", process.pid)
                    status = STARTUP_FAILURE
                    stopping.set()
                    break
                log.warning(
                    "worker %s died (exit %s); starting another", process.pid, process.exitcode
                )
                processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: each worker drains its own connections
        deadline = None if stop_within_s is None else time.monotonic() + stop_within_s
        for process in processes:
            process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error(
                    "worker %s still running after %gs; killing it", process.pid, stop_within_s
                )
                process.kill()
                process.join()
                status = status or 1
        sock.close()
    return status
