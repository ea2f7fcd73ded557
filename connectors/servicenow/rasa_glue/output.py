"""The output channels the connector hands Rasa, and running one user turn.

Every bot response passes through ``HandoffAwareOutput``, which takes the
handoff custom payload out: ``{"handoff": {...}}`` asks for a handoff,
``{"handoff": {"end": true}}`` ends one (in a turn Rasa runs outside a
request). ``TurnCollector`` collects a turn's replies for the door's answer;
``OutOfBandOutput`` sends them through the outbox (a turn Rasa runs outside a
request: its HTTP API, reminders, the hand-back turn after an end that no
request saw).
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional

from rasa.core.lock_store import LockError

from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.logsafe import loggable
from connectors.servicenow.rasa_glue.channels import CollectingOutputChannel, UserMessage

logger = logging.getLogger(__name__)

#: Key of the custom payload that starts a handoff, e.g. in ``domain.yml``:
#: ``custom: {handoff: {}}``. Optional entries: ``message`` (what the agent
#: sees first; defaults to the user's last message), ``queue_id`` (Connect)
#: and ``context_variables`` (Virtual Agent routing).
HANDOFF_PAYLOAD_KEY = "handoff"
#: ``{"handoff": {"end": true}}`` ends the conversation's handoff instead.
HANDOFF_END_KEY = "end"
#: The output channel name Rasa records (``servicenow``, as the webhook door).
OUTPUT_NAME = "servicenow"

#: Rasa's ``on_new_message``: handles one ``UserMessage``.
OnNewMessage = Callable[[UserMessage], Awaitable[Any]]
#: Sends one bot message out of band: (recipient, message).
Deliver = Callable[[str, Dict[str, Any]], Awaitable[None]]
#: The bot asked for a handoff: (recipient, the payload's options).
HandoffAsked = Callable[[str, Dict[str, Any]], None]
#: The bot asked to end the handoff: (recipient).
EndAsked = Callable[[str], None]


class HandoffAwareOutput(CollectingOutputChannel):
    """Takes the handoff custom payload out of the bot's response; the user never sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.handoff: Optional[Dict[str, Any]] = None

    @classmethod
    def name(cls) -> str:
        return OUTPUT_NAME

    async def send_custom_json(self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any) -> None:
        # Responses and custom actions alike: Rasa hands a message's
        # ``custom`` (``utter_message(json_message=...)``) to this method.
        if isinstance(json_message, dict) and HANDOFF_PAYLOAD_KEY in json_message:
            options = json_message[HANDOFF_PAYLOAD_KEY]
            options = options if isinstance(options, dict) else {}
            if options.get(HANDOFF_END_KEY) is True:
                self.on_handoff_end(recipient_id)
            else:
                self.handoff = options
                self.on_handoff(recipient_id, options)
            json_message = {key: value for key, value in json_message.items() if key != HANDOFF_PAYLOAD_KEY}
            if not json_message:
                return
        await super().send_custom_json(recipient_id, json_message, **kwargs)

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        """Hook for outputs that act on the request themselves."""

    def on_handoff_end(self, recipient_id: str) -> None:
        """The bot asked to end the handoff. In a user's turn there is none
        to end: the user's messages reach the bot only outside a handoff."""
        logger.info("Ignoring an end-of-handoff payload for conversation %s, which is not in handoff.", recipient_id)


class TurnCollector(HandoffAwareOutput):
    """Collects one turn's replies; the door starts the handoff after Rasa
    has released the conversation's lock."""


class OutOfBandOutput(HandoffAwareOutput):
    """Sends through the outbox (callback and streams). A handoff asked for,
    or an end, is acted on in a task of its own: Rasa holds the
    conversation's lock while this runs, and the start or end waits for it."""

    def __init__(self, deliver: Deliver, handoff_asked: HandoffAsked, end_asked: EndAsked) -> None:
        super().__init__()
        self._deliver = deliver
        self._handoff_asked = handoff_asked
        self._end_asked = end_asked

    async def _persist_message(self, message: Dict[str, Any]) -> None:
        await self._deliver(message["recipient_id"], message)

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        self._handoff_asked(recipient_id, options)

    def on_handoff_end(self, recipient_id: str) -> None:
        self._end_asked(recipient_id)


async def run_turn(
    on_new_message: OnNewMessage,
    sender_id: str,
    text: str,
    input_channel: str,
    metadata: Optional[Mapping[str, Any]],
) -> TurnCollector:
    """Let Rasa take the user's turn; its replies (and any handoff it asked
    for) are in the collector. Rasa's failures are logged, not raised: the
    user gets what was said before the failure. Except when Rasa could not
    lock the conversation, so the turn never ran: ``StoreUnavailable`` (its
    lock store failed) or ``ConversationBusy`` (another turn held the lock
    past Rasa's wait), which the doors answer with a 503 to send it again."""
    collector = TurnCollector()
    message = UserMessage(text, collector, sender_id, input_channel=input_channel, metadata=dict(metadata) if metadata else None)
    try:
        await on_new_message(message)
    except asyncio.CancelledError:
        logger.error("Rasa did not answer conversation %s in time.", loggable(sender_id))
    except Exception as error:
        refused = refused_lock(error)
        if refused is not None and not collector.messages:
            raise turn_not_taken(refused) from error
        logger.exception("Rasa failed to handle a message of conversation %s.", loggable(sender_id))
    return collector


def refused_lock(error: BaseException) -> Optional[LockError]:
    """The ``LockError`` behind ``error``, if any: Rasa could not lock the
    conversation (it raises one only while taking the lock), so its turn
    never started. A lock store that fails again in the clean-up after it
    raises its own error, with the ``LockError`` as its context."""
    seen = set()
    found: Optional[BaseException] = error
    while found is not None and id(found) not in seen:
        if isinstance(found, LockError):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def turn_not_taken(refused: LockError) -> Exception:
    # Rasa's words for a lock another turn held past the wait, in 3.6 and Pro alike.
    if str(refused).startswith("Could not acquire lock"):
        return ConversationBusy(f"Rasa could not lock the conversation in time: {refused}")
    return StoreUnavailable(f"Rasa's lock store failed: {refused}")
