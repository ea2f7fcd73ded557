"""What a due timer does (timers.py sets them): leave a chat no agent took
in time, tell a waiting user they still wait, leave a chat whose user walked
away. Each checks the chat is still in the state the timer was set for
before it acts."""

import logging

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.chats import Chats
from connectors.servicenow.core.ending import EndReason, Ending
from connectors.servicenow.core.notices import Notices
from connectors.servicenow.core.timers import Timers, describe_duration, describe_seconds, queue_status
from connectors.servicenow.errors import ServiceNowError
from connectors.servicenow.rasa_glue.nlg import Line, fill
from connectors.servicenow.servicenow.base import Backend, QueueStatus
from connectors.servicenow.store import Store, TimerClaim
from connectors.servicenow.store.keys import IDLE_TIMER, NO_AGENT_TIMER, WAITING_TIMER, parse_timer_name

logger = logging.getLogger(__name__)


class Timeouts:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        store: Store,
        chats: Chats,
        ending: Ending,
        notices: Notices,
        timers: Timers,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._store = store
        self._chats = chats
        self._ending = ending
        self._notices = notices
        self._timers = timers

    async def fire(self, claim: TimerClaim) -> None:
        """A due timer, claimed by this replica only."""
        parsed = parse_timer_name(claim.name)
        if parsed is None:
            return
        kind, chat_id = parsed
        chat = await self._chats.by_chat_id(chat_id)
        if chat is None or chat.ended:
            return
        if kind == IDLE_TIMER:
            await self._idle(chat, claim)
            return
        if chat.agent_joined:
            return
        status = await queue_status(self._backend, chat)
        if status.waiting is False:
            # An agent took it (no sign of it reached this side yet, or the
            # chat was resumed after a restart): the idle count starts.
            chat.agent_joined = True
            await self._notices.status(chat.sender_id, active=True, chat_id=chat.chat_id, agent_joined=True)
            await self._timers.progressed(chat)
            return
        if kind == NO_AGENT_TIMER:
            logger.info("No agent accepted ServiceNow chat %s in time (agent_wait_timeout); leaving it.", chat.chat_id)
            await self._ending.end(chat, EndReason.NO_AGENT, in_request=False)
        elif kind == WAITING_TIMER:
            await self._notices.tell(chat.sender_id, [waiting_text(status)], in_request=False)
            await self._timers.set(WAITING_TIMER, chat, self._settings.waiting_notice_interval)

    async def _idle(self, chat: LiveChat, claim: TimerClaim) -> None:
        due = await self._store.timer_due_at(claim.name)
        if due is not None and round(due * 1000) != claim.held_until:
            return  # the user wrote while it was firing: it was moved
        timeout = self._settings.user_idle_timeout
        if not chat.agent_joined and (await queue_status(self._backend, chat)).waiting is not False:
            # Resumed after a restart and still queued, or no sign of the
            # agent yet: idle counts once an agent is there.
            await self._timers.set(IDLE_TIMER, chat, timeout)
            return
        logger.info("The user of ServiceNow chat %s sent nothing for %.0f s (user_idle_timeout); leaving it.", chat.chat_id, timeout)
        # To the agent, in the operator's words: not a domain response in the user's language.
        notice = fill(self._settings.texts.user_idle_agent, {"idle_time": describe_duration(timeout)})
        async with chat.send_lock:
            if chat.ended:
                return
            try:
                await self._backend.send(chat.ref, notice)
            except ServiceNowError as error:
                logger.warning("Could not tell the agent of chat %s that the user is idle: %s", chat.chat_id, error)
        await self._ending.end(chat, EndReason.USER_IDLE, in_request=False)


def waiting_text(status: QueueStatus) -> Line:
    wait_time = describe_seconds(status.wait_time)
    values = {"position": status.position, "wait_time": wait_time or "a few minutes"}
    if status.position:
        return Line("waiting_position", values)
    if wait_time:
        return Line("waiting_wait_time", values)
    return Line("waiting", values)
