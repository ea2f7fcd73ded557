"""One first-come-first-served lock per conversation, for whatever must
happen one at a time per conversation: its messages (the front doors), and
its puts into the outbox."""

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Dict

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

    @contextlib.asynccontextmanager
    async def hold(self, sender_id: str, timeout: float) -> AsyncIterator[None]:
        """Hold the conversation's lock; ``ConversationBusy`` after waiting ``timeout``."""
        turns = self._turns.setdefault(sender_id, _Turns())
        turns.users += 1
        try:
            try:
                if turns.users == 1:
                    # Nobody holds it or waits for it: taken at once, no deadline to keep.
                    await turns.lock.acquire()
                else:
                    async with within(timeout):
                        await turns.lock.acquire()
            except asyncio.TimeoutError:
                raise ConversationBusy(f"conversation {sender_id} is busy with an earlier message") from None
            try:
                yield
            finally:
                turns.lock.release()
        finally:
            turns.users -= 1
            if not turns.users:
                del self._turns[sender_id]
