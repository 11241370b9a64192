from __future__ import annotations

import pytest

from gateway.client.urls import ingest_url, subscribe_url, with_query


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000"),
        ("HTTPS://gw.example.com", "wss://gw.example.com"),
        ("ws://h:1", "ws://h:1"),
        ("wss://h/prefix/", "wss://h/prefix"),
        ("localhost:8000", "ws://localhost:8000"),
    ],
)
def test_ingest_url_maps_http_bases_to_websocket_urls(base: str, expected: str) -> None:
    assert ingest_url(base, "m1") == f"{expected}/api/v1/ws/ingest/meetings/m1"


def test_meeting_ids_are_escaped_as_one_path_segment() -> None:
    assert ingest_url("http://h", "a b/c?d").endswith("/meetings/a%20b%2Fc%3Fd")


def test_subscribe_url_with_and_without_since() -> None:
    assert subscribe_url("http://h:8000", "m1") == "ws://h:8000/api/v1/ws/meetings/m1"
    assert subscribe_url("https://h", "m1", since=7) == "wss://h/api/v1/ws/meetings/m1?since=7"
    assert subscribe_url("http://h", "m1", since=0).endswith("?since=0")  # 0 is not "unset"


def test_with_query_replaces_and_keeps_parameters() -> None:
    url = with_query("ws://h/p?since=1&x=y", since=5, token="a.b.c", skip=None)
    assert url == "ws://h/p?x=y&since=5&token=a.b.c"


@pytest.mark.parametrize(("base", "meeting"), [("ftp://h", "m1"), ("http://h", "")])
def test_bad_inputs_are_refused(base: str, meeting: str) -> None:
    with pytest.raises(ValueError):
        ingest_url(base, meeting)
