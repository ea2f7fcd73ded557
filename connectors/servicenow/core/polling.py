"""Polling Connect chats: one loop per live chat, fast while the chat is
active, slower once it has been quiet for a while, with a periodic check of
the session state in place of a poll. What a poll finds goes through the
same path as a push (intake.py). Virtual Agent chats, which ServiceNow
pushes, are watched too when they are reconciled: by one loop for all of
them (reconciling.py), under the same leases.

A chat is polled by one replica at a time, under its lease (store/keys.py
``poll:<chat id>``): a loop that finds the lease held elsewhere stops, and a
replica that stops releases its leases so another takes its chats over at
once (``Chats.take_over_free_chats``); one that dies is replaced once they
expire. The lease is short (two intervals) so that a dead poller is replaced
soon, and renewed every interval while a poll is under way, which can take
much longer (``request_timeout`` and retries); what a poll found is stored
only if its poller still holds the lease then (the append's guard), so a
poller that lost it to another replica delivers nothing of its late poll.
"""

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.intake import Dispatcher
from connectors.servicenow.core.reconciling import ReconcileLoop
from connectors.servicenow.core.records import lease_time
from connectors.servicenow.errors import ServiceNowError, StoreUnavailable
from connectors.servicenow.servicenow.base import Backend, PollResult
from connectors.servicenow.store import LeaseLost, Store
from connectors.servicenow.store.keys import poll_lease
from connectors.servicenow.tasks import TaskSet, Wake

logger = logging.getLogger(__name__)

#: Polling keeps failing: the chat ends as failed.
OnFailed = Callable[[LiveChat, ServiceNowError], Awaitable[Any]]
#: The cursor moved: the replica that takes over polling starts from here.
OnCursor = Callable[[LiveChat], Awaitable[Any]]


