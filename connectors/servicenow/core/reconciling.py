"""When Virtual Agent chats are read back (reconcile.py does one read): one
loop per replica for all the chats it watches, each read once per
``reconcile_interval`` under its lease (``poll:<chat id>``, as a polled
Connect chat), at once when this replica takes a chat up (a start, a
takeover), and soon after a push of it was refused.

One loop and a schedule, not a task per chat: a waiting task costs about
5 KB, as much again as the rest of a live Virtual Agent chat. The ticks that
are due run side by side, at most ``CONCURRENCY`` at a time; each keeps its
chat's cadence (planned from when it was due, not from when it ran).

A tick that finds the lease held by another replica stops watching the chat
here; one that cannot reach the store or ServiceNow tries at the next tick.
A failure never ends a chat: its pushes still arrive.
"""

import asyncio
import heapq
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.intake import Dispatcher
from connectors.servicenow.core.reconcile import STATE_EVERY, Reconciler
from connectors.servicenow.core.records import lease_time
from connectors.servicenow.errors import ServiceNowError, StoreUnavailable
from connectors.servicenow.servicenow.va_records import NoReadAccess
from connectors.servicenow.store import Store
from connectors.servicenow.store.keys import poll_lease
from connectors.servicenow.tasks import TaskSet, event_within

logger = logging.getLogger(__name__)

#: Ticks running at once: enough for 10,000 chats at 60 s (167 a second) with a read of 100 ms.
CONCURRENCY = 32
#: How soon a chat whose push was refused is read (the store that refused it may need a moment).
SOON_S = 1.0

OnCursor = Callable[[LiveChat], Awaitable[Any]]


@dataclass(eq=False, slots=True)
class _Watch:
    chat: LiveChat
    due: float
    ticks: int = 0
    running: bool = False
    #: A failed read of this chat was logged (said once until a read works).
    said_failure: bool = False


