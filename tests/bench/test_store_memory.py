"""The Redis memory measurement keeps working (its number is not judged here)."""

import redis.asyncio as aioredis

from bench.store_memory import measure
from tests.store.conftest import redis_server  # noqa: F401 (the fixture)


async def test_the_store_memory_measurement_runs_and_cleans_up(redis_server):  # noqa: F811
    result = await measure(redis_server.url, 200)
    assert result["chats"] == 200
    assert result["keys_in_db"] >= 200 * 4
    assert result["bytes_per_chat"] > 0
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.keys("bench*") == []
    finally:
        await client.close()
