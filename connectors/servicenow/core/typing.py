"""The user's typing state, passed to the agent sparingly.

A browser reports typing on every pause; ServiceNow needs to hear only the
changes. Per live chat: only a change is sent, at most one call is in flight,
calls are at least ``min_interval`` seconds apart (the latest state wins after
the wait), and a failed call is not retried: by the time a retry landed the
indicator would be stale anyway.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Dict, Optional

from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.errors import ServiceNowError
from connectors.servicenow.servicenow.base import ChatRef

logger = logging.getLogger(__name__)

TYPING_MIN_INTERVAL_S = 2.0

SendTyping = Callable[[ChatRef, bool], Awaitable[bool]]


@dataclass(slots=True)
class _ChatTyping:
    chat: LiveChat
    wanted: bool
    #: What the agent was last told (None: nothing yet).
    sent: Optional[bool] = None
    last_call: float = float("-inf")
    worker: "Optional[asyncio.Task[None]]" = None


class TypingForwarder:
    def __init__(
        self,
        send: SendTyping,
        *,
        min_interval: float = TYPING_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.min_interval = min_interval
        self._clock = clock
        self._chats: Dict[str, _ChatTyping] = {}

    def __len__(self) -> int:
        return len(self._chats)

    def note(self, chat: LiveChat, typing: bool) -> None:
        """Record the user's state; a background task tells the agent when it changed."""
        if chat.ended:
            return
        state = self._chats.get(chat.chat_id)
        if state is None or state.chat is not chat:
            state = self._chats[chat.chat_id] = _ChatTyping(chat, typing)
        state.wanted = typing
        if state.worker is None and state.wanted != state.sent:
            state.worker = asyncio.create_task(self._forward(state))

    async def _forward(self, state: _ChatTyping) -> None:
        try:
            while not state.chat.ended and state.wanted != state.sent:
                wait = state.last_call + self.min_interval - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                value = state.wanted
                state.last_call = self._clock()
                state.sent = value
                try:
                    await self._send(state.chat.ref, value)
                except ServiceNowError as error:
                    logger.info("Could not forward typing to ServiceNow chat %s: %s", state.chat.chat_id, error)
        finally:
            state.worker = None
            if state.chat.ended and self._chats.get(state.chat.chat_id) is state:
                del self._chats[state.chat.chat_id]

    def prune(self) -> int:
        """Forget chats that ended; returns how many."""
        ended = [chat_id for chat_id, state in self._chats.items() if state.chat.ended and state.worker is None]
        for chat_id in ended:
            del self._chats[chat_id]
        return len(ended)

    async def aclose(self) -> None:
        workers = [state.worker for state in self._chats.values() if state.worker is not None]
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
