"""A user's message, whichever door it came through: to the agent while the
conversation is in handoff (or an end command), else to Rasa, starting a
handoff when the bot's answer asks for one. Messages of a conversation are
handled one at a time, in arrival order.

A door gets back this turn's replies (Rasa message dicts) and answers them
its own way: a JSON list for the webhook, ``bot_message_evt`` emits for
socket.io. Everything said later goes through the outbox.
"""

import asyncio
import logging
from typing import Any, Dict, List, Mapping, Optional

from connectors.servicenow.attachments import AttachmentRefused, UserAttachment, refusal_placeholders
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.chat import LiveChat, OpensInFlight
from connectors.servicenow.core.chats import OPEN_WAIT_S, Chats
from connectors.servicenow.core.ending import EndReason, Ending
from connectors.servicenow.core.opening import Opening, handoff_request, out_of_band_request
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.core.timers import Timers
from connectors.servicenow.core.typing import TypingForwarder
from connectors.servicenow.errors import ConversationBusy, ServiceNowError, StoreUnavailable
from connectors.servicenow.identity import Claims, requester_of
from connectors.servicenow.locks import ConversationLocks
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.rasa_glue.nlg import Speech
from connectors.servicenow.rasa_glue.output import OnNewMessage, run_turn
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.rasa_glue.slots import user_message_event
from connectors.servicenow.servicenow.base import Backend

logger = logging.getLogger(__name__)

Messages = List[Dict[str, Any]]
RESTART_COMMAND = "/restart"


