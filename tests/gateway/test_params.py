"""Query parameters as endpoints read them (gateway.params): once each, numbers within what the
store holds."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from gateway.params import ParamError, bounded_int, segment_no, single
from gateway.ws.subscriber import parse_since
from store.base import MAX_SEGMENT_NO


def test_the_bound_is_what_a_32_bit_column_holds() -> None:
    assert MAX_SEGMENT_NO == 2_147_483_647


@pytest.mark.parametrize("raw", ["0", "7", "000012", str(MAX_SEGMENT_NO)])
def test_segment_numbers_the_store_holds(raw: str) -> None:
    assert segment_no(raw) == int(raw)


@pytest.mark.parametrize(
    "raw",
    [str(MAX_SEGMENT_NO + 1), str(10**17), "9" * 18, "9" * 40, "-1", "+1", "1.0", "1e3", "", " 1"],
)
def test_anything_else_names_the_rule(raw: str) -> None:
    with pytest.raises(ParamError, match=rf"^since must be an integer from 0 to {MAX_SEGMENT_NO}$"):
        segment_no(raw)


def test_a_viewer_s_blank_since_is_no_since_as_on_the_rest_api() -> None:
    assert parse_since(QueryParams("since=")) is None
    assert parse_since(QueryParams("token=t")) is None
    assert parse_since(QueryParams("since=0")) == 0


def test_bounded_int_names_its_parameter_and_range() -> None:
    assert bounded_int("50", "limit", 1, 500) == 50
    with pytest.raises(ParamError, match=r"^limit must be an integer from 1 to 500$"):
        bounded_int("0", "limit", 1, 500)


def test_a_repeated_parameter_is_refused_whichever_copy_would_count() -> None:
    query = QueryParams("meeting=a&meeting=b&x=1&x=2&since=3")
    with pytest.raises(ParamError, match=r"^query parameter 'meeting' is repeated"):
        single(query, "meeting")
    assert single(query, "since") == "3"
    assert single(query, "absent") is None
