"""The outbox as a socket.io session sees it: one reader per session on the
replica that holds the session's socket(s), emitting what the session has
not been shown yet, with a delivered-up-to pointer of its own.

"Delivered" means a connected socket of the session took the item: the
reader emits it to this replica's sockets of the session and only then moves
the pointer. Items put while no socket is connected (a page reload, a
dropped connection) stay after the pointer and are emitted once when the
session comes back (``session_request`` with its id), on whichever replica.

* In one process (no ``redis_url``) the pointer is kept here, and the
  in-process outbox's ``subscribe`` resumes after it.
* With the shared store the pointer is the outbox stream's ``socketio``
  sink, so a session that reconnects to another replica resumes there;
  readers on two replicas (two tabs of one session) each emit to their own
  sockets, and the pointer moves once per entry.
"""

import asyncio
import logging
from collections import OrderedDict
from typing import Awaitable, Callable, Optional, Union

from connectors.servicenow.delivery import OutboundItem, Outbox, StreamLimitReached
from connectors.servicenow.shared_delivery import SharedOutbox, stream_of
from connectors.servicenow.store import OutboxEntry, StoreUnavailable

logger = logging.getLogger(__name__)

#: The sink name of socket.io sessions in the shared outbox.
SOCKET_SINK = "socketio"
#: How long a read waits before looking again whether the reader should go on.
READ_BLOCK_S = 15.0
#: Pauses between attempts while the store is down (the socket stays connected).
STORE_RETRY_S = (0.5, 1.0, 2.0, 5.0)
#: Sessions whose pointer this process remembers (no ``redis_url``).
POINTERS_KEPT = 10000

#: Emits one item to this replica's sockets of a session; False when none is connected.
Emit = Callable[[OutboundItem], Awaitable[bool]]


class SessionPointers:
    """The in-process pointers: session -> event id of the last item a socket took."""

    def __init__(self, kept: int = POINTERS_KEPT) -> None:
        self._kept = kept
        self._pointers: "OrderedDict[str, str]" = OrderedDict()

    def get(self, session_id: str) -> Optional[str]:
        return self._pointers.get(session_id)

    def set(self, session_id: str, event_id: str) -> None:
        self._pointers[session_id] = event_id
        self._pointers.move_to_end(session_id)
        while len(self._pointers) > self._kept:
            self._pointers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pointers)


class SessionReader:
    """Reads one session's outbox and emits each item to its sockets here,
    until cancelled (its last socket on this replica disconnected)."""

    def __init__(
        self, outbox: Union[Outbox, SharedOutbox], session_id: str, emit: Emit, pointers: SessionPointers
    ) -> None:
        self.outbox = outbox
        self.session_id = session_id
        self._emit = emit
        self._pointers = pointers
        #: Set once the reader has caught up with what was waiting (tests, logs).
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        if isinstance(self.outbox, SharedOutbox):
            await self._run_shared(self.outbox)
        else:
            await self._run_local(self.outbox)

    async def _run_local(self, outbox: Outbox) -> None:
        try:
            pointer = self._pointers.get(self.session_id)
            # No pointer: this session took nothing yet, so nothing kept was shown to it.
            subscription = outbox.subscribe(self.session_id, pointer, from_start=pointer is None)
        except StreamLimitReached as limit:
            logger.warning("No outbox reader for socket.io session %s: %s.", self.session_id, limit)
            return
        try:
            while True:
                if subscription.queue.empty():
                    self.caught_up.set()
                item = await subscription.next(READ_BLOCK_S)
                if item is None:
                    continue
                if not await asyncio.shield(self._take_local(item)):
                    return
        finally:
            subscription.close()

    async def _take_local(self, item: OutboundItem) -> bool:
        # Shielded: a disconnect that cancels the reader between the emit
        # and the pointer would show the item again after the reload.
        if not await self._emit(item):
            return False
        self._pointers.set(self.session_id, item.event_id)
        return True

    async def _run_shared(self, outbox: SharedOutbox) -> None:
        store, stream = outbox.store, stream_of(self.session_id)
        after: Optional[str] = None
        started = False
        attempt = 0
        while True:
            try:
                if not started:
                    after = await store.sink_position(stream, SOCKET_SINK)
                    started = True
                entries = await store.read(stream, after, block=0.0 if not self.caught_up.is_set() else READ_BLOCK_S)
                attempt = 0
            except StoreUnavailable as error:
                logger.warning("The socket.io reader of session %s waits for the store: %s", self.session_id, error)
                await asyncio.sleep(STORE_RETRY_S[min(attempt, len(STORE_RETRY_S) - 1)])
                attempt += 1
                continue
            if not entries:
                self.caught_up.set()
                continue
            for entry in entries:
                taken = await asyncio.shield(self._take_shared(outbox, entry))
                if taken is None:
                    return
                after = entry.entry_id

    async def _take_shared(self, outbox: SharedOutbox, entry: OutboxEntry) -> Optional[bool]:
        """None when no socket took the entry (the reader stops)."""
        item = OutboundItem(entry.entry_id, entry.kind, entry.payload, entry.to_callback)
        if not await self._emit(item):
            return None
        try:
            moved = await outbox.store.advance_sink(stream_of(self.session_id), SOCKET_SINK, entry.entry_id)
        except StoreUnavailable as error:
            # Shown here, but another replica's reader may show it again: at least once.
            logger.warning("Could not record what socket.io session %s was shown: %s", self.session_id, error)
            return False
        if moved and outbox.on_taken is not None and not outbox.callback_url:
            outbox.on_taken(self.session_id, entry, True)
        return moved
