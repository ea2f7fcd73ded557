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

import asyncio
import heapq
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

from connectors.servicenow.store.memory_counts import MemoryCounts
from connectors.servicenow.store.base import (
    AlreadyStored,
    ChatNotLive,
    Guard,
    HandoffMirror,
    HandoffRecord,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    Store,
    TimerClaim,
    dump_payload,
    entry_id_after,
    parse_entry_id,
)
from connectors.servicenow.tasks import event_within

logger = logging.getLogger(__name__)

#: How often idle streams are looked for (seconds).
SWEEP_INTERVAL_S = 60.0


#: An entry id as one int, ordered as the ids are: ``ms << 64 | n``. An int
#: of 105 bits is 40 bytes, the pair of ints in a tuple 120, and every live
#: chat keeps a few entries.
EntryKey = int
_N_BITS = 64
_N_MAX = (1 << _N_BITS) - 1


def entry_key(entry_id: Tuple[int, int]) -> EntryKey:
    """The key of a parsed id. Ours count ``n`` from below 2**40, so a larger
    ``n`` (an id from elsewhere) orders the same as the largest there is."""
    ms, n = entry_id
    return ms << _N_BITS | min(n, _N_MAX)


@dataclass(slots=True)
class _Kept:
    """An entry as a stream keeps it: the payload as the compact JSON Redis
    keeps too, and the id as its key. Every live chat keeps a few entries,
    and the dicts of a payload take several times the bytes of its JSON; the
    reader gets a copy of its own, as from Redis."""

    key: EntryKey
    kind: str
    payload: str
    to_callback: bool

    def entry(self) -> OutboxEntry:
        entry_id = f"{self.key >> _N_BITS}-{self.key & _N_MAX}"
        return OutboxEntry(entry_id, self.kind, json.loads(self.payload), self.to_callback)


@dataclass(slots=True)
class _Stream:
    #: A list trimmed to ``retained`` on append, not a deque with a maxlen: an
    #: empty deque takes 624 bytes, and every live chat has a stream.
    entries: List[_Kept]
    expires_at: float
    sinks: Dict[str, str] = field(default_factory=dict)
    #: Set on the next append; created only while someone waits.
    appended: Optional[asyncio.Event] = None
    #: Readers blocked on ``appended``.
    waiting: int = 0

    def drops_undelivered(self, appending: int, retained: int) -> bool:
        """Whether making room for ``appending`` more drops an entry no sink
        has taken (nobody streams this conversation and no callback took it)."""
        overflow = len(self.entries) + appending - retained
        if overflow <= 0 or not self.entries:
            return False
        newest_dropped = self.entries[min(overflow, len(self.entries)) - 1].key
        taken = [parse_entry_id(pointer) for pointer in self.sinks.values()]
        return not any(pointer is not None and entry_key(pointer) >= newest_dropped for pointer in taken)

    def keep_newest(self, count: int) -> None:
        overflow = len(self.entries) - count
        if overflow > 0:
            del self.entries[:overflow]


