"""The core every front door hands a user's message to: the webhook
(``channel.py``) and socket.io (``socketio_channel.py``) parse and
authenticate their input, then call ``FrontDoor.handle``; what it decides
(bot turn, message to the agent, end of the chat, start of a handoff) is the
same whichever door the message came through.

A door gets back this turn's replies (Rasa message dicts) and answers them
its own way: a JSON list for the webhook, ``bot_message_evt`` emits for
socket.io. Everything said later (agent messages, notices, the end of the
chat) goes through the outbox, whose sinks each door reads.
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional

from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

from connectors.servicenow.backends.base import HandoffRequest, Requester
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.handoff import OPEN_WAIT_S, HandoffManager
from connectors.servicenow.identity import Claims, requester_of
from connectors.servicenow.logsafe import loggable
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.state import ConversationLocks

logger = logging.getLogger(__name__)

#: Key of the custom payload that starts a handoff, e.g. in ``domain.yml``:
#: ``custom: {handoff: {}}``. Optional entries: ``message`` (what the agent
#: sees first; defaults to the user's last message), ``queue_id`` (Connect)
#: and ``context_variables`` (Virtual Agent routing).
HANDOFF_PAYLOAD_KEY = "handoff"
RESTART_COMMAND = "/restart"
#: What the agent reads first when a handoff starts outside a user's message
#: (Rasa's HTTP API) and the payload gives no ``message``.
OUT_OF_BAND_HANDOFF_TEXT = "The user asked for a live agent."

OnNewMessage = Callable[[UserMessage], Awaitable[Any]]


class FrontDoor:
    """Routes one user message: to the agent while the conversation is in
    handoff (or an end command), else to Rasa, starting a handoff when the
    bot's answer asks for one. Messages of a conversation are handled one at
    a time, in arrival order."""

    def __init__(
        self,
        settings: ServiceNowSettings,
        handoffs: HandoffManager,
        input_channel: str,
        turns: Optional[ConversationLocks] = None,
    ) -> None:
        """``turns``: the per-conversation locks of another door on the same
        core, so a conversation's messages are one at a time whichever door
        they come through."""
        self.settings = settings
        self.handoffs = handoffs
        #: Recorded on the user's messages (``UserMessage.input_channel``).
        self.input_channel = input_channel
        self.turns = turns if turns is not None else ConversationLocks()

    async def handle(self, payload: UserPayload, on_new_message: OnNewMessage, claims: Optional[Claims] = None) -> list:
        """This turn's replies for a valid message.

        Raises ``StoreUnavailable`` when the store cannot say whether the
        conversation is in handoff, ``ConversationBusy`` when an earlier
        message of it holds it longer than ``OPEN_WAIT_S``; nothing happened
        then, and the message never reaches Rasa."""
        arrived = asyncio.get_running_loop().time()
        async with self.turns.hold(payload.sender, OPEN_WAIT_S):
            return await self._handle_in_turn(payload, on_new_message, arrived, claims)

    async def _handle_in_turn(
        self, payload: UserPayload, on_new_message: OnNewMessage, arrived: float, claims: Optional[Claims]
    ) -> list:
        chat = await self.handoffs.active_chat(payload.sender)
        if chat is not None:
            command = payload.message.lower()
            if command == RESTART_COMMAND:
                replies = await self.handoffs.end_by_user(chat)
                if not chat.ended:  # the end could not be saved: still with the agent
                    return replies
                return replies + (await self.run_turn(payload, on_new_message)).messages
            if command in self.settings.end_chat_commands:
                return await self.handoffs.end_by_user(chat)
            return await self.handoffs.forward(chat, payload.message)
        if self.handoffs.open_failed_for(payload.sender, arrived):
            # Sent for the agent while the chat was opening; the open failed.
            return self.handoffs.message_not_delivered(payload.sender)

        collector = await self.run_turn(payload, on_new_message)
        replies = list(collector.messages)
        if collector.handoff is not None:
            requester = requester_of(
                payload.sender, claims, payload.metadata, trust_metadata=self.settings.trust_frontend_metadata
            )
            request = handoff_request(payload.sender, collector.handoff, payload.message, payload.metadata, requester)
            replies += await self.handoffs.start(request, in_request=True, requested_at=arrived)
        return replies

    async def run_turn(self, payload: UserPayload, on_new_message: OnNewMessage) -> "TurnCollector":
        collector = TurnCollector()
        message = UserMessage(
            payload.message,
            collector,
            payload.sender,
            input_channel=self.input_channel,
            metadata=dict(payload.metadata) or None,
        )
        try:
            await on_new_message(message)
        except asyncio.CancelledError:
            logger.error("Rasa did not answer conversation %s in time.", loggable(payload.sender))
        except Exception:
            logger.exception("Rasa failed to handle a message of conversation %s.", loggable(payload.sender))
        return collector


class HandoffAwareOutput(CollectingOutputChannel):
    """Takes the handoff custom payload out of the bot's response; the user never sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.handoff: Optional[Dict[str, Any]] = None

    async def send_custom_json(self, recipient_id: str, json_message: Dict[str, Any], **kwargs: Any) -> None:
        if isinstance(json_message, dict) and HANDOFF_PAYLOAD_KEY in json_message:
            options = json_message[HANDOFF_PAYLOAD_KEY]
            self.handoff = options if isinstance(options, dict) else {}
            self.on_handoff(recipient_id, self.handoff)
            json_message = {key: value for key, value in json_message.items() if key != HANDOFF_PAYLOAD_KEY}
            if not json_message:
                return
        await super().send_custom_json(recipient_id, json_message, **kwargs)

    def on_handoff(self, recipient_id: str, options: Dict[str, Any]) -> None:
        """Hook for outputs that act on the request themselves."""


class TurnCollector(HandoffAwareOutput):
    """Collects one turn's replies; the door starts the handoff after Rasa
    has released the conversation's lock."""

    @classmethod
    def name(cls) -> str:
        return "servicenow"


def handoff_request(
    sender_id: str,
    options: Mapping[str, Any],
    user_text: str,
    metadata: Mapping[str, Any],
    requester: Requester,
) -> HandoffRequest:
    message = options.get("message")
    queue_id = options.get("queue_id")
    context_variables = options.get("context_variables")
    return HandoffRequest(
        sender_id=sender_id,
        text=message if isinstance(message, str) and message.strip() else user_text,
        metadata=metadata,
        queue_id=queue_id if isinstance(queue_id, str) and queue_id else None,
        context_variables=context_variables if isinstance(context_variables, dict) else {},
        requester=requester,
    )
