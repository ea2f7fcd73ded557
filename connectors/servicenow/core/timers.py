"""Timers around a live chat: how long a user waits for an agent, "still
waiting" notices, and a user who walked away.

Three timers per chat, named ``<kind>:<chat id>`` (store/keys.py) and kept in
the store, so they fire once across the deployment and outlive the replica
that set them:

* ``no_agent`` (``agent_wait_timeout``): set when the chat opens, dropped when
  an agent joins; when it fires the chat is left and the user told ``no_agent``.
* ``waiting`` (``waiting_notice_interval``): set when the chat opens and again
  each time it fires, until an agent joins; it tells the user they still wait,
  with the queue position and the wait estimate where ServiceNow gives them.
* ``idle`` (``user_idle_timeout``): set when an agent joins and moved on each
  message of the user; when it fires the agent is told and the chat is left.

``TimerLoop`` runs once per replica. It sleeps until the earliest due time in
the store, woken early when this replica sets an earlier one. A replica that
died leaves its timers in the store, and the next look at the store (at most
the store's ``timer_rescan_s`` away) finds them due and fires them: a claimed
timer whose holder died comes back once its hold ends.
"""

import asyncio
import dataclasses
import logging
import math
import time
from typing import Awaitable, Callable, Optional, Tuple

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.records import Records
from connectors.servicenow.errors import ServiceNowError
from connectors.servicenow.retry import Pauses
from connectors.servicenow.servicenow.base import Backend, QueueStatus
from connectors.servicenow.store import Store, StoreUnavailable, TimerClaim
from connectors.servicenow.store.keys import IDLE_TIMER, NO_AGENT_TIMER, TIMER_KINDS, WAITING_TIMER, timer_name
from connectors.servicenow.tasks import TaskSet, event_within

logger = logging.getLogger(__name__)

#: How long a claimed timer stays hidden from other replicas while it fires
#: (leaving a chat takes a few ServiceNow calls with retries).
HOLD_S = 60.0
#: Pause after the store failed before the loop looks again.
STORE_PAUSES = Pauses((2.0,))
#: Claimed per look; more due timers are claimed on the next look at once.
CLAIM_BATCH = 100

Fire = Callable[[TimerClaim], Awaitable[None]]


class TimerSchedule:
    """Setting and dropping timers in the store, waking this replica's loop
    when a timer is due before it meant to look."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wake = asyncio.Event()
        #: When the loop means to look next (epoch seconds); an earlier timer wakes it.
        self.next_look = 0.0

    async def schedule(self, name: str, due_at: float) -> None:
        """Set or move a timer; ``StoreUnavailable`` when the store is down."""
        await self.store.schedule_timer(name, due_at)
        if due_at < self.next_look:
            self.wake.set()

    async def cancel(self, name: str) -> None:
        await self.store.cancel_timer(name)


class TimerLoop:
    """Fires the store's due timers on this replica; see the module docstring."""

    def __init__(self, schedule: TimerSchedule, fire: Fire, *, rescan: Optional[float] = None, hold: float = HOLD_S) -> None:
        self._schedule = schedule
        self._store = schedule.store
        self._fire = fire
        self._rescan = rescan if rescan is not None else self._store.timer_rescan_s
        self._hold = hold
        self._task: Optional["asyncio.Task[None]"] = None
        self._firing = TaskSet()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="servicenow-timers")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # Unfinished ones stay claimed and come back after their hold.
        await self._firing.wait(timeout)

    async def _run(self) -> None:
        schedule = self._schedule
        while True:
            # Cleared before looking: a timer set from here on wakes the wait below.
            schedule.wake.clear()
            schedule.next_look = math.inf
            try:
                delay = await self._look()
            except StoreUnavailable as error:
                logger.warning("Could not look for due timers (agent wait, waiting notices, idle users): %s", error)
                delay = STORE_PAUSES.after(0)
            except Exception:
                logger.exception("Looking for due timers failed; trying again.")
                delay = STORE_PAUSES.after(0)
            schedule.next_look = time.time() + delay
            if delay <= 0:
                continue
            await event_within(schedule.wake, None if math.isinf(delay) else delay)

    async def _look(self) -> float:
        """Fire what is due; seconds until the next look."""
        claims = await self._store.claim_due_timers(hold=self._hold, limit=CLAIM_BATCH)
        for claim in claims:
            self._firing.spawn(self._fire_one(claim), name=f"servicenow-timer-{claim.name}")
        if len(claims) == CLAIM_BATCH:
            return 0.0
        due = await self._store.next_timer_due()
        delay = math.inf if due is None else max(0.0, due - time.time())
        return min(delay, self._rescan)

    async def _fire_one(self, claim: TimerClaim) -> None:
        try:
            await self._fire(claim)
        except StoreUnavailable as error:
            logger.warning("Timer %s could not fire (it comes back in %.0f s): %s", claim.name, self._hold, error)
            return
        except Exception:
            logger.exception("Timer %s failed (it comes back in %.0f s).", claim.name, self._hold)
            return
        try:
            await self._store.finish_timer(claim)
        except StoreUnavailable as error:
            logger.warning("Could not mark timer %s done (it may fire again): %s", claim.name, error)


