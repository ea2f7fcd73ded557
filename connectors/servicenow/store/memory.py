"""The embedded store: everything in this process, nothing survives it.

The default when no ``redis_url`` is set: a deployment of one replica. It
keeps the semantics of ``RedisStore`` within the process, so the core runs the
same code on both: atomic steps (there is no ``await`` inside one), blocking
reads woken by appends, expiry, and bounded memory (streams keep ``retained``
entries and expire when idle, and a stream nobody wrote to is dropped when its
last reader goes; dedupe marks expire and are capped; expired leases are swept).

What does not survive the process is read back from the tracker slots, the
durable mirror (``HandoffMirror``): every live handoff at start-up
(``import_handoffs``), and before that, or for a tracker the scan could not
read, the one handoff a message or callback asks about (``find_handoff``).
Senders the mirror said are not in handoff are remembered (up to
``inactive_capacity``, least recently asked first out), so the mirror is read
once per conversation, not once per message.
"""

import heapq
import time
from collections import OrderedDict
from typing import AsyncIterator, Callable, Dict, List, Optional, Tuple

from connectors.servicenow.store.base import HandoffMirror, HandoffRecord, Store, TimerClaim
from connectors.servicenow.store.memory_counts import MemoryCounts
from connectors.servicenow.store.memory_streams import MemoryStreams

#: How often idle streams are looked for (seconds).
SWEEP_INTERVAL_S = 60.0


