"""The shared store: state and delivery in Redis, for many replicas.

Every guarantee rests on one atomic Redis step (a single command or a Lua
script), never on read-then-write from Python, and never on Rasa's
``RedisLockStore`` (its ticket lock is read-modify-write, not race-free
across instances).

Key layout (``{p}`` is the ``prefix`` option, ``snow:`` by default; several
bots can share one Redis with different prefixes):

=========================  ===========  ============================================  ==========================
key                        type         holds                                         expiry
=========================  ===========  ============================================  ==========================
``{p}h:<sender_id>``       hash         ``chat`` (chat id), ``rec`` (record, JSON)    none: ends with the handoff
``{p}c:<chat_id>``         string       the sender id (index by chat id)              none: ends with the handoff
``{p}o:<stream>``          stream       outbox entries: ``k`` kind, ``c`` to the      ``stream_ttl`` after the last
                                        callback (1/0), ``p`` payload (JSON);         append or sink move;
                                        ``MAXLEN ~ retained``                         trimmed to ~``retained``
``{p}s:<stream>``          hash         sink name -> id of the last entry it took     as the stream
``{p}d:<key>``             string       a dedupe mark (``SET NX PX``)                 the caller's ``ttl``
``{p}l:<name>``            string       the lease holder (``SET PX``)                 the lease's ``ttl``
``{p}leases``              sorted set   registered lease names, scored by when the    none (members leave with
                                        lease expires (epoch ms; 0 = free)            ``unregister_lease``)
``{p}timers``              sorted set   timer names, scored by due time (epoch ms)    none (members leave when
                                                                                      finished or cancelled)
=========================  ===========  ============================================  ==========================

Time: lease expiry is Redis's own (``PX``); the ``leases`` and ``timers``
scores use the replicas' clocks, which must agree (NTP) to within a small part
of a poll interval.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync everysec``
a crash of Redis loses at most the last second; without AOF, what was written
since the last RDB snapshot. See docs/deployment.md.

A single Redis (or a primary with replicas and Sentinel in front) is assumed:
the multi-key scripts do not use hash tags, so Redis Cluster is not supported.
"""

import asyncio
import json
import logging
import re
import time
from typing import Any, AsyncIterator, Awaitable, Dict, List, Optional, Sequence, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from connectors.servicenow.store.base import (
    HandoffRecord,
    NewEntry,
    OutboxEntry,
    Store,
    StoreError,
    StoreUnavailable,
    TimerClaim,
    dump_payload,
    parse_entry_id,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "snow:"

# Errors Redis answers while it cannot serve for now (loading its data,
# failing to persist, no primary): unavailable, not a bug of ours.
_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")

_CREATE_HANDOFF = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'chat', ARGV[1], 'rec', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

_UPDATE_HANDOFF = """
if redis.call('HGET', KEYS[1], 'chat') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[2])
return 1
"""

_END_HANDOFF = """
if redis.call('HGET', KEYS[1], 'chat') ~= ARGV[1] then return false end
local record = redis.call('HGET', KEYS[1], 'rec')
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return record
"""

# KEYS: stream, sinks, [dedupe]; ARGV: retained, ttl ms, dedupe ttl ms, then
# kind, to-callback, payload per entry.
_APPEND = """
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return false end
local ids = {}
for i = 4, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                             'k', ARGV[i], 'c', ARGV[i + 1], 'p', ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return ids
"""

_ADVANCE_SINK = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local cms, cn = string.match(current, '^(%d+)-(%d+)$')
  local nms, nn = string.match(ARGV[2], '^(%d+)-(%d+)$')
  cms, cn, nms, nn = tonumber(cms), tonumber(cn), tonumber(nms), tonumber(nn)
  if nms < cms or (nms == cms and nn <= cn) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: lease, leases; ARGV: owner, ttl ms, now ms, name, renew-only (1/0).
_ACQUIRE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if (not holder) and ARGV[5] == '1' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[3]) + tonumber(ARGV[2]), ARGV[4])
return 1
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], 'XX', 0, ARGV[2])
return 1
"""

# KEYS: timers; ARGV: now ms, held until ms, limit.
_CLAIM_TIMERS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, name in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], name) end
return due
"""

