"""The socket.io sink: one ``SessionReader`` per session on the replica that
holds the session's socket(s), emitting what the session has not been shown
yet. Its pointer (``socketio``) says what a socket of the session took.

"Delivered" means a connected socket of the session took the item: the
reader emits it to this replica's sockets of the session and only then moves
the pointer. Items put while no socket is connected (a page reload, a
dropped connection) stay after the pointer and are emitted once when the
session comes back (``session_request`` with its id), on whichever replica
holds the store's pointer. Readers on two replicas (two tabs of one session)
each emit to their own sockets, and the pointer moves once per entry.
"""

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from connectors.servicenow.outbox.base import OnTaken, OutboundItem, item_of
from connectors.servicenow.outbox.subscription import Subscription
from connectors.servicenow.retry import STORE_WAIT
from connectors.servicenow.store import OutboxEntry, Store, StoreUnavailable
from connectors.servicenow.store.keys import SOCKET_SINK

logger = logging.getLogger(__name__)

#: How long a read waits before looking again whether the reader should go on.
READ_BLOCK_S = 15.0

#: Emits one item to this replica's sockets of a session; False when none is connected.
Emit = Callable[[OutboundItem], Awaitable[bool]]


class SessionReader(Subscription):
    """Reads one session's outbox and emits each item to its sockets here,
    until cancelled (its last socket on this replica disconnected) or no
    socket takes an item."""

    def __init__(
        self,
        store: Store,
        session_id: str,
        emit: Emit,
        *,
        on_taken: Optional[OnTaken],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(store, session_id, SOCKET_SINK, on_taken=on_taken, on_close=on_close)
        self.session_id = session_id
        self._emit = emit
        #: Set once the reader has caught up with what was waiting (tests, logs).
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.close()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                entries = await self.read(0.0 if not self.caught_up.is_set() else READ_BLOCK_S)
                attempt = 0
            except StoreUnavailable as error:
                logger.warning("The socket.io reader of session %s waits for the store: %s", self.session_id, error)
                await STORE_WAIT.sleep(attempt)
                attempt += 1
                continue
            if not entries:
                self.caught_up.set()
                continue
            for entry in entries:
                # Shielded: a disconnect that cancels the reader between the
                # emit and the pointer would show the item again after a reload.
                if not await asyncio.shield(self._show(entry)):
                    return

    async def _show(self, entry: OutboxEntry) -> bool:
        """False when no socket took the entry (the reader stops)."""
        if not await self._emit(item_of(entry)):
            return False
        try:
            await self.take([entry])
        except StoreUnavailable as error:
            # Shown here, but another replica's reader may show it again: at least once.
            logger.warning("Could not record what socket.io session %s was shown: %s", self.session_id, error)
        return True