class MemoryStore(MemoryCounts, MemoryStreams, Store):
    def __init__(
        self,
        *,
        retained: int = 200,
        stream_ttl: float = 3600.0,
        max_dedupe_keys: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        mirror: Optional[HandoffMirror] = None,
        inactive_capacity: int = 100_000,
    ) -> None:
        self._clock = clock
        self._mirror = mirror
        self._handoffs: Dict[str, HandoffRecord] = {}
        self._by_chat: Dict[str, str] = {}
        #: Senders known not to be in handoff (the mirror said so, or their
        #: handoff ended here), least recently asked first.
        self._inactive: "OrderedDict[str, None]" = OrderedDict()
        self._inactive_capacity = inactive_capacity
        # Key -> expiry, oldest first; callers use a few fixed ttls, so the
        # front is (nearly) always the next to expire.
        self._dedupe: "OrderedDict[str, float]" = OrderedDict()
        self._max_dedupe_keys = max_dedupe_keys
        self._init_streams(retained, stream_ttl)
        self._next_sweep = clock() + SWEEP_INTERVAL_S
        self._timers: Dict[str, int] = {}
        self._timer_heap: List[Tuple[int, str]] = []

    # -- handoff records ----------------------------------------------------

    async def create_handoff(self, record: HandoffRecord) -> bool:
        current = self._handoffs.get(record.sender_id)
        if current is not None:
            return current.chat_id == record.chat_id
        self._file(record)
        return True

    def _file(self, record: HandoffRecord) -> None:
        self._filed(record.sender_id)
        self._inactive.pop(record.sender_id, None)
        self._handoffs[record.sender_id] = record
        self._by_chat[record.chat_id] = record.sender_id

    def _mark_inactive(self, sender_id: str) -> None:
        self._inactive[sender_id] = None
        self._inactive.move_to_end(sender_id)
        while len(self._inactive) > self._inactive_capacity:
            self._inactive.popitem(last=False)

    def known_inactive(self, sender_id: str) -> bool:
        """Whether the sender is known not to be in handoff (no mirror read needed)."""
        if sender_id in self._inactive:
            self._inactive.move_to_end(sender_id)
            return True
        return False

    async def find_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        record = self._handoffs.get(sender_id)
        if record is not None or self._mirror is None or self.known_inactive(sender_id):
            return record
        # Raises StoreUnavailable when the mirror cannot say: nothing is remembered then.
        loaded = await self._mirror.load_handoff(sender_id)
        record = self._handoffs.get(sender_id)
        if record is not None or sender_id in self._inactive:
            return record  # decided here while the mirror was read: that is newer
        if loaded is None:
            self._mark_inactive(sender_id)
            return None
        self._file(loaded)
        return loaded

    async def import_handoffs(self) -> List[HandoffRecord]:
        if self._mirror is None:
            return []
        imported: List[HandoffRecord] = []
        async for loaded in self._mirror.live_handoffs():
            current = self._handoffs.get(loaded.sender_id)
            if current is None and loaded.sender_id not in self._inactive:
                self._file(loaded)
                current = loaded
            if current is not None and current.chat_id == loaded.chat_id:
                imported.append(current)
        return imported

    async def get_handoff(self, sender_id: str) -> Optional[HandoffRecord]:
        return self._handoffs.get(sender_id)

    async def handoff_by_chat(self, chat_id: str) -> Optional[HandoffRecord]:
        sender_id = self._by_chat.get(chat_id)
        return self._handoffs.get(sender_id) if sender_id is not None else None

    async def update_handoff(self, record: HandoffRecord) -> bool:
        current = self._handoffs.get(record.sender_id)
        if current is None or current.chat_id != record.chat_id:
            return False
        self._handoffs[record.sender_id] = record
        return True

    async def end_handoff(self, sender_id: str, chat_id: str) -> Optional[HandoffRecord]:
        current = self._handoffs.get(sender_id)
        if current is None or current.chat_id != chat_id:
            return None
        del self._handoffs[sender_id]
        if self._by_chat.get(chat_id) == sender_id:
            del self._by_chat[chat_id]
        self._mark_inactive(sender_id)
        return current

    async def handoffs(self) -> AsyncIterator[HandoffRecord]:
        for record in list(self._handoffs.values()):
            yield record

    # -- exactly once -------------------------------------------------------

    async def claim_once(self, key: str, ttl: float) -> bool:
        return self._claim(key, ttl)

    def _claimed(self, key: str) -> bool:
        return self._dedupe.get(key, 0.0) > self._clock()

    def _claim(self, key: str, ttl: float) -> bool:
        now = self._clock()
        if self._claimed(key):
            return False
        self._dedupe.pop(key, None)
        self._dedupe[key] = now + ttl
        while self._dedupe:
            oldest, oldest_expiry = next(iter(self._dedupe.items()))
            if oldest_expiry > now and len(self._dedupe) <= self._max_dedupe_keys:
                break
            del self._dedupe[oldest]
        return True

    # -- expiry -------------------------------------------------------------

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_S
        self._sweep_streams(now)

    # -- timers -------------------------------------------------------------

    async def schedule_timer(self, name: str, due_at: float) -> None:
        self._set_timer(name, int(due_at * 1000))

    def _set_timer(self, name: str, due_ms: int) -> None:
        self._timers[name] = due_ms
        heapq.heappush(self._timer_heap, (due_ms, name))
        if len(self._timer_heap) > 2 * len(self._timers) + 64:
            # Rescheduling leaves stale heap entries behind; rebuild now and
            # then so memory stays bounded by the live timers.
            self._timer_heap = [(due, timer) for timer, due in self._timers.items()]
            heapq.heapify(self._timer_heap)

    async def cancel_timer(self, name: str) -> bool:
        return self._timers.pop(name, None) is not None

    async def timer_due_at(self, name: str) -> Optional[float]:
        due = self._timers.get(name)
        return due / 1000 if due is not None else None

    async def next_timer_due(self) -> Optional[float]:
        while self._timer_heap and self._timers.get(self._timer_heap[0][1]) != self._timer_heap[0][0]:
            heapq.heappop(self._timer_heap)  # stale: moved or cancelled
        return self._timer_heap[0][0] / 1000 if self._timer_heap else None

    async def claim_due_timers(self, *, hold: float = 30.0, limit: int = 100) -> List[TimerClaim]:
        now_ms = int(self._clock() * 1000)
        held_until = now_ms + int(hold * 1000)
        claims: List[TimerClaim] = []
        while self._timer_heap and len(claims) < limit and self._timer_heap[0][0] <= now_ms:
            due, name = heapq.heappop(self._timer_heap)
            if self._timers.get(name) != due or any(claim.name == name for claim in claims):
                continue  # stale: moved, cancelled, or pushed twice
            claims.append(TimerClaim(name, held_until))
        for claim in claims:
            self._set_timer(claim.name, held_until)
        return claims

    async def finish_timer(self, claim: TimerClaim) -> bool:
        if self._timers.get(claim.name) != claim.held_until:
            return False
        del self._timers[claim.name]
        return True

    # -- lifecycle ----------------------------------------------------------

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