_FINISH_TIMER = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class RedisStore(Store):
    shared = True

    def __init__(
        self,
        client: "aioredis.Redis",
        *,
        prefix: str = DEFAULT_PREFIX,
        retained: int = 200,
        stream_ttl: float = 3600.0,
        operation_timeout: float = 5.0,
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self.retained = retained
        self.stream_ttl = stream_ttl
        self.operation_timeout = operation_timeout
        self._create_handoff = client.register_script(_CREATE_HANDOFF)
        self._update_handoff = client.register_script(_UPDATE_HANDOFF)
        self._end_handoff = client.register_script(_END_HANDOFF)
        self._append = client.register_script(_APPEND)
        self._advance_sink = client.register_script(_ADVANCE_SINK)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._claim_timers = client.register_script(_CLAIM_TIMERS)
        self._finish_timer = client.register_script(_FINISH_TIMER)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        retained: int = 200,
        stream_ttl: float = 3600.0,
        operation_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_connections: Optional[int] = None,
    ) -> "RedisStore":
        """Connect (lazily) to ``redis://host:port/db`` or ``rediss://`` (TLS);
        a password in the URL (``redis://:secret@host``) is used, never logged."""
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            # No socket timeout: blocking reads wait longer than any single
            # command may; every call is bounded by ``operation_timeout`` instead.
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            # A connection the pool kept from before a Redis restart fails
            # once; one retry on a fresh connection hides that, a Redis that
            # is really down still fails fast.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
            max_connections=max_connections,
        )
        return cls(client, prefix=prefix, retained=retained, stream_ttl=stream_ttl, operation_timeout=operation_timeout)

    # -- plumbing -----------------------------------------------------------

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}{name}"

    async def _run(self, call: Awaitable[T], timeout: Optional[float] = None) -> T:
        try:
            return await asyncio.wait_for(call, timeout if timeout is not None else self.operation_timeout)
        except (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError) as error:
            raise StoreUnavailable(f"Redis is unavailable: {type(error).__name__}: {error}") from error
        except ResponseError as error:
            if str(error).startswith(_UNAVAILABLE_REPLIES):
                raise StoreUnavailable(f"Redis cannot serve now: {error}") from error
            raise StoreError(f"Redis refused a store operation: {error}") from error
        except RedisError as error:
            raise StoreError(f"Redis store operation failed: {type(error).__name__}: {error}") from error

    # -- handoff records ----------------------------------------------------

    async def create_handoff(self, record: HandoffRecord) -> bool:
        created = await self._run(
            self._create_handoff(
                keys=[self._key("h:", record.sender_id), self._key("c:", record.chat_id)],
                args=[record.chat_id, record.to_json(), record.sender_id],
            )
        )
        return bool(created)

    async def get_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        chat_id, text = await self._run(self._redis.hmget(self._key("h:", sender_id), "chat", "rec"))
        return _record(sender_id, chat_id, text)

    async def handoff_by_chat(self, chat_id: str) -> Optional[HandoffRecord]:
        sender = await self._run(self._redis.get(self._key("c:", chat_id)))
        if sender is None:
            return None
        record = await self.get_handoff(sender.decode())
        # The index can outlive its handoff by a moment, or point at a
        # sender who has moved on to another chat.
        return record if record is not None and record.chat_id == chat_id else None

    async def update_handoff(self, record: HandoffRecord) -> bool:
        updated = await self._run(
            self._update_handoff(keys=[self._key("h:", record.sender_id)], args=[record.chat_id, record.to_json()])
        )
        return bool(updated)

    async def end_handoff(self, sender_id: str, chat_id: str) -> Optional[HandoffRecord]:
        text = await self._run(
            self._end_handoff(keys=[self._key("h:", sender_id), self._key("c:", chat_id)], args=[chat_id, sender_id])
        )
        return HandoffRecord.from_json(sender_id, chat_id, text.decode()) if text else None

    async def handoffs(self) -> AsyncIterator[HandoffRecord]:
        pattern = _glob_escape(self._key("h:")) + "*"
        start = len(self._key("h:").encode())
        cursor = 0
        while True:
            cursor, keys = await self._run(self._redis.scan(cursor, match=pattern, count=500))
            if keys:
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, "chat", "rec")
                rows = await self._run(pipe.execute())
                for key, (chat_id, text) in zip(keys, rows):
                    record = _record(key[start:].decode(), chat_id, text)
                    if record is not None:
                        yield record
            if cursor == 0:
                return

    # -- exactly once -------------------------------------------------------

    async def claim_once(self, key: str, ttl: float) -> bool:
        created = await self._run(self._redis.set(self._key("d:", key), b"1", nx=True, px=_ms(ttl)))
        return bool(created)

    # -- outbox streams -----------------------------------------------------

    async def append(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
    ) -> Optional[List[OutboxEntry]]:
        keys = [self._key("o:", stream), self._key("s:", stream)]
        if dedupe_key is not None:
            keys.append(self._key("d:", dedupe_key))
        args: List[Any] = [self.retained, _ms(self.stream_ttl), _ms(dedupe_ttl) if dedupe_key is not None else 0]
        for entry in entries:
            args += [entry.kind, "1" if entry.to_callback else "0", dump_payload(entry.payload)]
        if not entries:
            if dedupe_key is None:
                return []
            return [] if await self.claim_once(dedupe_key, dedupe_ttl) else None
        ids = await self._run(self._append(keys=keys, args=args))
        if ids is None:
            return None
        return [
            OutboxEntry(entry_id.decode(), entry.kind, entry.payload, entry.to_callback)
            for entry_id, entry in zip(ids, entries)
        ]

    async def read(
        self, stream: str, after: Optional[str] = None, *, block: Optional[float] = None, limit: int = 100
    ) -> List[OutboxEntry]:
        if after is not None and parse_entry_id(after) is None:
            raise ValueError(f"not a stream entry id: {after!r}")
        key = self._key("o:", stream)
        block_ms = _ms(block) if block and block > 0 else None
        timeout = self.operation_timeout + (block or 0.0)
        # A blocking read holds a pooled connection for its wait.
        reply = await self._run(self._redis.xread({key: after or "0-0"}, count=limit, block=block_ms), timeout)
        if not reply:
            return []
        return [_entry(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def sink_position(self, stream: str, sink: str) -> Optional[str]:
        position = await self._run(self._redis.hget(self._key("s:", stream), sink))
        return position.decode() if position is not None else None

    async def advance_sink(self, stream: str, sink: str, entry_id: str) -> bool:
        if parse_entry_id(entry_id) is None:
            raise ValueError(f"not a stream entry id: {entry_id!r}")
        moved = await self._run(
            self._advance_sink(
                keys=[self._key("s:", stream), self._key("o:", stream)], args=[sink, entry_id, _ms(self.stream_ttl)]
            )
        )
        return bool(moved)

    # -- leases -------------------------------------------------------------

    async def register_lease(self, name: str) -> None:
        await self._run(self._redis.zadd(self._key("leases"), {name: 0}, nx=True))

    async def unregister_lease(self, name: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._key("leases"), name)
        pipe.delete(self._key("l:", name))
        await self._run(pipe.execute())

    async def _hold(self, name: str, owner: str, ttl: float, renew_only: bool) -> bool:
        held = await self._run(
            self._acquire_lease(
                keys=[self._key("l:", name), self._key("leases")],
                args=[owner, _ms(ttl), _now_ms(), name, "1" if renew_only else "0"],
            )
        )
        return bool(held)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._hold(name, owner, ttl, renew_only=False)

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._hold(name, owner, ttl, renew_only=True)

    async def release_lease(self, name: str, owner: str) -> bool:
        released = await self._run(
            self._release_lease(keys=[self._key("l:", name), self._key("leases")], args=[owner, name])
        )
        return bool(released)

    async def lease_owner(self, name: str) -> Optional[str]:
        holder = await self._run(self._redis.get(self._key("l:", name)))
        return holder.decode() if holder is not None else None

    async def free_leases(self, limit: int = 100) -> List[str]:
        names = await self._run(self._redis.zrangebyscore(self._key("leases"), "-inf", _now_ms(), start=0, num=limit))
        return [name.decode() for name in names]

    # -- timers -------------------------------------------------------------

    async def schedule_timer(self, name: str, due_at: float) -> None:
        await self._run(self._redis.zadd(self._key("timers"), {name: int(due_at * 1000)}))

    async def cancel_timer(self, name: str) -> bool:
        return bool(await self._run(self._redis.zrem(self._key("timers"), name)))

    async def timer_due_at(self, name: str) -> Optional[float]:
        score = await self._run(self._redis.zscore(self._key("timers"), name))
        return score / 1000 if score is not None else None

    async def claim_due_timers(self, *, hold: float = 30.0, limit: int = 100) -> List[TimerClaim]:
        now = _now_ms()
        held_until = now + _ms(hold)
        names = await self._run(self._claim_timers(keys=[self._key("timers")], args=[now, held_until, limit]))
        return [TimerClaim(name.decode(), held_until) for name in names]

    async def finish_timer(self, claim: TimerClaim) -> bool:
        finished = await self._run(self._finish_timer(keys=[self._key("timers")], args=[claim.name, claim.held_until]))
        return bool(finished)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def aclose(self) -> None:
        try:
            await self._redis.close(close_connection_pool=True)
        except (RedisError, OSError) as error:
            logger.debug("Closing the Redis store: %s", error)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _record(sender_id: str, chat_id: Optional[bytes], text: Optional[bytes]) -> Optional[HandoffRecord]:
    if chat_id is None or text is None:
        return None
    return HandoffRecord.from_json(sender_id, chat_id.decode(), text.decode())


def _entry(entry_id: bytes, fields: Dict[bytes, bytes]) -> OutboxEntry:
    return OutboxEntry(
        entry_id=entry_id.decode(),
        kind=fields[b"k"].decode(),
        payload=json.loads(fields[b"p"]),
        to_callback=fields[b"c"] == b"1",
    )


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