class Timers:
    """Which timers a chat has, as it moves from waiting to talking."""

    def __init__(self, settings: ServiceNowSettings, schedule: TimerSchedule, records: Records, *, pulls: bool) -> None:
        self._settings = settings
        self.schedule = schedule
        self._records = records
        self._pulls = pulls

    @property
    def enabled(self) -> bool:
        settings = self._settings
        return bool(settings.agent_wait_timeout or settings.waiting_notice_interval or settings.user_idle_timeout)

    async def set(self, kind: str, chat: LiveChat, delay: float) -> None:
        try:
            await self.schedule.schedule(timer_name(kind, chat.chat_id), time.time() + delay)
        except StoreUnavailable as error:
            # The chat goes on; it only misses this timer.
            logger.warning("Could not set the %s timer of chat %s: %s", kind, chat.chat_id, error)

    async def opened(self, chat: LiveChat) -> None:
        """A chat opened: it waits for an agent."""
        if self._settings.agent_wait_timeout:
            await self.set(NO_AGENT_TIMER, chat, self._settings.agent_wait_timeout)
        if self._settings.waiting_notice_interval:
            await self.set(WAITING_TIMER, chat, self._settings.waiting_notice_interval)

    async def resumed(self, chat: LiveChat) -> None:
        """A chat read back after a restart of a store that forgets (its
        timers died with the process): its timers count from now. The mirror
        does not say whether an agent had joined: the waiting timers are set
        only where ServiceNow can tell before they act (Connect's session
        state), and the idle one waits for a sign of the agent."""
        if self._pulls:
            await self.opened(chat)
        if self._settings.user_idle_timeout:
            await self.set(IDLE_TIMER, chat, self._settings.user_idle_timeout)

    async def user_wrote(self, chat: LiveChat) -> None:
        if self._settings.user_idle_timeout and chat.agent_joined:
            await self.set(IDLE_TIMER, chat, self._settings.user_idle_timeout)

    async def cancel(self, chat: LiveChat, kinds: Tuple[str, ...] = TIMER_KINDS) -> None:
        if not self.enabled:
            return
        for kind in kinds:
            try:
                await self.schedule.cancel(timer_name(kind, chat.chat_id))
            except StoreUnavailable as error:
                # It fires later, finds the chat ended or the agent there, and does nothing.
                logger.warning("Could not drop the %s timer of chat %s: %s", kind, chat.chat_id, error)

    async def progressed(self, chat: LiveChat) -> None:
        """The chat moved on: an agent joined (the waiting timers go, the
        idle one starts) or a new wait estimate came; its record follows."""
        await self._records.save(chat)
        if chat.agent_joined:
            await self.cancel(chat, (NO_AGENT_TIMER, WAITING_TIMER))
            if self._settings.user_idle_timeout:
                await self.set(IDLE_TIMER, chat, self._settings.user_idle_timeout)


async def queue_status(backend: Backend, chat: LiveChat) -> QueueStatus:
    """What ServiceNow says of the chat's wait; nothing when it cannot say
    (the chat's own latest estimate fills in)."""
    try:
        status = await backend.queue_status(chat.ref)
    except ServiceNowError as error:
        logger.warning("Could not read the queue status of chat %s: %s", chat.chat_id, error)
        status = QueueStatus()
    if status.wait_time is None and chat.wait_estimate:
        status = dataclasses.replace(status, wait_time=chat.wait_estimate)
    return status


def describe_seconds(value: object) -> Optional[str]:
    """A wait estimate for the user: seconds become "about 2 minutes", a text
    ServiceNow already worded ("8 Seconds") is kept; nothing for 0 or junk."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return text if len(text) <= 40 else None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    seconds = int(value)
    if seconds < 60:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return "about 1 minute" if minutes == 1 else f"about {minutes} minutes"
    hours = round(seconds / 3600)
    return "about 1 hour" if hours == 1 else f"about {hours} hours"


def describe_duration(seconds: float) -> str:
    """A configured duration for a person: "45 seconds", "10 minutes", "1 hour"."""
    whole = max(1, int(round(seconds)))
    if whole < 120:
        return "1 second" if whole == 1 else f"{whole} seconds"
    if whole < 2 * 3600:
        return f"{round(whole / 60)} minutes"
    return f"{round(whole / 3600)} hours"
