"""Uploaded files no job will read: a replica that died mid-upload (before its job row), or
after a job ended but before it removed the file. Swept at startup and every few minutes.

A file is an orphan when no job that still needs it names it and it has not been written to
for ORPHAN_AGE_S: an upload in progress (on any replica sharing the directory) writes as its
body arrives, and its job row follows within seconds of the last byte.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path

from gateway.observability.logs import get_logger
from store.jobs import JobStore

log = get_logger("gateway.pipeline.upload_sweep")

UPLOAD_SUFFIX = ".upload"
ORPHAN_AGE_S = 3600.0
SWEEP_EVERY_S = 600.0


def orphans(
    files: Iterable[tuple[str, float]], needed: set[str], *, now: float, min_age_s: float
) -> list[str]:
    """Names of (name, mtime) upload files that no job needs and nothing wrote lately."""
    return [
        name
        for name, mtime in files
        if name.endswith(UPLOAD_SUFFIX) and name not in needed and now - mtime >= min_age_s
    ]


def _uploads(directory: Path) -> list[tuple[str, float]]:
    out = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(UPLOAD_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:  # removed meanwhile
                    pass
    return out


async def sweep_once(
    directory: Path, jobs: JobStore, *, keep_ended: bool, min_age_s: float = ORPHAN_AGE_S
) -> int:
    """Remove the orphans; how many went. Files are listed before the jobs are read, so an
    upload whose row commits in between is seen as needed."""
    files = await asyncio.to_thread(_uploads, directory)
    if not files:
        return 0
    needed = {Path(path).name for path in await jobs.file_paths(include_ended=keep_ended)}
    removed = 0
    for name in orphans(files, needed, now=time.time(), min_age_s=min_age_s):
        try:
            await asyncio.to_thread((directory / name).unlink)
            removed += 1
        except FileNotFoundError:  # another replica swept it
            pass
    if removed:
        log.info("orphaned uploads removed", files=removed)
    return removed


async def run_upload_sweep(directory: Path, jobs: JobStore, *, keep_ended: bool) -> None:
    while True:
        try:
            await sweep_once(directory, jobs, keep_ended=keep_ended)
        except Exception as exc:  # the database or the disk is away: next round
            log.warning("upload sweep failed", error=type(exc).__name__)
        await asyncio.sleep(SWEEP_EVERY_S)
