"""The one way a sink reads the outbox: a ``Subscription`` reads one
conversation's stream from a start point on, and moves the sink's
delivered-up-to pointer past what the sink took, reporting each entry it was
the first to take. How many may be open is counted by ``capacity.py``."""

import logging
from typing import Callable, List, Optional, Sequence

from connectors.servicenow.outbox.base import OnTaken
from connectors.servicenow.store import OutboxEntry, Store
from connectors.servicenow.store.keys import stream_of

logger = logging.getLogger(__name__)


class Subscription:
    """Reads a conversation's stream for ``sink``; ``close`` when done (once
    is enough, twice is harmless)."""

    def __init__(
        self,
        store: Store,
        recipient_id: str,
        sink: str,
        *,
        on_taken: Optional[OnTaken],
        on_close: Callable[[], None],
    ) -> None:
        self._store = store
        self.recipient_id = recipient_id
        self._stream = stream_of(recipient_id)
        self._sink = sink
        self._on_taken = on_taken
        self._on_close = on_close
        self._after: Optional[str] = None
        self._started = False
        self._closed = False

    async def start_point(self) -> Optional[str]:
        """The entry after which this subscription starts: by default, after what the sink took."""
        return await self._store.sink_position(self._stream, self._sink)

    async def read(self, block: float) -> List[OutboxEntry]:
        """The next entries, waiting up to ``block`` seconds for one ([] if
        none came). ``StoreUnavailable`` when the store fails."""
        if not self._started:
            self._after = await self.start_point()
            self._started = True
        entries = await self._store.read(self._stream, self._after, block=block)
        if entries:
            self._after = entries[-1].entry_id
        return entries

    async def take(self, entries: Sequence[OutboxEntry]) -> bool:
        """The sink took ``entries``: move its pointer past them. True when
        this call moved it past the last one (another reader of the same sink
        may have got there first)."""
        if not entries:
            return False
        if self._on_taken is None:
            return await self._store.advance_sink(self._stream, self._sink, entries[-1].entry_id)
        moved = False
        # Entry by entry, so each is reported by the one reader that took it first.
        for entry in entries:
            moved = await self._store.advance_sink(self._stream, self._sink, entry.entry_id)
            if moved:
                self._on_taken(self.recipient_id, entry, True)
        return moved

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()
