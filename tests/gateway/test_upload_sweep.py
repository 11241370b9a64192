"""Which uploaded files are orphans (pure)."""

from __future__ import annotations

from gateway.pipeline.upload_sweep import orphans


def test_an_orphan_is_an_upload_no_job_needs_and_nothing_wrote_lately() -> None:
    now = 10_000.0
    files = [
        ("dead.upload", now - 7200),  # no job, old: an upload whose replica died
        ("queued.upload", now - 7200),  # old, but a job will read it
        ("arriving.upload", now - 5),  # no job yet: its body is still being written
        ("notes.txt", now - 7200),  # not ours
        ("edge.upload", now - 3600),  # exactly the age: goes
    ]
    assert orphans(files, {"queued.upload"}, now=now, min_age_s=3600) == [
        "dead.upload",
        "edge.upload",
    ]
