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


def test_a_body_without_a_delimiter_is_refused_past_the_limit() -> None:
    skipper = PreambleSkipper(b"xyz")
    with pytest.raises(PreambleTooLong, match="no multipart boundary"):
        fed(skipper, b"a" * (MAX_PREAMBLE_BYTES + 100), 4096)


def test_a_delimiter_inside_a_preamble_line_is_not_the_first_delimiter() -> None:
    # Only a delimiter at the start of the body or of a line opens the first part.
    assert fed(PreambleSkipper(b"xyz"), b"see --xyz later\r\n" + BODY, 5) == BODY
