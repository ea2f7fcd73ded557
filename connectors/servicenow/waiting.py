"""Timers around a live chat: how long a user waits for an agent, "still
waiting" notices, and a user who walked away.

Three timers per chat, named ``<kind>:<chat id>`` and kept in the store, so
they fire once across the deployment and outlive the replica that set them:

* ``no_agent`` (``agent_wait_timeout``): set when the chat opens, dropped when
  an agent joins; when it fires the chat is left and the user told ``no_agent``.
* ``waiting`` (``waiting_notice_interval``): set when the chat opens and again
  each time it fires, until an agent joins; it tells the user they still wait,
  with the queue position and the wait estimate where ServiceNow gives them.
* ``idle`` (``user_idle_timeout``): set when an agent joins and moved on each
  message of the user; when it fires the agent is told and the chat is left.

``TimerLoop`` runs once per replica. It sleeps until the earliest due time in
the store, woken early when this replica sets an earlier one. Other replicas'
timers are their own loops' business; a replica that died leaves its timers
in the store, and the next look at the store (at most ``rescan`` seconds
away) finds them due and fires them: a claimed timer whose holder died comes
back once its hold ends.
"""

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable, Optional, Set, Tuple

from connectors.servicenow.store import Store, StoreUnavailable, TimerClaim

logger = logging.getLogger(__name__)

NO_AGENT = "no_agent"
WAITING = "waiting"
IDLE = "idle"
KINDS = (NO_AGENT, WAITING, IDLE)

#: How long a claimed timer stays hidden from other replicas while it fires
#: (leaving a chat takes a few ServiceNow calls with retries).
HOLD_S = 60.0
#: With a shared store, the longest sleep between looks at it: how late a
#: timer set by a replica that died meanwhile may fire.
SHARED_RESCAN_S = 5.0
#: Pause after the store failed before the loop looks again.
STORE_RETRY_S = 2.0
#: Claimed per look; more due timers are claimed on the next look at once.
CLAIM_BATCH = 100


def timer_name(kind: str, chat_id: str) -> str:
    return f"{kind}:{chat_id}"


def parse_timer_name(name: str) -> Optional[Tuple[str, str]]:
    """``(kind, chat id)`` of a timer this module set, or None."""
    kind, _, chat_id = name.partition(":")
    if kind not in KINDS or not chat_id:
        return None
    return kind, chat_id


Fire = Callable[[TimerClaim], Awaitable[None]]


class TimerLoop:
    """Fires the store's due timers on this replica; see the module docstring."""

    def __init__(self, store: Store, fire: Fire, *, rescan: Optional[float] = None, hold: float = HOLD_S) -> None:
        self._store = store
        self._fire = fire
        self._rescan = rescan if rescan is not None else (SHARED_RESCAN_S if store.shared else math.inf)
        self._hold = hold
        self._wake = asyncio.Event()
        #: When the loop means to look next (epoch seconds); an earlier timer wakes it.
        self._next_look = 0.0
        self._task: Optional["asyncio.Task[None]"] = None
        self._firing: Set["asyncio.Task[None]"] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="servicenow-timers")

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._firing:
            # Unfinished ones stay claimed and come back after their hold.
            await asyncio.wait(list(self._firing), timeout=timeout)

    async def schedule(self, name: str, due_at: float) -> None:
        """Set or move a timer; ``StoreUnavailable`` when the store is down."""
        await self._store.schedule_timer(name, due_at)
        if due_at < self._next_look:
            self._wake.set()

    async def cancel(self, name: str) -> None:
        await self._store.cancel_timer(name)

    async def _run(self) -> None:
        while True:
            # Cleared before looking: a timer set from here on wakes the wait below.
            self._wake.clear()
            self._next_look = math.inf
            try:
                delay = await self._look()
            except StoreUnavailable as error:
                logger.warning("Could not look for due timers (agent wait, waiting notices, idle users): %s", error)
                delay = STORE_RETRY_S
            except Exception:
                logger.exception("Looking for due timers failed; trying again.")
                delay = STORE_RETRY_S
            self._next_look = time.time() + delay
            if delay <= 0:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), None if math.isinf(delay) else delay)
            except asyncio.TimeoutError:
                pass

    async def _look(self) -> float:
        """Fire what is due; seconds until the next look."""
        claims = await self._store.claim_due_timers(hold=self._hold, limit=CLAIM_BATCH)
        for claim in claims:
            task = asyncio.create_task(self._fire_one(claim), name=f"servicenow-timer-{claim.name}")
            self._firing.add(task)
            task.add_done_callback(self._firing.discard)
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
