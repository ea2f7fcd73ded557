"""Small, bounded limiters for what anonymous callers can make the connector do."""

import time
from collections import OrderedDict
from typing import Callable, List

#: Conversations whose recent starts are remembered. Beyond it the least
#: recently active is forgotten; by then ``max_live_chats`` is the guard.
RATE_LIMITER_CAPACITY = 10_000


class RateLimiter:
    """At most ``limit`` events per key in any ``window`` seconds (0: no limit).

    Memory is bounded twice: by ``capacity`` keys, and by dropping keys whose
    events all left the window as later calls pass by.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        capacity: int = RATE_LIMITER_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._events: "OrderedDict[str, List[float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def allow(self, key: str) -> bool:
        """Count one event for ``key`` unless that would exceed the limit."""
        if self.limit <= 0:
            return True
        now = self._clock()
        horizon = now - self.window
        self._forget_expired(horizon)
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = []
        else:
            events[:] = [moment for moment in events if moment > horizon]
            self._events.move_to_end(key)
        if len(events) >= self.limit:
            return False
        events.append(now)
        while len(self._events) > self.capacity:
            self._events.popitem(last=False)
        return True

    def _forget_expired(self, horizon: float, at_most: int = 8) -> None:
        # The least recently used keys come first; a few per call keep the
        # cost flat while idle keys still drain away.
        for _ in range(at_most):
            if not self._events:
                return
            key, events = next(iter(self._events.items()))
            if events and events[-1] > horizon:
                return
            del self._events[key]
