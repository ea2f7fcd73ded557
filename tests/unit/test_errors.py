"""The exceptions, as a small hierarchy callers catch by class."""

from connectors.servicenow.errors import StoreUnavailable
from connectors.servicenow.store import StoreUnavailable as RedisDown


def test_one_except_clause_catches_the_tracker_stores_and_redis_failures():
    assert issubclass(RedisDown, StoreUnavailable)