class MemoryStore(MemoryCounts, Store):
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
        self.retained = retained
        self.stream_ttl = stream_ttl
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
        self._streams: Dict[str, _Stream] = {}
        self._last_ms = 0
        self._last_n = secrets.randbelow(1 << 40)
        self._next_sweep = clock() + SWEEP_INTERVAL_S
        self._lease_jobs: Dict[str, float] = {}
        self._leases: Dict[str, Tuple[str, float]] = {}
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

    # -- outbox streams -----------------------------------------------------

    def _live_stream(self, name: str) -> Optional[_Stream]:
        stream = self._streams.get(name)
        if stream is not None and stream.expires_at <= self._clock():
            self._drop_stream(name, stream)
            return None
        return stream

    def _drop_stream(self, name: str, stream: _Stream) -> None:
        # Someone waiting keeps the stream object; it stays reachable for
        # them and the next append wakes them.
        if stream.waiting == 0:
            del self._streams[name]
        else:
            stream.entries.clear()
            stream.sinks.clear()

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_S
        for name, stream in list(self._streams.items()):
            if stream.expires_at <= now:
                self._drop_stream(name, stream)
        for name, (_, expires) in list(self._leases.items()):
            if expires <= now:
                del self._leases[name]

    def _new_id(self) -> Tuple[str, EntryKey]:
        # ``<ms>-<n>`` as Redis gives them, with ``n`` counting on from a
        # random start for each process: an id a process gave out before a
        # restart names no entry of this one (a Last-Event-ID from before the
        # restart is foreign, even if the clock stepped back meanwhile).
        self._last_ms = ms = max(int(self._clock() * 1000), self._last_ms)
        self._last_n = n = self._last_n + 1
        return f"{ms}-{n}", ms << _N_BITS | n

    def _new_stream(self, name: str) -> _Stream:
        stream = _Stream([], self._clock() + self.stream_ttl)
        self._streams[name] = stream
        return stream

    async def append(
        self,
        stream: str,
        entries: Sequence[NewEntry],
        *,
        dedupe_key: Optional[str] = None,
        dedupe_ttl: float = 0.0,
        guard: Optional[Guard] = None,
    ) -> Optional[List[OutboxEntry]]:
        self._sweep()
        if dedupe_key is not None and self._claimed(dedupe_key):
            return None
        if guard is not None:
            self._check(guard, entries)
        if dedupe_key is not None:
            self._claim(dedupe_key, dedupe_ttl)
        kept = self._live_stream(stream) or self._new_stream(stream)
        if kept.drops_undelivered(len(entries), self.retained):
            logger.warning("Dropping an undelivered item for %s: nobody is streaming its messages.", stream)
        added = []
        for entry in entries:
            entry_id, key = self._new_id()
            added.append(OutboxEntry(entry_id, entry.kind, entry.payload, entry.to_callback))
            kept.entries.append(_Kept(key, entry.kind, dump_payload(entry.payload), entry.to_callback))
        kept.keep_newest(self.retained)
        kept.expires_at = self._clock() + self.stream_ttl
        if kept.appended is not None and added:
            kept.appended.set()
            kept.appended = None
        return added

    def _check(self, guard: Guard, entries: Sequence[NewEntry]) -> None:
        """Raise the guard's refusal, or claim the entries' once keys."""
        record = self._handoffs.get(guard.sender_id)
        if record is None or record.chat_id != guard.chat_id:
            raise ChatNotLive(f"chat {guard.chat_id} of {guard.sender_id} is not live")
        if guard.lease is not None and self._holder(guard.lease) != guard.owner:
            raise LeaseLost(f"lease {guard.lease} is not {guard.owner}'s")
        keys = [entry.once_key for entry in entries if entry.once_key is not None]
        if any(self._claimed(key) for key in keys):
            raise AlreadyStored([key for key in keys if self._claimed(key)])
        for key in keys:
            self._claim(key, guard.once_ttl)

    async def read(
        self, stream: str, after: Optional[str] = None, *, block: Optional[float] = None, limit: int = 100
    ) -> List[OutboxEntry]:
        bound = None
        if after is not None:
            parsed = parse_entry_id(after)
            if parsed is None:
                raise ValueError(f"not a stream entry id: {after!r}")
            bound = entry_key(parsed)
        found = self._entries_after(stream, bound, limit)
        if found or not block or block <= 0:
            return found
        kept = self._live_stream(stream) or self._new_stream(stream)
        if kept.appended is None:
            kept.appended = asyncio.Event()
        appended = kept.appended
        kept.waiting += 1
        try:
            if not await event_within(appended, block):
                return []
        finally:
            kept.waiting -= 1
            if not kept.waiting and not kept.entries and not kept.sinks and self._streams.get(stream) is kept:
                # Nobody wrote to it and nobody waits: a quiet conversation's
                # stream request leaves nothing behind.
                del self._streams[stream]
        return self._entries_after(stream, bound, limit)

    def _entries_after(self, stream: str, bound: Optional[EntryKey], limit: int) -> List[OutboxEntry]:
        kept = self._live_stream(stream)
        if kept is None or not kept.entries:
            return []
        entries = kept.entries
        start = len(entries)
        if bound is None:
            start = 0
        else:
            # Ids grow: walk back from the newest to the first one after ``bound``.
            while start > 0 and entries[start - 1].key > bound:
                start -= 1
        return [entries[index].entry() for index in range(start, min(len(entries), start + limit))]

    async def sink_position(self, stream: str, sink: str) -> Optional[str]:
        kept = self._live_stream(stream)
        return kept.sinks.get(sink) if kept is not None else None

    async def advance_sink(self, stream: str, sink: str, entry_id: str) -> bool:
        if parse_entry_id(entry_id) is None:
            raise ValueError(f"not a stream entry id: {entry_id!r}")
        kept = self._live_stream(stream) or self._new_stream(stream)
        if not entry_id_after(entry_id, kept.sinks.get(sink)):
            return False
        kept.sinks[sink] = entry_id
        kept.expires_at = self._clock() + self.stream_ttl
        return True

    # -- leases -------------------------------------------------------------

    def _holder(self, name: str) -> Optional[str]:
        held = self._leases.get(name)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._leases[name]
            return None
        return held[0]

    async def register_lease(self, name: str) -> None:
        self._lease_jobs.setdefault(name, 0.0)

    async def unregister_lease(self, name: str) -> None:
        self._lease_jobs.pop(name, None)
        self._leases.pop(name, None)

    def _hold(self, name: str, owner: str, ttl: float) -> None:
        expires = self._clock() + ttl
        self._leases[name] = (owner, expires)
        if name in self._lease_jobs:
            self._lease_jobs[name] = expires

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        self._sweep()
        holder = self._holder(name)
        if holder is not None and holder != owner:
            return False
        self._hold(name, owner, ttl)
        return True

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        if self._holder(name) != owner:
            return False
        self._hold(name, owner, ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> bool:
        if self._holder(name) != owner:
            return False
        del self._leases[name]
        if name in self._lease_jobs:
            self._lease_jobs[name] = 0.0
        return True

    async def lease_owner(self, name: str) -> Optional[str]:
        return self._holder(name)

    async def free_leases(self, limit: int = 100) -> List[str]:
        now = self._clock()
        return [name for name, expires in self._lease_jobs.items() if expires <= now][:limit]

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
