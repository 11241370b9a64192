"""The multipart preamble skipper, on plain values: whatever the chunking, the parser gets the
body from its first delimiter on."""

from __future__ import annotations

import pytest

from gateway.http.multipart_preamble import MAX_PREAMBLE_BYTES, PreambleSkipper, PreambleTooLong

BODY = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nRIFF--xyz--\r\n'


def fed(skipper: PreambleSkipper, data: bytes, size: int) -> bytes:
    return b"".join(skipper.feed(data[i : i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize(
    "preamble", [b"", b"This is a multi-part message in MIME format.\r\n", b"\r\n", b"--xy\r\n"]
)
def test_the_parser_gets_the_body_from_its_first_delimiter(preamble: bytes, size: int) -> None:
    assert fed(PreambleSkipper(b"xyz"), preamble + BODY, size) == BODY


@pytest.mark.parametrize("size", [4096, 65_536, 1_000_000])
def test_a_body_without_a_delimiter_in_its_first_64_kib_is_refused(size: int) -> None:
    # Also when the delimiter comes after the limit in the same chunk (a large read).
    with pytest.raises(PreambleTooLong, match="no multipart boundary"):
        fed(PreambleSkipper(b"xyz"), b"a" * (MAX_PREAMBLE_BYTES + 100), size)
    with pytest.raises(PreambleTooLong, match="no multipart boundary"):
        fed(PreambleSkipper(b"xyz"), b"a" * (MAX_PREAMBLE_BYTES + 100) + b"\r\n" + BODY, size)
    # At the limit it is still a preamble.
    preamble = b"a" * (MAX_PREAMBLE_BYTES - 2) + b"\r\n"
    assert fed(PreambleSkipper(b"xyz"), preamble + BODY, size) == BODY


def test_a_delimiter_inside_a_preamble_line_is_not_the_first_delimiter() -> None:
    # Only a delimiter at the start of the body or of a line opens the first part.
    assert fed(PreambleSkipper(b"xyz"), b"see --xyz later\r\n" + BODY, 5) == BODY
