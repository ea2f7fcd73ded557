"""Outbox streams, their sinks' pointers and the leases of the jobs that
drain them, in the process (``MemoryStore``), with the semantics of the Redis
store's, so the core runs the same code on both.

The steps a job takes (``take_job``, ``append_and_take``, ``advance_and_next``,
``let_go``) are one synchronous step each here, as they are one script in
Redis: no ``await`` inside, so nothing runs between their parts, and an agent's
message on its way to the user costs no more coroutines than the step it is.
A sink's pointer is kept as the entry's key (an int), the form its
comparisons need, not as the id string every comparison would parse again.
"""

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from connectors.servicenow.store.base import (
    AlreadyStored,
    ChatNotLive,
    Guard,
    HandoffRecord,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    Taken,
    check_let_go,
    dump_payload,
    parse_entry_id,
)
from connectors.servicenow.tasks import event_within

logger = logging.getLogger(__name__)

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


def key_of(entry_id: str) -> EntryKey:
    """The key of an entry id; ``ValueError`` when it is not one."""
    parsed = parse_entry_id(entry_id)
    if parsed is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return entry_key(parsed)


def id_of(key: EntryKey) -> str:
    return f"{key >> _N_BITS}-{key & _N_MAX}"


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
        return OutboxEntry(id_of(self.key), self.kind, json.loads(self.payload), self.to_callback)


@dataclass(slots=True)
class _Stream:
    #: A list trimmed to ``retained`` on append, not a deque with a maxlen: an
    #: empty deque takes 624 bytes, and every live chat has a stream.
    entries: List[_Kept]
    expires_at: float
    #: Sink name -> the key of the last entry it took.
    sinks: Dict[str, EntryKey] = field(default_factory=dict)
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
        return not any(pointer >= newest_dropped for pointer in self.sinks.values())

    def keep_newest(self, count: int) -> None:
        overflow = len(self.entries) - count
        if overflow > 0:
            del self.entries[:overflow]

    def after(self, bound: Optional[EntryKey], limit: int) -> List[OutboxEntry]:
        entries = self.entries
        start = len(entries)
        if bound is None:
            start = 0
        else:
            # Ids grow: walk back from the newest to the first one after ``bound``.
            while start > 0 and entries[start - 1].key > bound:
                start -= 1
        return [entries[index].entry() for index in range(start, min(len(entries), start + limit))]


class MemoryStreams:
    """Mixed into ``MemoryStore``, which gives ``_clock``, ``_handoffs``, the
    once marks (``_claimed``, ``_claim``) and ``_sweep`` (which drops what
    expired, now and then, and calls ``_sweep_streams``), and calls
    ``_init_streams`` from its constructor."""

    _clock: Callable[[], float]
    _handoffs: Dict[str, HandoffRecord]
    _claimed: Callable[[str], bool]
    _claim: Callable[[str, float], bool]
    _sweep: Callable[[], None]

    def _init_streams(self, retained: int, stream_ttl: float) -> None:
        self.retained = retained
        self.stream_ttl = stream_ttl
        self._streams: Dict[str, _Stream] = {}
        self._last_ms = 0
        self._last_n = secrets.randbelow(1 << 40)
        self._lease_jobs: Dict[str, float] = {}
        self._leases: Dict[str, Tuple[str, float]] = {}

    def _sweep_streams(self, now: float) -> None:
        for name, stream in list(self._streams.items()):
            if stream.expires_at <= now:
                self._drop_stream(name, stream)
        for name, (_, expires) in list(self._leases.items()):
            if expires <= now:
                del self._leases[name]

    # -- streams ------------------------------------------------------------

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
        return self._append(stream, entries, dedupe_key, dedupe_ttl, guard)

    def _append(
        self, stream: str, entries: Sequence[NewEntry], dedupe_key: Optional[str], dedupe_ttl: float, guard: Optional[Guard]
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
        bound = key_of(after) if after is not None else None
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
        return kept.after(bound, limit)

    async def sink_position(self, stream: str, sink: str) -> Optional[str]:
        kept = self._live_stream(stream)
        pointer = kept.sinks.get(sink) if kept is not None else None
        return id_of(pointer) if pointer is not None else None

    async def advance_sink(self, stream: str, sink: str, entry_id: str) -> bool:
        return self._advance(stream, sink, key_of(entry_id))

    def _advance(self, stream: str, sink: str, key: EntryKey) -> bool:
        kept = self._live_stream(stream) or self._new_stream(stream)
        current = kept.sinks.get(sink)
        if current is not None and key <= current:
            return False
        kept.sinks[sink] = key
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
        self._unregister(name)

    def _unregister(self, name: str) -> None:
        self._lease_jobs.pop(name, None)
        self._leases.pop(name, None)

    def _hold(self, name: str, owner: str, ttl: float) -> None:
        expires = self._clock() + ttl
        self._leases[name] = (owner, expires)
        if name in self._lease_jobs:
            self._lease_jobs[name] = expires

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return self._acquire(name, owner, ttl)

    def _acquire(self, name: str, owner: str, ttl: float) -> bool:
        self._sweep()
        holder = self._holder(name)
        if holder is not None and holder != owner:
            return False
        self._hold(name, owner, ttl)
        return True

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        return self._renew(name, owner, ttl)

    def _renew(self, name: str, owner: str, ttl: float) -> bool:
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

    # -- a job's steps, each one step (Store's docstrings say what they do) --

    async def take_job(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        return self._take(lease, owner, ttl, stream, sink, limit)

    def _take(self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int) -> Optional[Taken]:
        # Registered first, so that a lease taken here shows as held, not free.
        self._lease_jobs.setdefault(lease, 0.0)
        if not self._acquire(lease, owner, ttl):
            return None
        kept = self._live_stream(stream)
        if kept is None:
            return None, []
        pointer = kept.sinks.get(sink)
        return (id_of(pointer) if pointer is not None else None), kept.after(pointer, limit)

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
        stored = self._append(stream, entries, dedupe_key, dedupe_ttl, guard)
        if stored is None:
            return None
        return stored, self._take(lease, owner, ttl, stream, sink, limit)

    async def advance_and_next(
        self, stream: str, sink: str, entry_id: str, lease: str, owner: str, ttl: float, limit: int = 100, *, let_go: bool = False
    ) -> Tuple[bool, Optional[List[OutboxEntry]]]:
        check_let_go(let_go, limit)
        key = key_of(entry_id)
        if not self._advance(stream, sink, key):
            return False, None
        if not self._renew(lease, owner, ttl):
            return True, None
        after = self._entries_after(stream, key, limit) if limit > 0 else []
        if let_go and not after:
            self._unregister(lease)
        return True, after

    async def let_go(
        self, lease: str, owner: str, ttl: float, stream: str, sink: str, limit: int = 100
    ) -> Optional[Taken]:
        taken = self._take(lease, owner, ttl, stream, sink, limit)
        if taken is None or taken[1]:
            return taken
        self._unregister(lease)
        return None