class ReconcileLoop:
    def __init__(
        self,
        reconciler: Reconciler,
        store: Store,
        dispatcher: Dispatcher,
        work: TaskSet,
        *,
        owner: str,
        interval: float,
        on_cursor: OnCursor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reconciler = reconciler
        self._store = store
        self._dispatcher = dispatcher
        self._work = work
        self.owner = owner
        self._interval = interval
        self._on_cursor = on_cursor
        self._clock = clock
        self._watches: Dict[str, _Watch] = {}
        self._due: List[Tuple[float, int, str]] = []
        self._order = 0
        self._wake = asyncio.Event()
        self._ticks = TaskSet()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._loop: "Optional[asyncio.Task[None]]" = None

    @property
    def watched(self) -> int:
        return len(self._watches)

    def watch(self, chat: LiveChat, *, catch_up: bool = True) -> None:
        """Read ``chat`` every interval from now on (at once with ``catch_up``). Idempotent."""
        current = self._watches.get(chat.chat_id)
        if chat.ended or (current is not None and current.chat is chat):
            return
        now = self._clock()
        self._schedule(_Watch(chat, now if catch_up else now + self._interval))
        if self._loop is None or self._loop.done():
            self._loop = asyncio.ensure_future(self._run())
            self._loop.set_name("servicenow-reconcile")

    def is_watching(self, chat: LiveChat) -> bool:
        watch = self._watches.get(chat.chat_id)
        return watch is not None and watch.chat is chat and not chat.ended

    def soon(self, chat_id: str) -> bool:
        """Read the chat within ``SOON_S``, not at its next tick; False when
        this replica does not watch it."""
        watch = self._watches.get(chat_id)
        if watch is None:
            return False
        when = self._clock() + SOON_S
        if when < watch.due:
            watch.due = when
            self._push(watch)
        return True

    async def stop(self, timeout: float) -> List[LiveChat]:
        """Stop reading; the chats watched here, whose leases the caller gives up."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.wait([self._loop], timeout=timeout)
        await self._ticks.wait(timeout)
        chats = [watch.chat for watch in self._watches.values()]
        self._watches.clear()
        self._due.clear()
        return chats

    # -- the schedule ------------------------------------------------------------

    def _schedule(self, watch: _Watch) -> None:
        self._watches[watch.chat.chat_id] = watch
        self._push(watch)

    def _push(self, watch: _Watch) -> None:
        self._order += 1
        heapq.heappush(self._due, (watch.due, self._order, watch.chat.chat_id))
        if self._due[0][1] == self._order:
            self._wake.set()  # the new first one: the loop's wait may be too long

    def _next_due(self) -> Optional[_Watch]:
        """The watch that is due first, skipping entries left by a reschedule or a forgotten chat."""
        while self._due:
            due, _, chat_id = self._due[0]
            watch = self._watches.get(chat_id)
            if watch is None or watch.due != due:
                heapq.heappop(self._due)
                continue
            return watch
        return None

    async def _run(self) -> None:
        while self._watches:
            watch = self._next_due()
            wait = None if watch is None else watch.due - self._clock()
            if watch is not None and wait is not None and wait <= 0:
                heapq.heappop(self._due)
                if watch.running:
                    watch.due += self._interval
                    self._push(watch)
                    continue
                await self._slots.acquire()
                watch.running = True
                self._ticks.spawn(self._tick(watch))
                continue
            self._wake.clear()
            await event_within(self._wake, wait)

    # -- one tick ------------------------------------------------------------------

    async def _tick(self, watch: _Watch) -> None:
        chat = watch.chat
        try:
            held = None if chat.ended else await self._hold_lease(watch)
            if chat.ended or held is False:
                self._forget(watch)
                return
            if held:
                watch.ticks += 1
                await self._read(watch, state_only=watch.ticks % STATE_EVERY == 0)
        except Exception:
            logger.exception("Unexpected error while reading ServiceNow's record of chat %s; trying again.", chat.chat_id)
        finally:
            watch.running = False
            self._slots.release()
        if chat.ended:
            self._forget(watch)
        elif self._watches.get(chat.chat_id) is watch:
            # The cadence holds: planned from when the tick was due, unless that is more than an interval behind.
            now = self._clock()
            watch.due = watch.due + self._interval if now - watch.due < self._interval else now + self._interval
            self._push(watch)

    async def _hold_lease(self, watch: _Watch) -> Optional[bool]:
        """Take or renew the chat's lease: False when another replica holds
        it, None when the store cannot say (this tick is skipped; nobody else
        can take the lease meanwhile either)."""
        name = poll_lease(watch.chat.chat_id)
        try:
            if await self._store.acquire_lease(name, self.owner, lease_time(self._interval)):
                return True
        except StoreUnavailable as error:
            logger.warning("Not reading ServiceNow's record of chat %s this time: %s", watch.chat.chat_id, error)
            return None
        logger.debug("ServiceNow chat %s is read by another replica.", watch.chat.chat_id)
        return False

    async def _read(self, watch: _Watch, *, state_only: bool) -> None:
        chat = watch.chat
        if not self._reconciler.readable():
            return
        before = chat.records
        try:
            found = await self._reconciler.read(chat, state_only=state_only)
        except NoReadAccess:
            return  # said once by the reader
        except ServiceNowError as error:
            if not watch.said_failure:
                watch.said_failure = True
                logger.warning("Could not read ServiceNow's record of chat %s (tried again every %.0f s): %s",
                               chat.chat_id, self._interval, error)
            return
        watch.said_failure = False
        if found.events or found.cursor != before:
            delivery = self._dispatcher.dispatch(chat, found.events, records=found.cursor, recovered=found.recovered)
            try:
                # In a task of its own: a shutdown must not cut a delivery off half-way.
                await self._work.run_to_end(delivery)
            except StoreUnavailable as error:
                # Nothing stored, the cursor stays: the next tick delivers it.
                logger.warning("Could not store what ServiceNow's record of chat %s holds: %s", chat.chat_id, error)
                return
        if not chat.ended and chat.records != before:
            await self._on_cursor(chat)

    def _forget(self, watch: _Watch) -> None:
        if self._watches.get(watch.chat.chat_id) is watch:
            del self._watches[watch.chat.chat_id]

