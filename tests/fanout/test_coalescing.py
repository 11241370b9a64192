"""The byte-bounded, coalescing viewer queue, with plain values."""

from __future__ import annotations

import json

import pytest

from fanout.coalescing import CoalescingQueue
from fanout.publication import Publication


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()  # compact, as the envelope is


def partial(segment_no: int, text: str, source: str | None = "mic") -> Publication:
    return Publication.parse(
        encode(
            {"type": "transcript.partial", "segment_no": segment_no, "source": source, "text": text}
        )
    )


def final(segment_no: int, text: str, source: str | None = "mic") -> Publication:
    return Publication.parse(
        encode(
            {"type": "transcript.final", "segment_no": segment_no, "source": source, "text": text}
        )
    )


def status(text: str = "x") -> Publication:
    return Publication.parse(encode({"type": "status", "event": text}))


def drain(queue: CoalescingQueue) -> list[Publication]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    assert queue.count == 0 and queue.nbytes == 0
    return out


def test_fifo_and_accounting() -> None:
    queue = CoalescingQueue(10)
    items = [status("a"), partial(1, "he"), status("b")]
    for item in items:
        assert queue.push(item)
    assert queue.count == 3 and queue.nbytes == sum(len(i.data) for i in items)
    assert list(queue) == items
    assert drain(queue) == items
    assert queue.pop() is None


def test_a_newer_partial_of_the_same_segment_takes_the_older_ones_place() -> None:
    queue = CoalescingQueue(10)
    first, between, newer = partial(1, "he"), status(), partial(1, "hello there")
    assert queue.push(first) and queue.push(between) and queue.push(newer)
    assert list(queue) == [newer, between]
    assert queue.count == 2 and queue.nbytes == len(newer.data) + len(between.data)
    assert queue.coalesced == 1
    # Another segment or another source is not coalesced.
    other_segment, other_source = partial(2, "x"), partial(1, "y", source="room")
    assert queue.push(other_segment) and queue.push(other_source)
    assert drain(queue) == [newer, between, other_segment, other_source]


def test_a_final_supersedes_its_sources_queued_partial_and_keeps_publish_order() -> None:
    queue = CoalescingQueue(10)
    mine, theirs, other_final = partial(5, "hel"), partial(6, "yo", source="room"), final(4, "a")
    for item in (mine, theirs, other_final):
        assert queue.push(item)
    done = final(5, "hello")
    assert queue.push(done)
    # The partial is gone; the final goes behind final 4 (never ahead of an earlier final).
    assert list(queue) == [theirs, other_final, done]
    assert queue.coalesced == 1
    assert queue.nbytes == sum(len(i.data) for i in (theirs, other_final, done))
    # A partial queued after the final is a new utterance: kept.
    following = partial(7, "next")
    assert queue.push(following)
    assert drain(queue) == [theirs, other_final, done, following]


def test_a_final_supersedes_a_partial_with_a_stale_predicted_number() -> None:
    queue = CoalescingQueue(10)
    assert queue.push(partial(5, "predicted 5"))  # another source took 5 and 6 meanwhile
    done = final(7, "numbered 7")
    assert queue.push(done)
    assert drain(queue) == [done]


def test_an_older_final_does_not_remove_a_newer_partial() -> None:
    queue = CoalescingQueue(10)
    newer = partial(9, "in flight")
    replayed = final(3, "gap repair")
    assert queue.push(newer) and queue.push(replayed)
    assert drain(queue) == [newer, replayed]


def test_message_cap_overflows() -> None:
    queue = CoalescingQueue(2)
    assert queue.push(final(1, "a")) and queue.push(final(2, "b"))
    assert not queue.push(final(3, "c"))
    assert queue.count == 2


def test_byte_cap_overflows_with_finals_but_partials_coalesce_within_it() -> None:
    budget = len(final(1, "x" * 100).data) * 2 + 10
    queue = CoalescingQueue(1000, max_bytes=budget)
    assert queue.push(final(1, "x" * 100))
    for n in range(50):  # a stuck viewer, a source speaking: one partial slot, resized in place
        assert queue.push(partial(2, "y" * (n % 90)))
    assert queue.count == 2 and queue.coalesced == 49
    assert queue.push(final(2, "x" * 100))  # replaces the partial: fits
    assert not queue.push(final(3, "x" * 100))  # finals still overflow: the caller closes 4408


def test_a_grown_partial_that_no_longer_fits_overflows() -> None:
    queue = CoalescingQueue(10, max_bytes=len(partial(1, "a").data) + 5)
    assert queue.push(partial(1, "a"))
    assert not queue.push(partial(1, "a" * 50))
    assert queue.nbytes == len(partial(1, "a").data)


def test_partials_after_the_popped_one_are_not_coalesced_into_a_sent_one() -> None:
    queue = CoalescingQueue(10)
    sent = partial(1, "he")
    assert queue.push(sent)
    assert queue.pop() is sent  # on the wire: a newer partial must be queued, not merged
    newer = partial(1, "hello")
    assert queue.push(newer)
    assert drain(queue) == [newer]


def test_clear_empties() -> None:
    queue = CoalescingQueue(10)
    queue.push(partial(1, "a"))
    queue.push(final(2, "b"))
    queue.clear()
    assert not queue and queue.nbytes == 0 and queue.pop() is None
    assert queue.push(partial(1, "c")) and queue.count == 1


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        CoalescingQueue(0)
    with pytest.raises(ValueError):
        CoalescingQueue(1, max_bytes=0)
