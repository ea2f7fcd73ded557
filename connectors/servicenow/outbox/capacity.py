"""Open streams and socket.io sockets, counted for the whole deployment.

Every ``GET /stream`` and every socket.io socket holds a slot in the store
from the moment it is accepted until it closes, counted in three caps:

* the deployment's ``max_open_streams`` (``streams``);
* the client's ``max_streams_per_client``: its address, as Sanic reads it
  (behind a proxy, the address the proxy reports: ``PROXIES_COUNT``,
  ``REAL_IP_HEADER``), so one client cannot use up the deployment;
* the conversation's ``max_streams_per_sender``: its tabs (a socket.io socket
  counts there once it has its session).

A stream or socket beyond a cap is refused before anything is set up for it
(``StreamLimitReached``: 429/503 for a stream, a refused connection for a
socket). A socket.io session's outbox reader belongs to its sockets, so
sessions and their readers are bounded by the same slots.

With ``redis_url`` the counts are the deployment's, in Redis; each slot
expires ``SLOT_TTL_S`` after its replica last renewed it (every
``RENEW_EVERY_S``), so the slots of a replica that died are not counted
for long. Without it, the memory store counts the same way in the process.
"""

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from connectors.servicenow.outbox.base import IN_TOTAL, PER_CLIENT, PER_SENDER, StreamLimitReached
from connectors.servicenow.store import Cap, Store, StoreUnavailable
from connectors.servicenow.store.keys import STREAMS_CAP, streams_of_client, streams_of_sender
from connectors.servicenow.tasks import TaskSet

logger = logging.getLogger(__name__)

#: How long a slot counts after its replica last renewed it.
SLOT_TTL_S = 60.0
#: How often a replica renews its slots: three times per ``SLOT_TTL_S``, so
#: one missed renewal (a slow store) drops nothing.
RENEW_EVERY_S = SLOT_TTL_S / 3
#: The kinds of slot, for the health route and the metrics.
SSE, SOCKETIO = "sse", "socketio"


@dataclass
class Slot:
    """One open stream or socket, as counted in the store."""

    holder: str
    kind: str
    names: List[str] = field(default_factory=list)
    sender: Optional[str] = None


class StreamCapacity:
    def __init__(
        self, store: Store, owner: str, *, per_sender: int, per_client: int, total: int, ttl: float = SLOT_TTL_S
    ) -> None:
        self._store = store
        self._owner = owner
        self.per_sender = per_sender
        self.per_client = per_client
        self.total = total
        self._ttl = ttl
        self._held: Dict[str, Slot] = {}
        self._releases = TaskSet()
        #: Slots held on this replica, by kind.
        self.open_by_kind: "Counter[str]" = Counter()

    @property
    def open(self) -> int:
        """Streams and sockets open on this replica."""
        return len(self._held)

    @property
    def conversations(self) -> Set[str]:
        return {slot.sender for slot in self._held.values() if slot.sender is not None}

    async def open_slot(self, kind: str, *, client: str, sender: Optional[str] = None) -> Slot:
        """A slot for a new stream or socket of ``client`` (and conversation
        ``sender`` when known). ``StreamLimitReached`` beyond a cap, with
        nothing counted; ``StoreUnavailable`` when the store cannot count."""
        if len(self._releases):
            # A stream that just closed is counted out before the next is counted in.
            await self._releases.wait(self._ttl)
        slot = Slot(f"{self._owner}:{uuid.uuid4().hex}", kind)
        caps = [Cap(STREAMS_CAP, self.total), Cap(streams_of_client(client), self.per_client)]
        if sender is not None:
            caps.append(Cap(streams_of_sender(sender), self.per_sender))
        await self._take(slot, caps)
        slot.sender = sender
        self._held[slot.holder] = slot
        self.open_by_kind[kind] += 1
        return slot

    async def join(self, slot: Slot, sender: str) -> None:
        """The slot's socket now speaks for ``sender`` (its session): counted
        against that conversation's cap too. ``StreamLimitReached`` when full."""
        if slot.sender == sender:
            return
        if slot.sender is not None:
            previous = streams_of_sender(slot.sender)
            slot.names.remove(previous)
            slot.sender = None
            await self._release(slot.holder, [previous])
        await self._take(slot, [Cap(streams_of_sender(sender), self.per_sender)])
        slot.sender = sender

    async def _take(self, slot: Slot, caps: List[Cap]) -> None:
        full = await self._store.take_slot(slot.holder, caps, self._ttl)
        if full is not None:
            scope = IN_TOTAL if full.name == STREAMS_CAP else PER_SENDER if full.name.startswith(f"{STREAMS_CAP}:s:") else PER_CLIENT
            raise StreamLimitReached(scope, full.limit)
        slot.names.extend(cap.name for cap in caps)

    def close(self, slot: Slot) -> None:
        """The stream or socket closed (once is enough, twice is harmless).
        Counted out here at once; in the store as soon as it answers."""
        if self._held.pop(slot.holder, None) is None:
            return
        self.open_by_kind[slot.kind] -= 1
        self._releases.spawn(self._release(slot.holder, list(slot.names)))

    async def _release(self, holder: str, names: List[str]) -> None:
        try:
            await self._store.release_slot(holder, names)
        except StoreUnavailable as error:
            # It expires with its ttl: the renewals stopped with the close.
            logger.warning("Could not count a closed stream out of the store (it expires): %s", error)

    async def renew_forever(self) -> None:
        """Keep this replica's slots counted (the core runs it)."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            held = {holder: list(slot.names) for holder, slot in self._held.items()}
            try:
                await self._store.renew_slots(held, self._ttl)
            except StoreUnavailable as error:
                logger.warning("Could not renew the count of %d open stream(s): %s", len(held), error)

    async def release_all(self, timeout: float) -> None:
        """Count this replica's streams and sockets out (a graceful stop), so
        that the deployment's counts need not wait for their expiry."""
        held = list(self._held.values())
        for slot in held:
            self.close(slot)
        await self._releases.wait(timeout)
