"""Reconciliation of Virtual Agent chats: what ServiceNow's record of a chat
holds that no push brought, found by reading the record back
(servicenow/va_records.py) and delivered through the same path as a push
(intake.py: dedupe by message id, the outbox, every sink).

A live chat is read by one replica at a time, under the same lease as a
polled Connect chat (reconciling.py schedules the reads): at once when a
replica takes it up (a start, a takeover), after a push it refused, and every
``reconcile_interval``. Each tick costs one request: the messages after the
chat's cursor, or, every ``STATE_EVERY`` ticks, the interaction instead, for
an end that left no message behind (a read that finds a message no push
brought checks the interaction too).

The cursor (the conversation and the last ``sequence`` handled) lives in the
handoff record. A chat read back from the tracker after a restart of a store
that forgets has none; then the newest ids the chat delivered (its
``seen_ids``, kept in the tracker) say where delivery got to: what lies
before the oldest of them was delivered, what lies between or after them and
is not among them was not.
"""

import logging
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.servicenow.base import AgentEvent
from connectors.servicenow.servicenow.va_records import ConversationRecords, Recovered, RecordCursor

logger = logging.getLogger(__name__)

#: Every this many ticks of a chat, the interaction's state is read in place of its messages.
STATE_EVERY = 10


@dataclass(frozen=True)
class Pass:
    """What one tick found: the events to deliver, in ServiceNow's order (an
    end of the chat last), and where the chat's cursor moves once they are."""

    events: Tuple[AgentEvent, ...]
    cursor: RecordCursor
    #: Message ids among ``events`` that came from the record.
    recovered: Tuple[str, ...]


class Reconciler:
    def __init__(self, records: ConversationRecords) -> None:
        self.records = records

    def readable(self) -> bool:
        return self.records.readable()

    async def read(self, chat: LiveChat, *, state_only: bool = False) -> Pass:
        """One tick for ``chat``. Raises ``ServiceNowError`` (``NoReadAccess``
        included): the caller logs it and tries again at the next tick."""
        cursor = chat.records
        if state_only and cursor.conversation_id is not None:
            interaction = await self.records.interaction(chat.chat_id)
            closed = interaction.closed() if interaction is not None else None
            if closed is None:
                return Pass((), cursor, ())
            # Over: what it said before the end comes first.
            catch_up = await self.records.catch_up(chat.chat_id, cursor, chat.has_seen, state_on_unseen=False)
        else:
            catch_up = await self.records.catch_up(
                chat.chat_id, cursor, chat.has_seen, check_state=cursor.conversation_id is None
            )
            closed = catch_up.closed
        recovered: Sequence[Recovered] = catch_up.recovered
        if cursor.conversation_id is None and chat.seen_ids:
            recovered = after_delivered(recovered, chat.seen_ids)
        fresh = [item for item in recovered if not chat.has_seen(item.message_id)]
        events: List[AgentEvent] = [event for item in fresh for event in item.events]
        if closed is not None:
            events.append(closed)
        return Pass(tuple(events), catch_up.cursor, tuple(item.message_id for item in fresh))


def after_delivered(recovered: Sequence[Recovered], delivered: Sequence[str]) -> List[Recovered]:
    """The records not yet delivered, when all that is known is the ids of the
    newest messages delivered (in order): those before the oldest known one
    were delivered (they fell out of the window), those after it that are
    not known were not."""
    known = set(delivered)
    places = [index for index, item in enumerate(recovered) if item.message_id in known]
    if not places:
        return list(recovered)
    return [item for item in recovered[places[0] + 1 :] if item.message_id not in known]
