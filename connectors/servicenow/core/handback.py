"""The bot's turn after a handoff ends (or a handoff that could not start):
the hand-back intent with the reason, run once, on the replica that ends the
handoff (rasa_glue/handback.py runs it through Rasa).

In a request its replies join the door's answer (the client is waiting for
it, and the outbox would deliver them after the answer's own notice anyway);
otherwise they go through the outbox, behind the end notice already there. A
turn in a request that asks for a handoff again opens it in the same answer.
"""

import logging
from typing import Any, Awaitable, Callable, Dict, List, Mapping

from connectors.servicenow.rasa_glue.channels import OutputChannel
from connectors.servicenow.rasa_glue.handback import HandBackTurn
from connectors.servicenow.rasa_glue.output import TurnCollector
from connectors.servicenow.tasks import TaskSet

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]
#: Opens the handoff a hand-back turn in a request asked for: (sender, options) -> replies.
StartAsked = Callable[[str, Mapping[str, Any]], Awaitable[Messages]]


class Handback:
    def __init__(
        self, turn: HandBackTurn, out_of_band: Callable[[], OutputChannel], start_asked: StartAsked, work: TaskSet
    ) -> None:
        self._turn = turn
        self._out_of_band = out_of_band
        self._start_asked = start_asked
        self._work = work

    def spawn(self, sender_id: str, reason: str) -> None:
        """Run the turn in the background, through the outbox (a turn that
        must wait for the conversation's lock, held by the caller's turn)."""
        self._work.spawn(self.run(sender_id, reason, in_request=False))

    async def run(self, sender_id: str, reason: str, *, in_request: bool) -> Messages:
        """Run the hand-back turn for ``reason`` (an ``EndReason`` value or a
        refusal's reason). Returns the turn's replies when ``in_request``
        (for the answer), else sends them through the outbox. Never raises:
        the handoff is over whatever the bot's turn does."""
        try:
            if not in_request:
                # Nobody waits for an answer: a turn that cannot take its conversation yet tries again.
                await self._turn.run(sender_id, reason, self._out_of_band(), patient=True)
                return []
            collector = TurnCollector()
            await self._turn.run(sender_id, reason, collector)
            replies = list(collector.messages)
            if collector.handoff is not None:
                replies += await self._start_asked(sender_id, collector.handoff)
            return replies
        except Exception:
            logger.exception("The hand-back turn of conversation %s failed.", sender_id)
            return []
