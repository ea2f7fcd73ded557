"""One first-come-first-served lock per conversation, for whatever must
happen one at a time per conversation: its messages (the front doors), and
its puts into the outbox."""

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import Dict, Optional, Type

from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.tasks import within


@dataclass(eq=False)
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConversationLocks:
    """One first-come-first-served lock per conversation, so that its
    messages are handled one after the other in arrival order: a message
    sent while the previous one opens a handoff goes to the agent once the
    chat is open, never to the bot. Entries go when nobody holds or waits."""

    def __init__(self) -> None:
        self._turns: Dict[str, _Turns] = {}

    def __len__(self) -> int:
        return len(self._turns)

    def hold(self, sender_id: str, timeout: float) -> "_Hold":
        """``async with locks.hold(sender, timeout)``: hold the conversation's
        lock; ``ConversationBusy`` after waiting ``timeout``."""
        return _Hold(self._turns, sender_id, timeout)


class _Hold:
    """One hold of a conversation's lock. A class rather than an
    ``asynccontextmanager``: every message takes one, and a generator-based
    context manager costs several times as much to enter and leave."""

    __slots__ = ("_all", "_sender_id", "_timeout", "_turns")

    def __init__(self, turns: Dict[str, _Turns], sender_id: str, timeout: float) -> None:
        self._all = turns
        self._sender_id = sender_id
        self._timeout = timeout
        self._turns: Optional[_Turns] = None

    async def __aenter__(self) -> None:
        turns = self._all.get(self._sender_id)
        if turns is None:
            turns = self._all[self._sender_id] = _Turns()
        turns.users += 1
        try:
            if turns.users == 1:
                # Nobody holds it or waits for it: taken at once, no deadline to keep.
                await turns.lock.acquire()
            else:
                async with within(self._timeout):
                    await turns.lock.acquire()
        except asyncio.TimeoutError:
            self._leave(turns)
            raise ConversationBusy(f"conversation {self._sender_id} is busy with an earlier message") from None
        except BaseException:
            self._leave(turns)
            raise
        self._turns = turns

    async def __aexit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        turns = self._turns
        assert turns is not None, "left without being entered"
        self._turns = None
        turns.lock.release()
        self._leave(turns)

    def _leave(self, turns: _Turns) -> None:
        turns.users -= 1
        if not turns.users:
            del self._all[self._sender_id]


class ChatLock:
    """``async with lock:``, first come first served, for one live chat. It
    holds no ``asyncio.Lock`` unless two users meet: every live chat has two
    of these, most chats sit idle or take one message at a time, and an
    ``asyncio.Lock`` is about 160 bytes (at 10,000 chats, 3 MB of the
    process for locks nobody waits on)."""

    __slots__ = ("_lock", "_users")

    def __init__(self) -> None:
        self._lock: Optional[asyncio.Lock] = None
        #: The holder and those waiting.
        self._users = 0

    def locked(self) -> bool:
        return self._users > 0

    async def __aenter__(self) -> None:
        self._users += 1
        if self._users == 1:
            return  # free: taken at once, nothing to queue behind
        if self._lock is None:
            # The first to wait makes the queue, taken on behalf of the holder
            # (a free asyncio.Lock is taken without suspending).
            self._lock = asyncio.Lock()
            await self._lock.acquire()
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        if self._lock is not None:
            self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._users -= 1
        if not self._users:
            self._lock = None
