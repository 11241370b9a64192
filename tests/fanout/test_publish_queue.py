"""PublishQueue with plain values: finals and status messages are never dropped, partials are."""

from __future__ import annotations

from fanout.publish_queue import Outgoing, PublishQueue


def partial(n: int) -> Outgoing:
    return Outgoing("t", f"p{n}".encode(), "transcript.partial")


def final(n: int) -> Outgoing:
    return Outgoing("t", f"f{n}".encode(), "transcript.final")


def status(event: str) -> Outgoing:
    return Outgoing("s", event.encode(), "status")


def drain(queue: PublishQueue) -> list[bytes]:
    out = []
    while (item := queue.head()) is not None:
        out.append(item.data)
        queue.done(item)
    return out


def test_everything_goes_out_in_order_when_the_bus_keeps_up() -> None:
    queue = PublishQueue()
    for item in (status("started"), partial(1), final(1), status("ended")):
        queue.push(item)
        assert drain(queue) == [item.data]


def test_a_backlog_keeps_every_final_and_status_and_only_the_newest_partial() -> None:
    queue = PublishQueue()
    queue.push(status("started"))
    for n in range(1, 500):  # a long outage: far more than any fixed bound
        queue.push(partial(n))
        queue.push(partial(n))
        queue.push(final(n))
    queue.push(partial(500))
    assert queue.pending_retried() == 1 + 499
    out = drain(queue)
    assert out == [b"started", *(f"f{n}".encode() for n in range(1, 500)), b"p500"]
    assert queue.superseded == 2 * 499


def test_a_head_in_flight_that_was_superseded_is_not_removed_twice() -> None:
    queue = PublishQueue()
    queue.push(partial(1))
    in_flight = queue.head()
    assert in_flight is not None
    queue.push(final(1))  # while the partial is being published
    queue.done(in_flight)  # its publish finished: the final must stay
    assert drain(queue) == [b"f1"]


def test_only_partials_are_given_up_on_a_failed_publish() -> None:
    assert not partial(1).retried
    assert final(1).retried and status("stream.started").retried
