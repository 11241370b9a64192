from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis


@pytest.fixture
async def admin(redis_url: str, redis_prefix: str) -> AsyncIterator[aredis.Redis]:
    """A plain client on the shared Redis; deletes this test's keys afterwards."""
    client = aredis.Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
