"""Virtual Agent pushes shown in ServiceNow's order.

A push carries no sequence number, and two pushes can overtake each other on
the way: ServiceNow sends each as a REST call of its own. The order is in the
conversation's record, ``sys_cs_message.sequence`` (va_records.py). So a
push with a message not seen before waits for one read of the chat's records
after its cursor, and what it says is delivered together with what the
records hold before and after it, in sequence order:

* a push that overtook an earlier one brings the earlier message along, from
  its record; the earlier push, when it comes, finds its message seen;
* a push that never comes is recovered on the way, at its place;
* what a push says that has no record (typing, the ``completed`` and
  ``takeControl`` flags) stays with the push's own messages.

The wait is bounded by ``order_wait``: when the read has not answered by then
(or fails, or the tables may not be read), the push is delivered as it came,
and the next reconciliation fills any gap, late but not lost. A push whose
messages were all seen (a repeat, or a late one overtaken and recovered), or
that carries none (typing), needs no read and waits for nothing.

The caller holds the chat's dispatch lock across ``arrange`` and the delivery
of its result, so two pushes of one chat are arranged one after the other.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from connectors.servicenow.servicenow.base import AgentEvent, AgentJoined, AgentMessage, ChatClosed, SystemNotice
from connectors.servicenow.servicenow.va_records import ConversationRecords, NoReadAccess, RecordCursor, Seen
from connectors.servicenow.errors import ServiceNowError
from connectors.servicenow.tasks import bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arranged:
    """A push's events in ServiceNow's order, with what its records added."""

    events: Tuple[AgentEvent, ...]
    #: Where the chat's records were read to (unchanged when they were not read).
    cursor: RecordCursor
    #: Ids of the messages taken from the records that this push did not carry.
    recovered: Tuple[str, ...]
    #: False when the push is delivered as it came (no read, or the read failed or took too long).
    ordered: bool
    #: Seconds the push waited for the read.
    waited: float


def message_id_of(event: AgentEvent) -> Optional[str]:
    """The ``sys_cs_message`` id an event came from, when it has one."""
    if isinstance(event, (AgentMessage, SystemNotice, ChatClosed, AgentJoined)):
        return event.message_id
    return None


class PushOrder:
    def __init__(
        self, records: ConversationRecords, wait: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``wait``: the longest a push waits for its read, in seconds; 0 delivers every push as it came."""
        self._records = records
        self._wait = wait
        self._clock = clock

    async def arrange(
        self, chat_id: str, cursor: RecordCursor, seen: Seen, events: Sequence[AgentEvent]
    ) -> Arranged:
        pushed = [message_id for message_id in map(message_id_of, events) if message_id]
        as_came = Arranged(tuple(events), cursor, (), False, 0.0)
        if self._wait <= 0 or not any(not seen(message_id) for message_id in pushed) or not self._records.readable():
            return as_came
        carried = set(pushed)
        started = self._clock()
        try:
            catch_up = await bounded(
                self._records.catch_up(
                    chat_id, cursor, lambda message_id: message_id in carried or seen(message_id), state_on_unseen=False
                ),
                self._wait,
            )
        except asyncio.TimeoutError:
            waited = self._clock() - started
            logger.info("The records of chat %s did not answer within %.1f s: its push is shown as it came.", chat_id, waited)
            return Arranged(tuple(events), cursor, (), False, waited)
        except NoReadAccess:
            # Said once by the reader; pushes go as they come until access is back.
            return Arranged(tuple(events), cursor, (), False, self._clock() - started)
        except ServiceNowError as error:
            waited = self._clock() - started
            logger.info("Could not read the records of chat %s (%s): its push is shown as it came.", chat_id, error)
            return Arranged(tuple(events), cursor, (), False, waited)
        waited = self._clock() - started
        arranged: List[AgentEvent] = []
        placed = False
        recovered: List[str] = []
        for record in catch_up.recovered:
            if record.message_id in carried:
                # The push's events go where its first message is; those
                # without a record (typing, the end flags) go with them.
                if not placed:
                    arranged.extend(events)
                    placed = True
            elif not seen(record.message_id):
                arranged.extend(record.events)
                recovered.append(record.message_id)
        if not placed:
            # Its messages are not in the records yet (or are not kept): after what is.
            arranged.extend(events)
        if catch_up.closed is not None:
            arranged.append(catch_up.closed)
        if recovered:
            logger.debug("A push of chat %s comes with %d message(s) it did not carry.", chat_id, len(recovered))
        return Arranged(tuple(arranged), catch_up.cursor, tuple(recovered), True, waited)
