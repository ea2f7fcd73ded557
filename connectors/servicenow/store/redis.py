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
``{p}h:<sender_id>``       string       ``<n>:<chat id><record JSON>`` (``n``: the    none: ends with the handoff
                                        chat id's length in bytes)
``{p}c:<chat_id>``         string       the sender id (index by chat id)              none: ends with the handoff
``{p}o:<stream>``          stream       outbox entries: ``k`` kind, ``c`` to the      ``stream_ttl`` after the last
                                        callback (1/0), ``p`` payload (JSON);         append or sink move;
                                        ``MAXLEN ~ retained``                         trimmed to ~``retained``
``{p}s:<stream>``          hash         sink name -> id of the last entry it took     as the stream
                                        (and the token of the call that moved it)
``{p}d:<key>``             string       a dedupe mark: the claiming call's token      the caller's ``ttl``
                                        (for ``append``, and the ids it appended)
``{p}l:<name>``            string       the lease holder (``SET PX``)                 the lease's ``ttl``
``{p}leases``              sorted set   registered lease names, scored by when the    none (members leave with
                                        lease expires (epoch ms; 0 = free)            ``unregister_lease``)
``{p}timers``              sorted set   timer names, scored by due time (epoch ms)    none (members leave when
                                                                                      finished or cancelled)
=========================  ===========  ============================================  ==========================

Blocked readers: every append also PUBLISHes the newest entry id on a channel
named like the stream key. A replica keeps one pub/sub connection, subscribed
to the streams its readers wait on, so a thousand open SSE streams cost one
Redis connection, not a thousand parked ``XREAD BLOCK`` calls. A reader
reads, subscribes, reads again (closing the gap between the two), then waits
for a notice; the entries themselves always come from the stream.

Time: lease expiry is Redis's own (``PX``); the ``leases`` and ``timers``
scores use the replicas' clocks, which must agree (NTP) to within a small part
of a poll interval.

A dropped connection: redis-py resends a command once on a fresh connection
(so the pool's stale connections after a Redis restart cost no error), and
the first try may have run. Every script that answers "someone else got
there first" recognises its own retry (same chat id, or a per-call token) and
answers as the first try did: ``create_handoff``, ``claim_once``, ``append``
with a ``dedupe_key`` or entries' ``once_key``, ``advance_sink`` (and ``advance_and_next``),
``acquire_lease``, ``renew_lease``.
The rest err on the safe side: an ``append`` without a dedupe key may store
an entry twice (at least once, never lost); ``end_handoff`` may answer None
and ``release_lease`` False for what the first try did; timers claimed by a
lost reply come back ``hold`` seconds later.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync everysec``
a crash of Redis loses at most the last second; without AOF, what was written
since the last RDB snapshot. See docs/deployment.md.

One Redis endpoint is assumed (a server, or a managed primary behind a stable
address): no Sentinel discovery, and no Redis Cluster (the multi-key scripts
use no hash tags).
"""

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from typing import Any, AsyncIterator, Awaitable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from connectors.servicenow.store import keys as key_names
from connectors.servicenow.store.redis_counts import RedisCounts
from connectors.servicenow.store.base import (
    AlreadyStored,
    AppendRefused,
    ChatNotLive,
    Guard,
    HandoffRecord,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    Store,
    StoreError,
    StoreUnavailable,
    Taken,
    TimerClaim,
    check_let_go,
    dump_payload,
    parse_entry_id,
)
from connectors.servicenow.tasks import bounded, event_within

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "snow:"

# Errors Redis answers while it cannot serve for now (loading its data,
# failing to persist, no primary): unavailable, not a bug of ours.
_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")

# Scripts that report "someone else got there first" are idempotent for a
# retried call (redis-py resends a command once when the connection drops, and
# the first try may have run): the same chat id, or the call's own token,
# counts as this call's success, never as a loss.
# A record starts with its chat's header "<n>:<chat id>": a chat's header is
# a prefix of the record exactly when the record is that chat's.
# KEYS: record, chat index, live, places. The start's place among the live
# handoffs (redis_counts.py) becomes the record's.
_CREATE_HANDOFF = """
local record = redis.call('GET', KEYS[1])
if record then
  if string.sub(record, 1, #ARGV[1]) == ARGV[1] then return 1 else return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
return 1
"""

_UPDATE_HANDOFF = """
local record = redis.call('GET', KEYS[1])
if (not record) or string.sub(record, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: record, chat index, live.
_END_HANDOFF = """
local record = redis.call('GET', KEYS[1])
if (not record) or string.sub(record, 1, #ARGV[1]) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('SREM', KEYS[3], ARGV[2])
return record
"""

# KEYS: chat index; ARGV: the handoff records' key prefix, the chat's header.
# The record's key is known only once the index is read, so the script names
# it itself: one round trip instead of two on every callback. (The store does
# not run on Redis Cluster, where a script may touch only the keys it is given.)
_HANDOFF_BY_CHAT = """
local sender = redis.call('GET', KEYS[1])
if not sender then return false end
local record = redis.call('GET', ARGV[1] .. sender)
if (not record) or string.sub(record, 1, #ARGV[2]) ~= ARGV[2] then return false end
return {sender, record}
"""

# KEYS: dedupe; ARGV: token, ttl ms.
_CLAIM_ONCE = """
local holder = redis.call('GET', KEYS[1])
if holder then if holder == ARGV[1] then return 1 else return 0 end end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: stream, sinks, [dedupe]; ARGV: retained, ttl ms, dedupe ttl ms,
# token, then the guard (the record's key, or '' for none; the
# chat's header, the lease's key or '', its owner, once ttl ms), then kind,
# to-callback, payload, once key (the full key or '') per entry. The dedupe
# mark, or else the first once key's mark, holds the token and the ids
# appended, so a retried call gets its own ids back; the other once keys
# hold the token. A guard that refuses answers {0} (the chat is not live),
# {1} (the lease is another's) or {2, keys stored before...}.
_APPEND_FUNCTION = """
local function ids_of(mark)
  local ids = {}
  for id in string.gmatch(string.sub(mark, #ARGV[4] + 2), '%S+') do ids[#ids + 1] = id end
  return ids
end
local function append(stream, sinks, dedupe, first)
  local own = ARGV[4] .. ' '
  if dedupe then
    local mark = redis.call('GET', dedupe)
    if mark then
      if string.sub(mark, 1, #own) ~= own then return false end
      return ids_of(mark)
    end
  end
  local first_once = nil
  for i = first, #ARGV, 4 do
    if ARGV[i + 3] ~= '' then first_once = ARGV[i + 3] break end
  end
  if first_once then
    local mark = redis.call('GET', first_once)
    if mark and string.sub(mark, 1, #own) == own then return ids_of(mark) end
  end
  if ARGV[5] ~= '' then
    local record = redis.call('GET', ARGV[5])
    if (not record) or string.sub(record, 1, #ARGV[6]) ~= ARGV[6] then return {0} end
    if ARGV[7] ~= '' and redis.call('GET', ARGV[7]) ~= ARGV[8] then return {1} end
    local stored = {2}
    for i = first, #ARGV, 4 do
      if ARGV[i + 3] ~= '' and redis.call('EXISTS', ARGV[i + 3]) == 1 then stored[#stored + 1] = ARGV[i + 3] end
    end
    if #stored > 1 then return stored end
  end
  local ids = {}
  for i = first, #ARGV, 4 do
    ids[#ids + 1] = redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], '*',
                               'k', ARGV[i], 'c', ARGV[i + 1], 'p', ARGV[i + 2])
  end
  redis.call('PEXPIRE', stream, ARGV[2])
  redis.call('PEXPIRE', sinks, ARGV[2])
  redis.call('PUBLISH', stream, ids[#ids])
  local all = own .. table.concat(ids, ' ')
  if dedupe then redis.call('SET', dedupe, all, 'PX', ARGV[3]) end
  for i = first, #ARGV, 4 do
    local key = ARGV[i + 3]
    if key == first_once then redis.call('SET', key, all, 'PX', ARGV[9])
    elseif key ~= '' then redis.call('SET', key, ARGV[4], 'PX', ARGV[9]) end
  end
  return ids
end
"""
_APPEND = _APPEND_FUNCTION + "return append(KEYS[1], KEYS[2], KEYS[3], 10)"

# KEYS: sinks, stream; ARGV: sink, entry id, ttl ms, token. A pointer is
# stored as "<entry id> <token of the call that moved it>".
_ADVANCE_FUNCTION = """
local function advance(sinks, stream, sink, id, ttl, token)
  local current = redis.call('HGET', sinks, sink)
  if current then
    if current == id .. ' ' .. token then return 1 end
    local cms, cn = string.match(current, '^(%d+)-(%d+)')
    local nms, nn = string.match(id, '^(%d+)-(%d+)$')
    cms, cn, nms, nn = tonumber(cms), tonumber(cn), tonumber(nms), tonumber(nn)
    if nms < cms or (nms == cms and nn <= cn) then return 0 end
  end
  redis.call('HSET', sinks, sink, id .. ' ' .. token)
  redis.call('PEXPIRE', sinks, ttl)
  redis.call('PEXPIRE', stream, ttl)
  return 1
end
"""
_ADVANCE_SINK = _ADVANCE_FUNCTION + "return advance(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"

# KEYS: sinks, stream, lease, leases; ARGV: as _ADVANCE_SINK's, then owner,
# lease ttl ms, now ms, name, limit, let go (1/0). ``advance_and_next``: 0
# when the pointer did not move, 1 when it moved but the lease is not the
# owner's, else the entries after the new pointer (the lease renewed; with
# let go and none after, released and unregistered as _LET_GO does). A
# retried call moved the pointer with its own token: it counts as moved.
_ADVANCE_AND_NEXT = _ADVANCE_FUNCTION + """
if advance(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) == 0 then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[5] then return 1 end
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
redis.call('ZADD', KEYS[4], 'XX', tonumber(ARGV[7]) + tonumber(ARGV[6]), ARGV[8])
if tonumber(ARGV[9]) <= 0 then return {} end
local after = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', tonumber(ARGV[9]))
if #after == 0 and ARGV[10] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[8])
end
return after
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

# KEYS: leases; ARGV: now ms, limit, the lease keys' prefix. A lease's score
# is its expiry by the clock of the replica that took it, and its key expires
# by Redis's clock a little later (or, with clocks apart, much earlier or
# later): only names whose key is gone are free, so a replica whose clock is
# ahead does not try to take over jobs that are still held.
_FREE_LEASES = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local free = {}
for _, name in ipairs(names) do
  if redis.call('EXISTS', ARGV[3] .. name) == 0 then free[#free + 1] = name end
end
return free
"""

# KEYS: lease, leases, sinks, stream; ARGV: owner, ttl ms, now ms, name,
# sink, limit. ``take_job``: the lease as _ACQUIRE_LEASE, registered (with its
# expiry when held here, so it is not listed as free meanwhile), then the
# sink's pointer and the entries after it, all in one round trip.
_TAKE_FUNCTION = """
local function take(lease, leases, sinks, stream, owner, ttl, now, name, sink, limit)
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then
    redis.call('ZADD', leases, 'NX', 0, name)
    return false
  end
  redis.call('SET', lease, owner, 'PX', ttl)
  redis.call('ZADD', leases, tonumber(now) + tonumber(ttl), name)
  local pointer = redis.call('HGET', sinks, sink)
  local start = '-'
  if pointer then
    pointer = string.match(pointer, '^(%S+)')
    start = '(' .. pointer
  else
    pointer = ''
  end
  return {pointer, redis.call('XRANGE', stream, start, '+', 'COUNT', tonumber(limit))}
end
"""
_TAKE_JOB = _TAKE_FUNCTION + """
return take(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""

# KEYS: stream, sinks, lease, leases, [dedupe]; ARGV: as _APPEND's first
# nine, then as _TAKE_JOB's, then the entries: ``append_and_take``. A
# retried call appends nothing again and takes again (it is its own lease).
_APPEND_AND_TAKE = _APPEND_FUNCTION + _TAKE_FUNCTION + """
local ids = append(KEYS[1], KEYS[2], KEYS[5], 16)
if not ids then return false end
if type(ids[1]) == 'number' then return ids end
return {ids, take(KEYS[3], KEYS[4], KEYS[2], KEYS[1], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15]) or 0}
"""

# KEYS and ARGV as _TAKE_JOB's. ``let_go``: the check for entries after the
# pointer and the release are one step, so an append by another replica
# comes either before it (the holder keeps the lease and goes on) or after
# it (that append finds the lease free and takes it): never stranded.
_LET_GO = _TAKE_FUNCTION + """
local taken = take(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if (not taken) or #taken[2] > 0 then return taken end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[4])
return false
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


class RedisStore(RedisCounts, Store):
    #: Another replica's timer (or one whose claimer died) fires at most this late.
    timer_rescan_s = 5.0

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
        self._handoff_by_chat = client.register_script(_HANDOFF_BY_CHAT)
        self._claim_once = client.register_script(_CLAIM_ONCE)
        self._append = client.register_script(_APPEND)
        self._advance_sink = client.register_script(_ADVANCE_SINK)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        self._free_leases = client.register_script(_FREE_LEASES)
        self._take_job = client.register_script(_TAKE_JOB)
        self._append_and_take = client.register_script(_APPEND_AND_TAKE)
        self._advance_and_next = client.register_script(_ADVANCE_AND_NEXT)
        self._let_go = client.register_script(_LET_GO)
        self._claim_timers = client.register_script(_CLAIM_TIMERS)
        self._finish_timer = client.register_script(_FINISH_TIMER)
        self._notices = _Notices(client, operation_timeout, self._key(key_names.NOTICES))
        self._lease_calls = _LeaseCalls()
        self._register_count_scripts()

    def describe(self) -> str:
        return f"shared through Redis (prefix {self.prefix!r})"

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
        # A bounded pool waits for a free connection (up to the operation
        # timeout) rather than failing; unbounded, each blocking reader has its own.
        pool_class = aioredis.BlockingConnectionPool if max_connections else aioredis.ConnectionPool
        pool_options: Dict[str, Any] = {}
        if max_connections:
            pool_options = {"max_connections": max_connections, "timeout": operation_timeout}
        pool = pool_class.from_url(
            url,
            **pool_options,
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
        )
        client = aioredis.Redis(connection_pool=pool, auto_close_connection_pool=True)
        return cls(client, prefix=prefix, retained=retained, stream_ttl=stream_ttl, operation_timeout=operation_timeout)

    # -- plumbing -----------------------------------------------------------

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}{name}"

    async def _run(self, call: Awaitable[T], timeout: Optional[float] = None) -> T:
        return await _as_store_errors(call, timeout if timeout is not None else self.operation_timeout)

    # -- handoff records ----------------------------------------------------

    async def create_handoff(self, record: HandoffRecord) -> bool:
        created = await self._run(
            self._create_handoff(
                keys=[
                    self._key(key_names.HANDOFF, record.sender_id), self._key(key_names.CHAT_INDEX, record.chat_id),
                    self._key(key_names.LIVE), self._key(key_names.PLACES),
                ],
                args=[_header(record.chat_id), _stored(record), record.sender_id],
            )
        )
        return bool(created)

    async def get_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        stored = await self._run(self._redis.get(self._key(key_names.HANDOFF, sender_id)))
        return _record(sender_id, stored)

    async def handoff_by_chat(self, chat_id: str) -> Optional[HandoffRecord]:
        # The index can outlive its handoff by a moment, or point at a sender
        # who has moved on to another chat: the script checks the record is
        # this chat's.
        found = await self._run(
            self._handoff_by_chat(keys=[self._key(key_names.CHAT_INDEX, chat_id)], args=[self._key(key_names.HANDOFF), _header(chat_id)])
        )
        if not found:
            return None
        sender, stored = found
        return _record(sender.decode(), stored)

    async def update_handoff(self, record: HandoffRecord) -> bool:
        updated = await self._run(
            self._update_handoff(keys=[self._key(key_names.HANDOFF, record.sender_id)], args=[_header(record.chat_id), _stored(record)])
        )
        return bool(updated)

    async def end_handoff(self, sender_id: str, chat_id: str) -> Optional[HandoffRecord]:
        stored = await self._run(
            self._end_handoff(
                keys=[self._key(key_names.HANDOFF, sender_id), self._key(key_names.CHAT_INDEX, chat_id), self._key(key_names.LIVE)],
                args=[_header(chat_id), sender_id],
            )
        )
        return _record(sender_id, stored)

    async def handoffs(self) -> AsyncIterator[HandoffRecord]:
        pattern = _glob_escape(self._key(key_names.HANDOFF)) + "*"
        start = len(self._key(key_names.HANDOFF).encode())
        cursor = 0
        while True:
            cursor, keys = await self._run(self._redis.scan(cursor, match=pattern, count=500))
            if keys:
                rows = await self._run(self._redis.mget(keys))
                for key, stored in zip(keys, rows):
                    record = _record(key[start:].decode(), stored)
                    if record is not None:
                        yield record
            if cursor == 0:
                return

    # -- exactly once -------------------------------------------------------

    async def claim_once(self, key: str, ttl: float) -> bool:
        claimed = await self._run(self._claim_once(keys=[self._key(key_names.DEDUPE, key)], args=[_token(), _ms(ttl)]))
        return bool(claimed)

    # -- outbox streams -----------------------------------------------------

    async def append(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
    ) -> Optional[List[OutboxEntry]]:
        if not entries:
            if dedupe_key is None:
                return []
            return [] if await self.claim_once(dedupe_key, dedupe_ttl) else None
        keys = [self._key(key_names.OUTBOX, stream), self._key(key_names.SINKS, stream)]
        if dedupe_key is not None:
            keys.append(self._key(key_names.DEDUPE, dedupe_key))
        args = self._append_args(dedupe_key, dedupe_ttl, guard) + self._entry_args(entries, guard)
        ids = await self._run(self._append(keys=keys, args=args))
        if ids is None:
            return None
        return _appended(ids, entries, self._key(key_names.DEDUPE))

    def _append_args(self, dedupe_key: Optional[str], dedupe_ttl: float, guard: Optional[Guard]) -> List[Any]:
        """The arguments every append script starts with (see _APPEND_FUNCTION)."""
        args: List[Any] = [self.retained, _ms(self.stream_ttl), _ms(dedupe_ttl) if dedupe_key is not None else 0, _token()]
        if guard is None:
            return args + ["", "", "", "", 0]
        lease_key = self._key(key_names.LEASE, guard.lease) if guard.lease is not None else ""
        return args + [
            self._key(key_names.HANDOFF, guard.sender_id), _header(guard.chat_id), lease_key, guard.owner or "",
            _ms(guard.once_ttl),
        ]

    def _entry_args(self, entries: Sequence[NewEntry], guard: Optional[Guard]) -> List[Any]:
        args: List[Any] = []
        for entry in entries:
            once = self._key(key_names.DEDUPE, entry.once_key) if guard is not None and entry.once_key else ""
            args += [entry.kind, "1" if entry.to_callback else "0", dump_payload(entry.payload), once]
        return args

    async def read(
        self, stream: str, after: Optional[str] = None, *, block: Optional[float] = None, limit: int = 100
    ) -> List[OutboxEntry]:
        if after is not None and parse_entry_id(after) is None:
            raise ValueError(f"not a stream entry id: {after!r}")
        key = self._key(key_names.OUTBOX, stream)
        entries = await self._read_now(key, after, limit)
        if entries or not block or block <= 0:
            return entries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block
        while True:
            async with self._notices.listen(key) as notice:
                # Subscribed: whatever is appended from now on sends a notice,
                # and this read sees what came before.
                entries = await self._read_now(key, after, limit)
                if entries:
                    return entries
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                if not await event_within(notice, remaining):
                    return []
            # A notice (or a broken notice connection): read again.
            entries = await self._read_now(key, after, limit)
            if entries or loop.time() >= deadline:
                return entries

    async def _read_now(self, key: str, after: Optional[str], limit: int) -> List[OutboxEntry]:
        reply = await self._run(self._redis.xread({key: after or "0-0"}, count=limit))
        if not reply:
            return []
        return [_entry(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def sink_position(self, stream: str, sink: str) -> Optional[str]:
        position = await self._run(self._redis.hget(self._key(key_names.SINKS, stream), sink))
        return position.decode().partition(" ")[0] if position is not None else None

    async def advance_sink(self, stream: str, sink: str, entry_id: str) -> bool:
        if parse_entry_id(entry_id) is None:
            raise ValueError(f"not a stream entry id: {entry_id!r}")
        moved = await self._run(
            self._advance_sink(
                keys=[self._key(key_names.SINKS, stream), self._key(key_names.OUTBOX, stream)], args=[sink, entry_id, _ms(self.stream_ttl), _token()]
            )
        )
        return bool(moved)

    # -- leases -------------------------------------------------------------

    async def register_lease(self, name: str) -> None:
        await self._run(self._redis.zadd(self._key(key_names.LEASES), {name: 0}, nx=True))

    async def unregister_lease(self, name: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._key(key_names.LEASES), name)
        pipe.delete(self._key(key_names.LEASE, name))
        await self._run(pipe.execute())

    async def _hold(self, name: str, owner: str, ttl: float, renew_only: bool) -> bool:
        call = self._acquire_lease(
            keys=[self._key(key_names.LEASE, name), self._key(key_names.LEASES)],
            args=[owner, _ms(ttl), _now_ms(), name, "1" if renew_only else "0"],
        )
        return bool(await self._lease_calls.finish(name, self._run(call)))

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._hold(name, owner, ttl, renew_only=False)

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._hold(name, owner, ttl, renew_only=True)

    async def release_lease(self, name: str, owner: str) -> bool:
        await self._lease_calls.settled(name, self.operation_timeout)
        released = await self._run(
            self._release_lease(keys=[self._key(key_names.LEASE, name), self._key(key_names.LEASES)], args=[owner, name])
        )
        return bool(released)

    async def lease_owner(self, name: str) -> Optional[str]:
        holder = await self._run(self._redis.get(self._key(key_names.LEASE, name)))
        return holder.decode() if holder is not None else None

    async def free_leases(self, limit: int = 100) -> List[str]:
        names = await self._run(self._free_leases(keys=[self._key(key_names.LEASES)], args=[_now_ms(), limit, self._key(key_names.LEASE)]))
        return [name.decode() for name in names]

    async def take_job(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        return await self._run_job_script(self._take_job, lease, owner, ttl, stream, sink, limit)

    async def append_and_take(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
        lease: str,
        owner: str,
        ttl: float,
        sink: str,
        limit: int = 100,
    ) -> Optional[Tuple[List[OutboxEntry], Optional[Taken]]]:
        if not entries:
            # The script appends at least one entry; an empty append is append's (at most a dedupe claim).
            stored = await self.append(stream, entries, dedupe_key=dedupe_key, dedupe_ttl=dedupe_ttl, guard=guard)
            if stored is None:
                return None
            return stored, await self.take_job(lease, owner, ttl, stream, sink, limit)
        keys = [self._key(key_names.OUTBOX, stream), self._key(key_names.SINKS, stream), self._key(key_names.LEASE, lease), self._key(key_names.LEASES)]
        if dedupe_key is not None:
            keys.append(self._key(key_names.DEDUPE, dedupe_key))
        args = self._append_args(dedupe_key, dedupe_ttl, guard) + [owner, _ms(ttl), _now_ms(), lease, sink, limit]
        args += self._entry_args(entries, guard)
        reply = await self._run(self._append_and_take(keys=keys, args=args))
        if reply is None:
            return None
        if reply and isinstance(reply[0], int):
            raise _refusal(reply, self._key(key_names.DEDUPE))
        ids, taken = reply
        return _appended(ids, entries, self._key(key_names.DEDUPE)), (_taken(taken) if taken else None)

    async def advance_and_next(
        self, stream: str, sink: str, entry_id: str, lease: str, owner: str, ttl: float, limit: int = 100, *, let_go: bool = False
    ) -> Tuple[bool, Optional[List[OutboxEntry]]]:
        check_let_go(let_go, limit)
        if parse_entry_id(entry_id) is None:
            raise ValueError(f"not a stream entry id: {entry_id!r}")
        reply = await self._run(
            self._advance_and_next(
                keys=[self._key(key_names.SINKS, stream), self._key(key_names.OUTBOX, stream), self._key(key_names.LEASE, lease), self._key(key_names.LEASES)],
                args=[sink, entry_id, _ms(self.stream_ttl), _token(), owner, _ms(ttl), _now_ms(), lease, limit, int(let_go)],
            )
        )
        if not isinstance(reply, list):
            return bool(reply), None
        return True, [_entry(found_id, _pairs(fields)) for found_id, fields in reply]

    async def let_go(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        return await self._run_job_script(self._let_go, lease, owner, ttl, stream, sink, limit)

    async def _run_job_script(
        self, script: Any, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int
    ) -> Optional[Taken]:
        """``take_job`` and ``let_go`` touch the same keys with the same arguments."""
        taken = await self._run(
            script(
                keys=[self._key(key_names.LEASE, lease), self._key(key_names.LEASES), self._key(key_names.SINKS, stream), self._key(key_names.OUTBOX, stream)],
                args=[owner, _ms(ttl), _now_ms(), lease, sink, limit],
            )
        )
        return _taken(taken) if taken else None

    # -- timers -------------------------------------------------------------

    async def schedule_timer(self, name: str, due_at: float) -> None:
        await self._run(self._redis.zadd(self._key(key_names.TIMERS), {name: int(due_at * 1000)}))

    async def cancel_timer(self, name: str) -> bool:
        return bool(await self._run(self._redis.zrem(self._key(key_names.TIMERS), name)))

    async def timer_due_at(self, name: str) -> Optional[float]:
        score = await self._run(self._redis.zscore(self._key(key_names.TIMERS), name))
        return score / 1000 if score is not None else None

    async def next_timer_due(self) -> Optional[float]:
        first = await self._run(self._redis.zrange(self._key(key_names.TIMERS), 0, 0, withscores=True))
        return first[0][1] / 1000 if first else None

    async def claim_due_timers(self, *, hold: float = 30.0, limit: int = 100) -> List[TimerClaim]:
        now = _now_ms()
        held_until = now + _ms(hold)
        names = await self._run(self._claim_timers(keys=[self._key(key_names.TIMERS)], args=[now, held_until, limit]))
        return [TimerClaim(name.decode(), held_until) for name in names]

    async def finish_timer(self, claim: TimerClaim) -> bool:
        finished = await self._run(self._finish_timer(keys=[self._key(key_names.TIMERS)], args=[claim.name, claim.held_until]))
        return bool(finished)

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def aclose(self) -> None:
        await self._notices.aclose()
        try:
            await self._redis.close(close_connection_pool=True)
        except (RedisError, OSError) as error:
            logger.debug("Closing the Redis store: %s", error)


class _Listener:
    """One reader waiting on one stream."""

    __slots__ = ("channel", "sequence", "subscribed", "notice")

    def __init__(self, channel: bytes, sequence: int) -> None:
        self.channel = channel
        #: Which SUBSCRIBE of the channel was this listener's: it is listening
        #: once that many confirmations came back.
        self.sequence = sequence
        self.subscribed = asyncio.Event()
        self.notice = asyncio.Event()


class _Channel:
    __slots__ = ("listeners", "sent", "confirmed")

    def __init__(self) -> None:
        self.listeners: Set[_Listener] = set()
        self.sent = 0
        self.confirmed = 0


class _LeaseCalls:
    """Lease calls that run to their end once made, even when their caller is
    cancelled, and that a release of the same lease waits for: sent on
    another connection of the pool, a release could reach Redis before a
    renewal made earlier, and the stopped replica would hold the lease again."""

    def __init__(self) -> None:
        self._running: Dict[str, Set["asyncio.Task[Any]"]] = {}

    async def finish(self, name: str, call: Awaitable[T]) -> T:
        task: "asyncio.Task[T]" = asyncio.ensure_future(call)
        self._running.setdefault(name, set()).add(task)
        task.add_done_callback(functools.partial(self._done, name))
        return await asyncio.shield(task)

    def _done(self, name: str, task: "asyncio.Task[Any]") -> None:
        running = self._running.get(name)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[name]
        if not task.cancelled():
            task.exception()  # its caller may be gone: nobody else would read the error

    async def settled(self, name: str, timeout: float) -> None:
        running = self._running.get(name)
        if running:
            await asyncio.wait(set(running), timeout=timeout)


class _Notices:
    """Append notices for blocked readers, over one pub/sub connection.

    Each waiting reader sends its own SUBSCRIBE and counts as listening once
    that SUBSCRIBE is confirmed (Redis answers them in order), so a reader
    never misses a notice sent after its second read. When the connection
    breaks, every listener is woken: its next read reports the outage."""

    def __init__(self, client: "aioredis.Redis", timeout: float, idle_channel: str) -> None:
        self._client = client
        self._idle_channel = idle_channel
        self._timeout = timeout
        self._pubsub: Optional[Any] = None
        self._reader: Optional["asyncio.Task[None]"] = None
        self._channels: Dict[bytes, _Channel] = {}
        # Made on first use, inside the running loop (a store may be built
        # before Rasa's loop starts, and Python 3.8's locks bind at creation).
        self._lock_made: Optional[asyncio.Lock] = None

    @property
    def _lock(self) -> asyncio.Lock:
        if self._lock_made is None:
            self._lock_made = asyncio.Lock()
        return self._lock_made

    @contextlib.asynccontextmanager
    async def listen(self, key: str) -> AsyncIterator[asyncio.Event]:
        channel = key.encode()
        state = self._channels.setdefault(channel, _Channel())
        state.sent += 1
        listener = _Listener(channel, state.sent)
        state.listeners.add(listener)
        try:
            async with self._lock:
                pubsub = await self._connected()
                await _as_store_errors(pubsub.subscribe(channel), self._timeout)
            if not await event_within(listener.subscribed, self._timeout):
                raise StoreUnavailable("Redis did not confirm a subscription in time")
            yield listener.notice
        finally:
            state.listeners.discard(listener)
            if not state.listeners and self._pubsub is not None:
                try:
                    async with self._lock:
                        if self._pubsub is not None and not state.listeners:
                            await _as_store_errors(self._pubsub.unsubscribe(channel), self._timeout)
                except StoreError:
                    self._broken()
            self._forget_if_idle(channel, state)

    async def _connected(self) -> Any:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
            # The reader starts after the first SUBSCRIBE has a connection.
            self._reader = None
        if self._reader is None:
            pubsub = self._pubsub
            # Subscribed to one channel for good before the reader starts:
            # redis-py health-checks (PING and read) a pub/sub connection
            # that has no subscription, and that read would race the reader's.
            await _as_store_errors(pubsub.subscribe(self._idle_channel), self._timeout)
            self._reader = asyncio.ensure_future(self._read(pubsub))
        return self._pubsub

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                state = self._channels.get(message["channel"])
                if state is None:
                    continue
                if message["type"] == "subscribe":
                    state.confirmed += 1
                    for listener in state.listeners:
                        if listener.sequence <= state.confirmed:
                            listener.subscribed.set()
                    self._forget_if_idle(message["channel"], state)
                elif message["type"] == "message":
                    for listener in state.listeners:
                        listener.notice.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure: the listeners must hear of it
            logger.info("The Redis notice connection broke (%s); blocked readers read again.", type(error).__name__)
        finally:
            if self._pubsub is pubsub:
                self._broken()
            await _close_quietly(pubsub)

    def _broken(self) -> None:
        """Drop the connection and wake everyone: their next read tells."""
        reader = self._reader
        self._pubsub = None
        self._reader = None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()  # found broken by a listener: the reader closes the connection as it ends
        for state in self._channels.values():
            for listener in state.listeners:
                listener.subscribed.set()
                listener.notice.set()
        self._channels.clear()

    def _forget_if_idle(self, channel: bytes, state: _Channel) -> None:
        # Kept until every SUBSCRIBE sent is confirmed, so a late confirmation
        # is not taken for a newer listener's.
        if not state.listeners and state.confirmed >= state.sent and self._channels.get(channel) is state:
            del self._channels[channel]

    async def aclose(self) -> None:
        reader, pubsub = self._reader, self._pubsub
        self._pubsub = None
        self._reader = None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if pubsub is not None:
            await _close_quietly(pubsub)


async def _as_store_errors(call: Awaitable[T], timeout: float) -> T:
    """``call``'s answer within ``timeout`` seconds, Redis's failures raised
    as the store's: ``StoreUnavailable`` for what passes (no connection, a
    timeout, Redis loading or failing to persist), ``StoreError`` for the rest."""
    try:
        return await bounded(call, timeout)
    except (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError) as error:
        raise StoreUnavailable(f"Redis is unavailable: {type(error).__name__}: {error}") from error
    except RuntimeError as error:
        if not _closed_under_uvloop(error):
            raise
        raise StoreUnavailable(f"Redis is unavailable: its connection closed ({error})") from error
    except ResponseError as error:
        if str(error).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailable(f"Redis cannot serve now: {error}") from error
        raise StoreError(f"Redis refused a store operation: {error}") from error
    except RedisError as error:
        raise StoreError(f"Redis store operation failed: {type(error).__name__}: {error}") from error


def _closed_under_uvloop(error: RuntimeError) -> bool:
    """A write to a connection that closed when Redis went away. uvloop, the
    loop ``rasa run`` runs Sanic on, raises this RuntimeError for it where
    asyncio's own loop drops the write and the read after it fails with a
    ConnectionError. redis-py checks a pooled connection as it lends it, but
    not the pub/sub connection of the notices: seen in the soak, an SSE
    stream's unsubscribe as Redis stopped."""
    return "the handler is closed" in str(error)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.reset()
    except (RedisError, OSError) as error:
        logger.debug("Closing the Redis notice connection: %s", error)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _token() -> str:
    """Marks one call, so that its retry is recognised as the same call."""
    return secrets.token_hex(6)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _header(chat_id: str) -> str:
    return f"{len(chat_id.encode())}:{chat_id}"


def _stored(record: HandoffRecord) -> str:
    """A record as kept: a string is less than half the memory of a hash."""
    return _header(record.chat_id) + record.to_json()


def _record(sender_id: str, stored: Optional[bytes]) -> Optional[HandoffRecord]:
    if stored is None:
        return None
    length, _, rest = stored.partition(b":")
    chat_id, text = rest[: int(length)], rest[int(length) :]
    return HandoffRecord.from_json(sender_id, chat_id.decode(), text.decode())


def _entry(entry_id: bytes, fields: Dict[bytes, bytes]) -> OutboxEntry:
    return OutboxEntry(
        entry_id=entry_id.decode(),
        kind=fields[b"k"].decode(),
        payload=json.loads(fields[b"p"]),
        to_callback=fields[b"c"] == b"1",
    )


def _appended(ids: Sequence[Any], entries: Sequence[NewEntry], dedupe_prefix: str) -> List[OutboxEntry]:
    """The stored entries, or the guard's refusal raised."""
    if ids and isinstance(ids[0], int):
        raise _refusal(ids, dedupe_prefix)
    return [
        OutboxEntry(entry_id.decode(), entry.kind, entry.payload, entry.to_callback)
        for entry_id, entry in zip(ids, entries)
    ]


def _refusal(reply: Sequence[Any], dedupe_prefix: str) -> AppendRefused:
    """What a guarded append script's refusal ({0}, {1} or {2, keys...}) means."""
    if reply[0] == 0:
        return ChatNotLive("the chat is not live")
    if reply[0] == 1:
        return LeaseLost("the lease is another's")
    return AlreadyStored([key[len(dedupe_prefix.encode()) :].decode() for key in reply[1:]])


def _taken(reply: Sequence[Any]) -> Taken:
    pointer, entries = reply
    return (pointer.decode() or None), [_entry(entry_id, _pairs(fields)) for entry_id, fields in entries]


def _pairs(flat: Sequence[bytes]) -> Dict[bytes, bytes]:
    """A script's reply for a hash or entry (field, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2]))


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
