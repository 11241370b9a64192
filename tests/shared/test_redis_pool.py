"""Every Redis client retries a command after a connection error or timeout, with backoff."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fanout.bus_redis import RedisBus
from fanout.coordinator_redis import RedisCoordinator
from shared.redis_pool import DEFAULT_RETRIES, RETRY_BACKOFF_CAP_S, connection_retry
from store.numbering_redis import RedisNumbering


def test_the_retry_policy_backs_off_exponentially_up_to_its_cap() -> None:
    retry = connection_retry()
    assert retry.get_retries() == DEFAULT_RETRIES >= 1
    delays = [retry._backoff.compute(attempt) for attempt in range(1, 12)]
    assert all(0 <= d <= RETRY_BACKOFF_CAP_S for d in delays)
    assert set(retry._supported_errors) >= {RedisConnectionError, RedisTimeoutError}


async def _seed(tenant_id: str, meeting_id: str) -> int:
    return 0


async def test_every_client_that_talks_to_redis_retries(redis_url: str) -> None:
    bus = RedisBus(redis_url)
    coordinator = RedisCoordinator(redis_url)
    numbering = RedisNumbering(redis_url, _seed)
    try:
        for client in (bus._client, coordinator._client, numbering._client):
            pool = client.connection_pool
            retry = pool.connection_kwargs["retry"]
            assert retry.get_retries() == DEFAULT_RETRIES
            assert set(retry._supported_errors) >= {RedisConnectionError, RedisTimeoutError}
            assert RedisConnectionError in pool.connection_kwargs["retry_on_error"]
    finally:
        await bus.aclose()
        await coordinator.aclose()
        await numbering.aclose()
