"""The ingest protocol accepts `refresh` control messages and hands their token over unjudged."""

from __future__ import annotations

import pytest

from ingest.protocol import ProtocolError, parse_control, refresh_token


def test_refresh_is_a_control_message() -> None:
    assert parse_control('{"type": "refresh", "token": "abc"}') == "refresh"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ('{"type": "refresh", "token": "abc"}', "abc"),
        ('{"type": "refresh"}', None),
        ('{"type": "refresh", "token": 5}', 5),
    ],
)
def test_refresh_token_is_whatever_was_sent(text: str, token: object) -> None:
    assert refresh_token(text) == token


def test_refresh_that_is_not_an_object_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        refresh_token('["refresh"]')
