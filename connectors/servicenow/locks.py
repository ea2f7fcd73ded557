"""First-come-first-served locks: one per conversation, for its messages
(the front doors), and the per-chat locks of a live chat (``ChatLock``)."""

import asyncio
from types import TracebackType
from typing import Dict, Optional, Type

from connectors.servicenow.errors import ConversationBusy
from connectors.servicenow.tasks import within


class ConversationLocks:
    """One first-come-first-served lock per conversation, so that its
    messages are handled one after the other in arrival order: a message
    sent while the previous one opens a handoff goes to the agent once the
    chat is open, never to the bot. Entries go when nobody holds or waits."""

    def __init__(self) -> None:
        self._turns: Dict[str, ChatLock] = {}

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

    __slots__ = ("_all", "_sender_id", "_timeout", "_lock")

    def __init__(self, turns: Dict[str, "ChatLock"], sender_id: str, timeout: float) -> None:
        self._all = turns
        self._sender_id = sender_id
        self._timeout = timeout
        self._lock: Optional[ChatLock] = None

    async def __aenter__(self) -> None:
        lock = self._all.get(self._sender_id)
        if lock is None:
            # Nobody holds it or waits for it: taken at once, no deadline to keep.
            self._lock = self._all[self._sender_id] = ChatLock(held=True)
            return
        try:
            async with within(self._timeout):
                await lock.__aenter__()
        except asyncio.TimeoutError:
            self._forget_if_free(lock)
            raise ConversationBusy(f"conversation {self._sender_id} is busy with an earlier message") from None
        except BaseException:
            self._forget_if_free(lock)
            raise
        self._lock = lock

    async def __aexit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        lock = self._lock
        assert lock is not None, "left without being entered"
        self._lock = None
        if lock.release() and self._all.get(self._sender_id) is lock:
            del self._all[self._sender_id]

    def _forget_if_free(self, lock: "ChatLock") -> None:
        if not lock.locked() and self._all.get(self._sender_id) is lock:
            del self._all[self._sender_id]


class ChatLock:
    """``async with lock:``, first come first served, for one live chat. It
    holds no ``asyncio.Lock`` unless two users meet: every live chat has two
    of these, most chats sit idle or take one message at a time, and an
    ``asyncio.Lock`` is about 160 bytes (at 10,000 chats, 3 MB of the
    process for locks nobody waits on)."""

    __slots__ = ("_lock", "_users")

    def __init__(self, *, held: bool = False) -> None:
        """``held``: made already taken by its first user (who then leaves it with ``release``)."""
        self._lock: Optional[asyncio.Lock] = None
        #: The holder and those waiting.
        self._users = 1 if held else 0

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
        self.release()

    def release(self) -> bool:
        """Let the next user in; True when nobody holds or waits any more."""
        if self._lock is not None:
            self._lock.release()
        return self._leave()

    def _leave(self) -> bool:
        self._users -= 1
        if self._users:
            return False
        self._lock = None
        return True