class Router:
    def __init__(
        self,
        settings: ServiceNowSettings,
        backend: Backend,
        chats: Chats,
        in_flight: OpensInFlight,
        opening: Opening,
        ending: Ending,
        speech: Speech,
        pending: PendingWrites,
        polling: Polling,
        timers: Timers,
        typing: TypingForwarder,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._chats = chats
        self._in_flight = in_flight
        self._opening = opening
        self._ending = ending
        self._speech = speech
        self._pending = pending
        self._polling = polling
        self._timers = timers
        self._typing = typing
        #: One message of a conversation at a time, whichever door it came through.
        self.turns = ConversationLocks()

    async def handle(
        self, payload: UserPayload, on_new_message: OnNewMessage, claims: Optional[Claims], input_channel: str
    ) -> Messages:
        """This turn's replies for a valid message (``input_channel``: the
        door's name, recorded on the user's message).

        Raises ``StoreUnavailable`` when the store cannot say whether the
        conversation is in handoff, ``ConversationBusy`` when an earlier
        message of it holds it longer than ``OPEN_WAIT_S``; nothing happened
        then, and the message never reaches Rasa."""
        arrived = asyncio.get_running_loop().time()
        async with self.turns.hold(payload.sender, OPEN_WAIT_S):
            chat = await self._chats.active_chat(payload.sender)
            if chat is not None:
                if payload.attachment is None and not self._is_command(payload.message):
                    return await self.forward(chat, payload.message)  # the common case, one await less
                return await self._to_agent(chat, payload, on_new_message, input_channel)
            if self._in_flight.failed_for(payload.sender, arrived):
                # Sent for the agent while the chat was opening; the open failed.
                return await self._speech.say(payload.sender, "message_not_delivered")
            return await self._to_bot(payload, on_new_message, arrived, claims, input_channel)

    async def _to_agent(
        self, chat: LiveChat, payload: UserPayload, on_new_message: OnNewMessage, input_channel: str
    ) -> Messages:
        if payload.attachment is not None:
            return await self.forward(chat, payload.message, payload.attachment)
        command = payload.message.lower()
        if command == RESTART_COMMAND:
            # No hand-back turn: the restart wipes what it would say.
            replies = await self._ending.end_by_user(chat, hand_back=False)
            if not chat.ended:  # the end could not be saved: still with the agent
                return replies
            return replies + (await self._bot_turn(payload, on_new_message, input_channel)).messages
        if command in self._settings.end_chat_commands:
            return await self._ending.end_by_user(chat)
        return await self.forward(chat, payload.message)

    def _is_command(self, message: str) -> bool:
        command = message.lower()
        return command == RESTART_COMMAND or command in self._settings.end_chat_commands

    async def _to_bot(
        self, payload: UserPayload, on_new_message: OnNewMessage, arrived: float, claims: Optional[Claims], input_channel: str
    ) -> Messages:
        collector = await self._bot_turn(payload, on_new_message, input_channel)
        replies: Messages = list(collector.messages)
        if collector.handoff is not None:
            requester = requester_of(
                payload.sender, claims, payload.metadata, trust_metadata=self._settings.trust_frontend_metadata
            )
            # A file alone names the request rather than opening a chat with no text (Connect refuses one).
            opening_text = payload.message or (payload.attachment.name if payload.attachment else "")
            request = handoff_request(payload.sender, collector.handoff, opening_text, payload.metadata, requester)
            replies += await self._opening.start(request, in_request=True, requested_at=arrived)
        return replies

    async def _bot_turn(self, payload: UserPayload, on_new_message: OnNewMessage, input_channel: str) -> Any:
        metadata = dict(payload.metadata)
        if payload.attachment is not None:
            # Outside a handoff a file is the bot's business: its text runs
            # through NLU as usual and the file waits in the metadata for a
            # custom action (docs/http-api.md).
            metadata["attachment"] = payload.attachment.wire()
        return await run_turn(on_new_message, payload.sender, payload.message, input_channel, metadata)

    async def forward(self, chat: LiveChat, text: str, attachment: Optional[UserAttachment] = None) -> Messages:
        """Send one user message (and file) to the agent. Returns what to answer the request with."""
        async with chat.send_lock:
            if chat.ended:
                # The chat ended while this message waited its turn.
                return await self._speech.say(chat.sender_id, "message_not_delivered")
            try:
                if attachment is None:
                    await self._backend.send(chat.ref, text)
                else:
                    await self._backend.send_attachment(chat.ref, text, attachment, self._settings.attachment_policy)
            except AttachmentRefused as refused:
                # Nothing was sent; the chat goes on. ServiceNow would have dropped it without a word.
                assert attachment is not None
                logger.info("A file for ServiceNow chat %s was refused: %s", chat.chat_id, refused.reason)
                return await self._speech.say(
                    chat.sender_id, "attachment_refused", **refusal_placeholders(attachment, self._settings)
                )
            except ServiceNowError as error:
                logger.warning("Could not deliver a message to ServiceNow chat %s: %s", chat.chat_id, error)
                return await self._ending.end(chat, EndReason.FAILED, in_request=True, undelivered=True)
        if self._settings.record_user_messages:
            # Coalesced with the agent's messages; the end of the chat takes
            # them into its own write, ahead of the hand-back turn.
            self._pending.save_later(chat.sender_id, [user_message_event(text, chat.chat_id)])
        self._polling.note_activity(chat)
        if self._settings.user_idle_timeout and chat.agent_joined:
            await self._timers.user_wrote(chat)
        return []

    async def start_out_of_band(self, sender_id: str, options: Mapping[str, Any], *, in_request: bool = False) -> Messages:
        """A handoff the bot asked for outside a user's message (Rasa's HTTP
        API, a hand-back turn)."""
        return await self._opening.start(out_of_band_request(sender_id, options), in_request=in_request)

    async def end_by_bot(self, sender_id: str) -> Messages:
        """End the sender's handoff because the bot said so (the end payload
        in a turn Rasa ran outside a request); nothing when none is live."""
        try:
            chat = await self._chats.active_chat(sender_id)
        except (StoreUnavailable, ConversationBusy) as error:
            logger.error("Could not end the handoff of conversation %s as the bot asked: %s", sender_id, error)
            return []
        if chat is None:
            logger.info("The bot asked to end the handoff of conversation %s, which has none.", sender_id)
            return []
        return await self._ending.end(chat, EndReason.BOT_ENDED, in_request=False)

    async def user_typing(self, sender_id: str, typing: bool) -> bool:
        """Pass the user's typing state to the agent, debounced; False when
        there is no live chat or the API cannot show it. Never ends the chat,
        and never reads a tracker: the store's record decides (another
        replica may have started the chat). ``StoreUnavailable`` when the
        store cannot say."""
        chat = await self._chats.refresh(sender_id)
        if chat is None or not self._backend.shows_typing:
            return False
        self._typing.note(chat, typing)
        return True
