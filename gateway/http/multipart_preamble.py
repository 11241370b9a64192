"""Skips a multipart body's preamble, which python-multipart refuses.

RFC 2046 lets a body start with text before its first delimiter ("This is a multi-part message in
MIME format."); mail-style encoders and some HTTP clients write one. Receivers ignore it. A
preamble longer than `MAX_PREAMBLE_BYTES` is refused: the body is not the upload it claims to be.
"""

from __future__ import annotations

MAX_PREAMBLE_BYTES = 64 * 1024


class PreambleTooLong(ValueError):
    pass


class PreambleSkipper:
    """Feed the body's chunks in order; each call returns what the multipart parser should get
    (nothing until the first delimiter is found, then everything from it on)."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._pending = b""
        self._skipped = 0
        self._found = False

    def feed(self, chunk: bytes) -> bytes:
        if self._found:
            return chunk
        pending = self._pending + chunk
        # A delimiter opens the first part at the body's very start or after a CRLF.
        if self._skipped == 0 and pending.startswith(self._delimiter):
            at = 0
        else:
            at = pending.find(b"\r\n" + self._delimiter)
            if at >= 0:
                at += 2  # the CRLF before the delimiter belongs to it, not to the first part
        if at >= 0:
            if self._skipped + at > MAX_PREAMBLE_BYTES:  # found, but past the limit
                raise PreambleTooLong(_TOO_LONG)
            self._found, self._pending = True, b""
            return pending[at:]
        # Keep what could be the start of a delimiter cut by the chunk's end.
        # The body's start stays until something is skipped; waiting for the rest of a
        # delimiter it may begin with is what `_skipped == 0` above relies on.
        keep = len(self._delimiter) + 1
        self._skipped += max(0, len(pending) - keep)
        self._pending = pending[-keep:]
        if self._skipped > MAX_PREAMBLE_BYTES:
            raise PreambleTooLong(_TOO_LONG)
        return b""


_TOO_LONG = f"no multipart boundary in the body's first {MAX_PREAMBLE_BYTES} bytes"
