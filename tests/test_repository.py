"""What the repository itself must never hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A PEM private key block with its body: generated key material, not a string that names one.
_DASHES = b"-" * 5
# Its words are spelled apart here too, so that this file does not look like one to a scanner.
_PRIVATE_KEY = re.compile(
    _DASHES
    + rb"BEGIN [A-Z ]*"
    + b" ".join((b"PRIVATE", b"KEY"))
    + _DASHES
    + rb"\s*[A-Za-z0-9+/=\s]{64,}"
    + _DASHES
)


def test_no_private_key_is_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    leaks = [
        name.decode()
        for name in tracked
        if name
        and (REPO / name.decode()).is_file()
        and _PRIVATE_KEY.search((REPO / name.decode()).read_bytes())
    ]
    assert leaks == [], f"private key material committed: {leaks}"
    keys = [name.decode() for name in tracked if name.startswith(b"keys/")]
    assert keys == [], f"keys/ holds generated key material only, never tracked: {keys}"
