"""Where the connector keeps its state: see ``base`` for the interface,
``memory`` for one replica (no ``redis_url``), ``redis`` for ``redis_url``,
``keys`` for every name given to state. The only package that knows which
store runs."""

from typing import Optional

from connectors.servicenow.store.base import (
    REFUSED_BUSY,
    REFUSED_DEPLOYMENT_RATE,
    REFUSED_SENDER_RATE,
    AlreadyStored,
    AppendRefused,
    Cap,
    ChatNotLive,
    Guard,
    HandoffMirror,
    HandoffRecord,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    Store,
    StoreError,
    StartLimits,
    StoreUnavailable,
    Taken,
    TimerClaim,
    entry_id_after,
    is_entry_id,
    parse_entry_id,
)
from connectors.servicenow.store.memory import MemoryStore

__all__ = [
    "REFUSED_BUSY",
    "REFUSED_DEPLOYMENT_RATE",
    "REFUSED_SENDER_RATE",
    "AlreadyStored",
    "AppendRefused",
    "Cap",
    "ChatNotLive",
    "Guard",
    "HandoffMirror",
    "HandoffRecord",
    "LeaseLost",
    "MemoryStore",
    "NewEntry",
    "OutboxEntry",
    "StartLimits",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Taken",
    "TimerClaim",
    "entry_id_after",
    "is_entry_id",
    "open_store",
    "parse_entry_id",
]


def open_store(
    redis_url: Optional[str],
    *,
    prefix: str = "snow:",
    retained: int = 200,
    stream_ttl: float = 3600.0,
    operation_timeout: float = 5.0,
    mirror: Optional[HandoffMirror] = None,
) -> Store:
    """The Redis store for ``redis_url`` (``redis://`` or ``rediss://``), or
    the in-process one when it is None, which reads what it lost at the last
    exit from ``mirror`` (the tracker slots). Connects lazily: call ``ping()``
    to find out at start-up whether Redis answers."""
    if not redis_url:
        return MemoryStore(retained=retained, stream_ttl=stream_ttl, mirror=mirror)
    # Imported here so the embedded default never loads redis-py.
    from connectors.servicenow.store.redis import RedisStore

    return RedisStore.from_url(
        redis_url, prefix=prefix, retained=retained, stream_ttl=stream_ttl, operation_timeout=operation_timeout
    )
