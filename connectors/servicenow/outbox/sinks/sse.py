"""The Server-Sent Events sink: one ``StreamSubscription`` per open
``GET /stream``. Its pointer (``stream``) says what some stream has taken: a
stream that comes without an event id of this conversation starts after it,
so nothing is shown twice, and one that comes with an id the conversation's
stream still holds resumes exactly after it, on any replica."""

from collections import deque
from typing import Callable, Deque, Optional

from connectors.servicenow.outbox.base import RETAINED_PER_USER, OnTaken, OutboundItem, item_of
from connectors.servicenow.outbox.subscription import Subscription
from connectors.servicenow.store import Store, is_entry_id
from connectors.servicenow.store.keys import STREAM_SINK


class StreamSubscription(Subscription):
    """Not an async generator on purpose: a dropped connection cancels the
    handler, and ``close()`` in its ``finally`` must unregister at once
    rather than whenever the generator is collected."""

    def __init__(
        self,
        store: Store,
        recipient_id: str,
        last_event_id: Optional[str],
        *,
        on_taken: Optional[OnTaken],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(store, recipient_id, STREAM_SINK, on_taken=on_taken, on_close=on_close)
        self._last_event_id = last_event_id
        self._ready: Deque[OutboundItem] = deque()

    async def start_point(self) -> Optional[str]:
        """An id counts only when it is an entry this conversation's stream
        still holds: an id of another conversation, a made-up one (even one
        later than every entry), a trimmed one or one from before a restart
        of a store that forgets says nothing here, and the stream starts
        after what streams have taken already."""
        if is_entry_id(self._last_event_id):
            kept = await self._store.read(self._stream, None, limit=RETAINED_PER_USER)
            if any(entry.entry_id == self._last_event_id for entry in kept):
                return self._last_event_id
        return await super().start_point()

    async def next(self, heartbeat: float) -> Optional[OutboundItem]:
        """The next item, or None when ``heartbeat`` seconds pass without
        one. ``StoreUnavailable`` when the store fails: the client
        reconnects with its ``Last-Event-ID`` and misses nothing."""
        if self._ready:
            return self._ready.popleft()
        entries = await self.read(heartbeat)
        if not entries:
            return None
        # "Taken by a stream": later streams without an id start after it.
        await self.take(entries)
        self._ready.extend(item_of(entry) for entry in entries)
        return self._ready.popleft()