class PollSchedule:
    """When a chat is polled next, and whether that tick checks the session
    state instead. One ServiceNow request per tick keeps the request rate at
    ``1 / poll_interval`` for an active chat and ``1 / idle_poll_interval``
    for a quiet one.

    The state check stands in for a poll only once the chat has been quiet
    for ``session_check_interval``: while messages flow the system messages
    announce the end anyway, and a skipped poll would delay the next reply
    by a whole interval."""

    def __init__(self, settings: ServiceNowSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._last_activity = clock()
        self._last_state_check = self._last_activity

    def note_activity(self) -> None:
        self._last_activity = self._clock()

    def is_active(self) -> bool:
        return self._clock() - self._last_activity < self._settings.idle_after

    def delay(self) -> float:
        return self._settings.poll_interval if self.is_active() else self._settings.idle_poll_interval

    def state_check_due(self) -> bool:
        now = self._clock()
        interval = self._settings.session_check_interval
        if now - self._last_activity < interval or now - self._last_state_check < interval:
            return False
        self._last_state_check = now
        return True


class _Poller:
    def __init__(self, schedule: PollSchedule, chat: LiveChat) -> None:
        self.schedule = schedule
        self.chat = chat
        self.wake = Wake()
        self._last_tick = time.monotonic()

    async def sleep(self) -> None:
        """Wait for the next tick.

        Ticks keep their cadence: the poll's own time counts towards the
        interval, and the next tick is planned from when this one was due,
        not from when a busy event loop got round to it, so a chat is polled
        exactly once per interval on average instead of drifting later with
        every late wake-up. Activity cuts an idle wait short."""
        while True:
            self.wake.clear()
            remaining = self.schedule.delay() - (time.monotonic() - self._last_tick)
            if remaining <= 0:
                break
            if not await self.wake.wait(remaining):
                break
            if self.wake.is_set():
                self._last_tick = time.monotonic()
                return
        self._last_tick = next_tick(self._last_tick, self.schedule.delay(), time.monotonic())


def next_tick(previous: float, interval: float, now: float) -> float:
    """When the tick that is starting now was due: one interval after the
    previous one, or now when a stall (or a change of interval) left that
    more than an interval behind, so missed ticks are not made up in a burst."""
    due = previous + interval
    return due if now - due < interval else now


class Polling:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        store: Store,
        dispatcher: Dispatcher,
        work: TaskSet,
        *,
        owner: str,
        on_failed: OnFailed,
        on_cursor: OnCursor,
        reconciling: Optional[ReconcileLoop] = None,
    ) -> None:
        """``owner``: this replica, as a lease holder. ``reconciling``: the
        Virtual Agent chats are watched too, by reading them back from
        ServiceNow's record (reconciling.py), under the same leases."""
        self._settings = settings
        self._reconciling = reconciling
        #: Whether live chats are watched under a lease at all (polled or reconciled).
        self.watches = backend.pulls or reconciling is not None
        self._backend = backend
        self._store = store
        self._dispatcher = dispatcher
        self._work = work
        self.owner = owner
        self._on_failed = on_failed
        self._on_cursor = on_cursor
        self._pollers: Dict[str, _Poller] = {}
        # Polls under way, with when each one's lease was last made good: one
        # loop renews the leases of those that outlast their interval. (A
        # timer per poll, and a task per lease call, were most of what the
        # bookkeeping of a poll cost.)
        self._polls: Dict[_Poller, float] = {}
        self._renewer: "Optional[asyncio.Task[None]]" = None
        self._renewals = TaskSet()

    def watch(self, chat: LiveChat, *, catch_up: bool = True) -> None:
        """Start polling the chat (pull backends), or reading it back from
        ServiceNow's record (``catch_up``: at once, for a chat this replica
        takes up rather than opens). Idempotent."""
        if self._reconciling is not None and not self._backend.pulls:
            self._reconciling.watch(chat, catch_up=catch_up)
            return
        if not self._backend.pulls or chat.ended or self.is_watching(chat):
            return
        poller = _Poller(PollSchedule(self._settings), chat)
        chat.poller = asyncio.create_task(self._poll_loop(poller), name=f"servicenow-poll-{chat.sender_id}")
        self._pollers[chat.sender_id] = poller
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_long_polls(), name="servicenow-poll-leases")

    def is_watching(self, chat: LiveChat) -> bool:
        if self._reconciling is not None and not self._backend.pulls:
            return self._reconciling.is_watching(chat)
        poller = self._pollers.get(chat.sender_id)
        return poller is not None and poller.chat is chat and chat.poller is not None and not chat.ended

    @property
    def watched(self) -> int:
        return len(self._pollers) + (self._reconciling.watched if self._reconciling is not None else 0)

    def soon(self, chat_id: str) -> bool:
        """Read a Virtual Agent chat back soon, not at its next tick (a push of
        it was refused); False when this replica does not watch it."""
        return self._reconciling.soon(chat_id) if self._reconciling is not None else False

    def note_activity(self, chat: LiveChat) -> None:
        """The user wrote: an answer is likely soon, so poll at the fast rate."""
        poller = self._pollers.get(chat.sender_id)
        if poller is not None and poller.chat is chat:
            was_idle = not poller.schedule.is_active()
            poller.schedule.note_activity()
            if was_idle:
                poller.wake.set()

    async def stop_polling(self, timeout: float = 10.0) -> List[LiveChat]:
        """Stop every loop and wait (up to ``timeout``) for them to end; the
        chats they polled, whose leases ``release`` gives up."""
        pollers = list(self._pollers.values())
        self._pollers.clear()
        tasks = [poller.chat.poller for poller in pollers if poller.chat.poller is not None]
        if self._renewer is not None:
            tasks.append(self._renewer)
        self._renewals.cancel()  # a lease call made runs to its end all the same (Store.acquire_lease)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        reconciled = await self._reconciling.stop(timeout) if self._reconciling is not None else []
        return [poller.chat for poller in pollers] + reconciled

    async def release(self, chats: List[LiveChat], timeout: float = 10.0) -> None:
        """Give up the chats' polling leases, so another replica takes them
        over at once, not after expiry."""
        for chat in chats:
            try:
                await self._store.release_lease(poll_lease(chat.chat_id), self.owner)
            except StoreUnavailable as error:
                logger.warning("Could not release the polling lease of chat %s: %s", chat.chat_id, error)

    async def _poll_loop(self, poller: _Poller) -> None:
        chat = poller.chat
        try:
            while not chat.ended:
                await poller.sleep()
                if chat.ended or not await self._hold_lease(poller):
                    return
                before = chat.cursor
                # Its lease was just made good; renewed while the poll and its delivery run.
                self._polls[poller] = time.monotonic()
                try:
                    try:
                        result = await self._poll_once(poller)
                    except ServiceNowError as error:
                        if not chat.ended:
                            logger.warning("Polling ServiceNow chat %s keeps failing: %s", chat.chat_id, error)
                            await self._on_failed(chat, error)
                        return
                    except Exception:
                        logger.exception("Unexpected error while polling ServiceNow chat %s; retrying.", chat.chat_id)
                        continue
                    if result is not None and not chat.ended and not await self._took(poller, result):
                        return
                finally:
                    self._polls.pop(poller, None)
                if not chat.ended and chat.cursor != before:
                    await self._on_cursor(chat)
        finally:
            if self._pollers.get(chat.sender_id) is poller:
                del self._pollers[chat.sender_id]
            if chat.poller is asyncio.current_task():
                chat.poller = None

    async def _took(self, poller: _Poller, result: PollResult) -> bool:
        """Deliver a poll's result; False when the loop must stop (another
        replica holds the chat's lease now). A store that cannot take it
        leaves the cursor where it was: the next poll finds the same again."""
        try:
            await self._take(poller, result)
        except LeaseLost:
            logger.info("ServiceNow chat %s is polled by another replica now; it delivers what this poll found.", poller.chat.chat_id)
            return False
        except StoreUnavailable as error:
            logger.warning("Could not store what ServiceNow chat %s said; polling it again: %s", poller.chat.chat_id, error)
        return True

    async def _renew_long_polls(self) -> None:
        """Renew, every interval, the lease of each poll (with its delivery)
        that outlasts its interval: a poll almost always ends well within it,
        so this loop rarely finds one, where a timer per poll cost every poll."""
        while self._pollers:
            await asyncio.sleep(self._settings.poll_interval / 2)
            now = time.monotonic()
            for poller, made_good in list(self._polls.items()):
                delay = poller.schedule.delay()
                if now - made_good >= delay:
                    self._polls[poller] = now
                    self._renewals.spawn(self._renew(poller, delay))

    async def _renew(self, poller: _Poller, delay: float) -> None:
        try:
            if not await self._store.renew_lease(poll_lease(poller.chat.chat_id), self.owner, lease_time(delay)):
                self._polls.pop(poller, None)  # lost: the guard of the append refuses this poll's result
        except StoreUnavailable as error:
            logger.debug("Could not renew the polling lease of chat %s: %s", poller.chat.chat_id, error)

    async def _poll_once(self, poller: _Poller) -> Optional[PollResult]:
        chat = poller.chat
        if poller.schedule.state_check_due():
            closed = await self._backend.check_closed(chat.ref)
            return PollResult([closed], chat.last_updated, chat.seen_ids) if closed else None
        return await self._backend.poll(chat.ref, chat.cursor)

    async def _take(self, poller: _Poller, result: PollResult) -> None:
        chat = poller.chat
        if not result.events:
            # Nothing to deliver (the usual poll): move the cursor in place.
            # Only this loop dispatches a polled chat, so no delivery can be
            # under way to race with it.
            chat.move_to(result.cursor)
            return
        poller.schedule.note_activity()
        # In a task of its own: a shutdown that cancels the loop must not cut
        # a delivery off between queueing messages and saving the cursor.
        await self._work.run_to_end(self._dispatcher.dispatch(chat, result.events, result.cursor, poller=self.owner))

    async def _hold_lease(self, poller: _Poller) -> bool:
        """Take or renew this chat's polling lease. False, and the loop ends,
        when another replica polls it; a store that fails skips the tick
        (nobody else can take the lease meanwhile either)."""
        chat = poller.chat
        name = poll_lease(chat.chat_id)
        while True:
            try:
                if await self._store.acquire_lease(name, self.owner, lease_time(poller.schedule.delay())):
                    return True
            except StoreUnavailable as error:
                logger.warning("Not polling ServiceNow chat %s this time: %s", chat.chat_id, error)
                await poller.sleep()
                if chat.ended:
                    return False
                continue
            logger.debug("ServiceNow chat %s is polled by another replica.", chat.chat_id)
            return False
