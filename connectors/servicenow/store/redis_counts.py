"""Counted capacity in Redis (``RedisStore``): slots of open streams and
sockets, counted for the whole deployment with expiry, and the admission of
handoff starts. Each decision is one Lua script.

=========================  ==========  =========================================  ================================
key                        type        holds                                      expiry
=========================  ==========  =========================================  ================================
``{p}n:<cap name>``        sorted set  holders, scored by when the slot expires   the slot ``ttl`` after the last
                                       (epoch ms; renewed by the holding replica) take or renewal
``{p}live``                set         senders with a handoff record (filed and   none (members leave with the
                                       removed with the record, in its scripts)   record)
``{p}places``              sorted set  admitted starts without a record yet,      none (members expire by score)
                                       scored by when the place expires
``{p}r:<sender_id>``       sorted set  the conversation's recent starts (time)    the window after the last start
``{p}rate``                string      the deployment's theoretical arrival time  when it is reached
                                       of the next start (ms, GCRA)
=========================  ==========  =========================================  ================================

A retried script (redis-py resends once when the connection drops) may count
a slot or a start twice; both err towards refusing, and a slot's duplicate is
the same member.
"""

import time
from typing import Any, Awaitable, Dict, List, Mapping, Optional, Sequence, TypeVar

from connectors.servicenow.store import keys as key_names
from connectors.servicenow.store.base import Cap, StartLimits

T = TypeVar("T")

# KEYS: the caps' keys; ARGV: now ms, expiry ms, ttl ms, holder, then each cap's limit.
_TAKE_SLOT = """
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4 + i])
  if limit > 0 and not redis.call('ZSCORE', key, ARGV[4]) and redis.call('ZCARD', key) >= limit then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= limit then return i end
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[4])
  redis.call('PEXPIRE', key, ARGV[3])
end
return 0
"""

# KEYS: live, places, rate, the sender's starts; ARGV: now ms, sender,
# max live, hold ms, per sender, window ms, interval ms, burst, token.
_ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max_live = tonumber(ARGV[3])
if max_live > 0 then
  local live = redis.call('SCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
  if redis.call('ZSCORE', KEYS[2], ARGV[2]) then live = live - 1 end
  if live >= max_live then return 'busy' end
end
local per_sender = tonumber(ARGV[5])
if per_sender > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]))
  if redis.call('ZCARD', KEYS[4]) >= per_sender then return 'sender_rate' end
end
local interval = tonumber(ARGV[7])
if interval > 0 then
  local arrival = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now) + interval
  if arrival - now > tonumber(ARGV[8]) * interval then return 'deployment_rate' end
  redis.call('SET', KEYS[3], string.format('%d', arrival), 'PX', arrival - now)
end
if per_sender > 0 then
  redis.call('ZADD', KEYS[4], now, ARGV[9])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
return false
"""


class RedisCounts:
    """Mixed into ``RedisStore``, which gives ``_redis``, ``_run`` and ``_key``."""

    _redis: Any

    def _key(self, kind: str, name: str = "") -> str:
        raise NotImplementedError

    async def _run(self, call: Awaitable[T], timeout: Optional[float] = None) -> T:
        raise NotImplementedError

    def _register_count_scripts(self) -> None:
        self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._admit = self._redis.register_script(_ADMIT)

    async def take_slot(self, holder: str, caps: Sequence[Cap], ttl: float) -> Optional[Cap]:
        now = _now_ms()
        full = await self._run(
            self._take_slot(
                keys=[self._key(key_names.SLOTS, cap.name) for cap in caps],
                args=[now, now + _ms(ttl), _ms(ttl), holder, *(cap.limit for cap in caps)],
            )
        )
        return caps[int(full) - 1] if full else None

    async def renew_slots(self, held: Mapping[str, Sequence[str]], ttl: float) -> None:
        by_cap: Dict[str, Dict[str, int]] = {}
        expires = _now_ms() + _ms(ttl)
        for holder, names in held.items():
            for name in names:
                by_cap.setdefault(name, {})[holder] = expires
        if not by_cap:
            return
        pipe = self._redis.pipeline(transaction=False)
        for name, members in by_cap.items():
            pipe.zadd(self._key(key_names.SLOTS, name), members)
            pipe.pexpire(self._key(key_names.SLOTS, name), _ms(ttl))
        await self._run(pipe.execute())

    async def release_slot(self, holder: str, names: Sequence[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.zrem(self._key(key_names.SLOTS, name), holder)
        await self._run(pipe.execute())

    async def count_slots(self, names: Sequence[str]) -> List[int]:
        now = _now_ms()
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.zcount(self._key(key_names.SLOTS, name), f"({now}", "+inf")
        return [int(count) for count in await self._run(pipe.execute())]

    async def admit_handoff(self, sender_id: str, limits: StartLimits) -> Optional[str]:
        refused = await self._run(
            self._admit(
                keys=[
                    self._key(key_names.LIVE), self._key(key_names.PLACES), self._key(key_names.START_RATE),
                    self._key(key_names.STARTS, sender_id),
                ],
                args=[
                    _now_ms(), sender_id, limits.max_live, _ms(limits.hold_s), limits.per_sender, _ms(limits.window_s),
                    _ms(limits.interval_s), limits.burst, f"{time.time_ns()}",
                ],
            )
        )
        return refused.decode() if isinstance(refused, bytes) else refused

    async def release_admission(self, sender_id: str) -> None:
        await self._run(self._redis.zrem(self._key(key_names.PLACES), sender_id))

    async def live_handoff_count(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        pipe.scard(self._key(key_names.LIVE))
        pipe.zcount(self._key(key_names.PLACES), f"({_now_ms()}", "+inf")
        live, places = await self._run(pipe.execute())
        return int(live) + int(places)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)
