"""Counted capacity in the process (``MemoryStore``): the slots of open
streams and sockets, and the admission of handoff starts, with the semantics
of the Redis store's (``redis_counts.py``), expiry included, so the core runs
the same code on both."""

import itertools
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from connectors.servicenow.store.base import (
    REFUSED_BUSY,
    REFUSED_DEPLOYMENT_RATE,
    REFUSED_SENDER_RATE,
    Cap,
    HandoffRecord,
    StartLimits,
)


class MemoryCounts:
    """Mixed into ``MemoryStore``, which gives ``_clock`` and ``_handoffs``
    and calls ``_filed`` when it files a record."""

    _clock: Callable[[], float]
    _handoffs: Dict[str, HandoffRecord]

    def _counts(self) -> "_Counts":
        counts: Optional[_Counts] = getattr(self, "_counted", None)
        if counts is None:
            counts = self._counted = _Counts()
        return counts

    async def take_slot(self, holder: str, caps: Sequence[Cap], ttl: float) -> Optional[Cap]:
        now, slots = self._clock(), self._counts().slots
        for cap in caps:
            held = slots.get(cap.name, {})
            if cap.limit and holder not in held and len(held) >= cap.limit:
                # Expired slots are dropped only when they would decide.
                for name in [name for name, expires in held.items() if expires <= now]:
                    del held[name]
                if len(held) >= cap.limit:
                    return cap
        for cap in caps:
            slots.setdefault(cap.name, {})[holder] = now + ttl
        return None

    async def renew_slots(self, held: Mapping[str, Sequence[str]], ttl: float) -> None:
        expires, slots = self._clock() + ttl, self._counts().slots
        for holder, names in held.items():
            for name in names:
                slots.setdefault(name, {})[holder] = expires

    async def release_slot(self, holder: str, names: Sequence[str]) -> None:
        slots = self._counts().slots
        for name in names:
            held = slots.get(name)
            if held is not None:
                held.pop(holder, None)
                if not held:
                    del slots[name]

    async def count_slots(self, names: Sequence[str]) -> List[int]:
        now, slots = self._clock(), self._counts().slots
        return [sum(1 for expires in slots.get(name, {}).values() if expires > now) for name in names]

    async def admit_handoff(self, sender_id: str, limits: StartLimits) -> Optional[str]:
        now, counts = self._clock(), self._counts()
        places = counts.places
        for name in [name for name, expires in places.items() if expires <= now]:
            del places[name]
        if limits.max_live:
            live = len(self._handoffs) + len(places) - (1 if sender_id in places else 0)
            if live >= limits.max_live:
                return REFUSED_BUSY
        starts = counts.starts.get(sender_id)
        if starts is not None:
            stale = 0
            while stale < len(starts) and starts[stale] <= now - limits.window_s:
                stale += 1
            del starts[:stale]
        if limits.per_sender and starts is not None and len(starts) >= limits.per_sender:
            return REFUSED_SENDER_RATE
        arrival = max(counts.theoretical_arrival, now) + limits.interval_s
        if limits.interval_s and arrival - now > limits.burst * limits.interval_s:
            return REFUSED_DEPLOYMENT_RATE
        counts.theoretical_arrival = arrival
        counts.forget_idle_senders(now - limits.window_s)
        if limits.per_sender:
            counts.starts.setdefault(sender_id, []).append(now)
        places[sender_id] = now + limits.hold_s
        return None

    async def release_admission(self, sender_id: str) -> None:
        self._counts().places.pop(sender_id, None)

    async def live_handoff_count(self) -> int:
        now, places = self._clock(), self._counts().places
        return len(self._handoffs) + sum(1 for sender, expires in places.items() if expires > now and sender not in self._handoffs)

    def _filed(self, sender_id: str) -> None:
        """A record was filed: the start's place is the record's now."""
        self._counts().places.pop(sender_id, None)


class _Counts:
    def __init__(self) -> None:
        #: Cap name -> holder -> expiry.
        self.slots: Dict[str, Dict[str, float]] = {}
        #: Admitted starts without a record yet: sender -> expiry of the place.
        self.places: Dict[str, float] = {}
        #: Each conversation's recent starts (only admitted starts are kept,
        #: so the deployment's rate bounds how many there are). Lists, not
        #: deques: a handful of times each, and an empty deque is 624 bytes.
        self.starts: Dict[str, List[float]] = {}
        self.theoretical_arrival = 0.0

    def forget_idle_senders(self, horizon: float, at_most: int = 8) -> None:
        # The oldest first (dicts keep insertion order): a few per call keep the cost flat.
        for sender in list(itertools.islice(self.starts, at_most)):
            starts = self.starts[sender]
            if not starts or starts[-1] <= horizon:
                del self.starts[sender]
