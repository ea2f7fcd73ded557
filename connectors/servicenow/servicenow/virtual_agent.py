"""The Virtual Agent Bot Integration API, the current way for an outside bot
to hand a user to Agent Chat.

Every call is a ``POST /api/sn_va_as_service/bot/integration`` that ServiceNow
answers at once with ``{"status": "success"}``; what the agent (or the virtual
agent) says comes later as callbacks to this channel's ``/callback`` route.
Nothing is polled.

Callbacks are correlated by the echoed ``clientSessionId`` (the chat id, one
per handoff), and carry the Rasa conversation in ``clientVariables`` so a
callback can be placed even before the chat is known to this process.
"""

import hashlib
import hmac
import html
import logging
import re
import secrets
import time
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional

from connectors.servicenow.attachments import AttachmentPolicy, UserAttachment
from connectors.servicenow.servicenow.base import (
    AgentEvent,
    AgentJoined,
    AgentMessage,
    AgentTyping,
    Backend,
    Callback,
    ChatClosed,
    ChatRef,
    CloseReason,
    HandoffRequest,
    OpenedChat,
    SentMessage,
    SystemNotice,
    Turn,
    checked_chat_id,
    is_valid_chat_id,
)
from connectors.servicenow.servicenow.http import ServiceNowHTTP, compact_json
from connectors.servicenow.config import VIRTUAL_AGENT_API, ServiceNowSettings
from connectors.servicenow.errors import ServiceNowRejected
from connectors.servicenow.payloads import MAX_CALLBACK_BYTES, PayloadError, decode_json, is_valid_sender
from connectors.servicenow.urls import is_web_url

logger = logging.getLogger(__name__)

INTEGRATION_PATH = "/api/sn_va_as_service/bot/integration"


def now_ms() -> float:
    return time.time() * 1000
#: ``clientVariables`` entry that carries the Rasa conversation id through ServiceNow.
SENDER_VARIABLE = "rasa_sender_id"
# Agent Chat's texts for the end of a live chat (async-chat.md); the
# structured signals (SwitchToVirtualAgent, completed, takeControl) come first.
CLOSED_TEXT = re.compile(r"has closed the support session|the support session was closed", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


class CallbackError(ValueError):
    """A callback body that is not a Virtual Agent response."""


class VirtualAgentBackend(Backend):
    api = VIRTUAL_AGENT_API
    pulls = False
    wants_history = True
    shows_typing = True

    def __init__(self, settings: ServiceNowSettings, http: ServiceNowHTTP) -> None:
        self._settings = settings
        self._http = http

    def reserve_chat_id(self) -> Optional[str]:
        return uuid.uuid4().hex

    # -- calls to ServiceNow -------------------------------------------------

    async def open_chat(self, request: HandoffRequest, chat_id: Optional[str] = None) -> OpenedChat:
        chat_id = chat_id or uuid.uuid4().hex
        metadata = request.metadata
        # Who the user is was settled by the channel (verified token, trusted
        # frontend, or the sender id); the metadata is never asked again here.
        user_id = request.requester.user_id or request.sender_id
        body = self._envelope(chat_id, user_id, request.sender_id)
        body.update(
            action="AGENT",
            message=_message(request.text),
            contextVariables=self._context_variables(request),
        )
        if request.requester.email:
            body["emailId"] = request.requester.email
        timezone = _first_text(metadata, "timezone")
        if timezone:
            body["timezone"] = timezone
        if request.history:
            body["history"] = [_history_entry(turn, request.requester.name) for turn in request.history]
        await self._post(body)
        return OpenedChat(chat_id=chat_id, user=user_id, opened_at=now_ms())

    async def send(self, chat: ChatRef, text: str) -> SentMessage:
        body = self._envelope(chat.chat_id, chat.user or chat.sender_id, chat.sender_id)
        body["message"] = _message(text)
        await self._post(body)
        return SentMessage(message_id=None, timestamp=now_ms())

    async def send_attachment(
        self, chat: ChatRef, text: str, attachment: UserAttachment, policy: AttachmentPolicy
    ) -> SentMessage:
        # ServiceNow fetches the file from the URL itself and drops, silently,
        # what it does not take: the checks come first.
        await policy.check_size(attachment, self._http.fetch_session())
        body = self._envelope(chat.chat_id, chat.user or chat.sender_id, chat.sender_id)
        body["message"] = {**_message(text), "attachment": attachment_wire(attachment)}
        await self._post(body)
        return SentMessage(message_id=None, timestamp=now_ms())

    async def leave(self, chat: ChatRef) -> None:
        # The API wants END_CONVERSATION with an empty text.
        await self._action(chat, "END_CONVERSATION", message=_message(""))

    async def abort(self, chat: ChatRef, cause: str) -> None:
        await self._action(chat, "FAULT_CONVERSATION", message=_message(""), cause=cause)

    async def send_typing(self, chat: ChatRef, typing: bool) -> bool:
        # ServiceNow's order: TYPING while the user types, VIEWING once they stop.
        # One try: a typing indicator is stale by the time a retry could land.
        await self._action(chat, "TYPING" if typing else "VIEWING", attempts=1)
        return True

    async def report_delivery(self, chat: ChatRef, message_id: str, delivered: bool) -> None:
        status = "sent_to_user" if delivered else "external_error"
        await self._action(chat, "UPDATE_MESSAGES", message={"id": message_id, "status": status, "typed": True})

    async def _action(self, chat: ChatRef, action: str, *, attempts: Optional[int] = None, **fields: Any) -> None:
        body = self._envelope(chat.chat_id, chat.user or chat.sender_id, chat.sender_id)
        body.update(action=action, **fields)
        await self._post(body, attempts=attempts)

    def _envelope(self, chat_id: str, user_id: str, sender_id: str) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "requestId": _fresh_id(),
            "clientSessionId": checked_chat_id(chat_id),
            "userId": user_id,
            "botToBot": True,
            "timestamp": int(now_ms()),
            "clientVariables": {SENDER_VARIABLE: sender_id},
        }
        if self._settings.app_inbound_id:
            body["appInboundId"] = self._settings.app_inbound_id
        return body

    def _context_variables(self, request: HandoffRequest) -> Dict[str, Any]:
        variables: Dict[str, Any] = {}
        language = _first_text(request.metadata, "language", "locale") or self._settings.language
        if language:
            variables["requester_session_language"] = language
        variables.update(self._settings.context_variables)
        variables.update(request.context_variables)
        if request.queue_id:
            variables.setdefault("queue", request.queue_id)
        return variables

    async def _post(self, body: Mapping[str, Any], *, attempts: Optional[int] = None) -> None:
        headers = message_auth_headers(self._settings, body)
        answer = await self._http.request(
            "POST", INTEGRATION_PATH, json_body=body, extra_headers=headers, attempts=attempts
        )
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error") if isinstance(answer, dict) else None
            detail = str(error.get("message") or "") if isinstance(error, dict) else ""
            raise ServiceNowRejected(f"Virtual Agent refused {body.get('action') or 'the message'}", status=200, detail=detail)

    # -- callbacks from ServiceNow -------------------------------------------

    def parse_callback(self, payload: Mapping[str, Any]) -> Callback:
        """Total over any decoded JSON object: a ``Callback`` or a ``CallbackError``.

        Envelope fields that correlate (``clientSessionId``, ``body``) are
        checked strictly; inside an item, a field of the wrong type is
        treated as absent so one odd field does not drop the agent's message.
        """
        chat_id = payload.get("clientSessionId")
        if not isinstance(chat_id, str) or not chat_id:
            raise CallbackError("'clientSessionId' must be a non-empty string")
        if not is_valid_chat_id(chat_id):
            raise CallbackError("'clientSessionId' is not a chat id this channel issued")
        body = payload.get("body", [])
        if not isinstance(body, list):
            raise CallbackError("'body' must be a list")
        if not all(isinstance(item, dict) for item in body):
            raise CallbackError("every item of 'body' must be an object")
        client_variables = payload.get("clientVariables")
        sender = client_variables.get(SENDER_VARIABLE) if isinstance(client_variables, dict) else None
        if not is_valid_sender(sender):
            sender = None
        fingerprint = hashlib.sha1(
            compact_json({key: payload.get(key) for key in ("requestId", "interactionId", "body", "agentChat", "completed", "takeControl")})
        ).hexdigest()[:20]
        agent_chat = payload.get("agentChat") is True
        arrived = now_ms()
        events: List[AgentEvent] = []
        for index, item in enumerate(body):
            events.extend(_item_events(item, agent_chat, f"{fingerprint}-{index}", arrived))
        # The flags describe the whole callback, so they act after its items.
        if payload.get("completed") is True:
            events.append(ChatClosed(CloseReason.AGENT_CLOSED))
        if payload.get("takeControl") is True:
            events.append(ChatClosed(CloseReason.RETURNED))
        return Callback(chat_id=chat_id, sender_id=sender, fingerprint=fingerprint, events=events)


def message_auth_headers(settings: ServiceNowSettings, body: Mapping[str, Any]) -> Dict[str, str]:
    """ServiceNow "Message Auth" for one inbound call: the static ``token`` and
    the ``x-b2b-signature`` HMAC-SHA1 of the compact body ``ServiceNowHTTP`` sends."""
    headers: Dict[str, str] = {}
    if settings.message_token:
        headers["token"] = settings.message_token
    if settings.message_hash_secret:
        digest = hmac.new(settings.message_hash_secret.encode(), compact_json(body), hashlib.sha1)
        headers["x-b2b-signature"] = digest.hexdigest()
    return headers


def item_events(item: Mapping[str, Any], *, agent_chat: bool, fallback_id: str, arrived: float) -> List[AgentEvent]:
    """The events of one ``body`` item, exactly as a push with this ``agentChat``
    gives them; also for an item read back from its ``sys_cs_message`` record
    (va_records.py), so a recovered message is the message the push carried."""
    return list(_item_events(item, agent_chat, fallback_id, arrived))


def _item_events(item: Mapping[str, Any], agent_chat: bool, fallback_id: str, arrived: float) -> Iterable[AgentEvent]:
    ui_type = item.get("uiType")
    message_id = _str_or_none(item.get("messageId")) or fallback_id
    if ui_type == "ActionMsg":
        yield from _action_events(item, message_id, arrived)
        return
    text, rich = _content(item)
    if not text and not rich:
        return
    agent = item.get("agentInfo") if isinstance(item.get("agentInfo"), dict) else None
    if agent is not None and agent.get("sentFromAgent", True) is not False:
        yield AgentMessage(message_id, text, _str_or_none(agent.get("agentName")), arrived, rich)
    else:
        # "Please stand by ..." carries agentChat but no agent; without
        # agentChat it is the virtual agent itself talking.
        kind = "system" if agent_chat else "virtual_agent"
        yield SystemNotice(message_id, text, arrived, kind=kind, details=rich)


def _action_events(item: Mapping[str, Any], message_id: str, arrived: float) -> Iterable[AgentEvent]:
    action = _str_or_none(item.get("actionType")) or ""
    # Some releases name them "...ActionMsg" (va-whats-new.md); the wire uses the short form.
    if action.endswith("ActionMsg"):
        action = action[: -len("ActionMsg")]
    if action == "StartTypingIndicator":
        yield AgentTyping(True)
    elif action == "EndTypingIndicator":
        yield AgentTyping(False)
    elif action == "SwitchToLiveAgent":
        agent = item.get("agentInfo")
        name = _str_or_none(agent.get("agentName")) if isinstance(agent, dict) else None
        # Only a messageId ServiceNow gave: it names the message's record (va_records.py).
        yield AgentJoined(name, _str_or_none(item.get("messageId")))
    elif action == "SwitchToVirtualAgent":
        yield ChatClosed(CloseReason.AGENT_CLOSED, None, message_id, arrived)
    elif action == "System":
        text = _str_or_none(item.get("message")) or _str_or_none(item.get("value")) or ""
        if CLOSED_TEXT.search(text):
            yield ChatClosed(CloseReason.AGENT_CLOSED, text, message_id, arrived)
        elif text:
            yield SystemNotice(message_id, text, arrived)
    elif action == "StartSpinner" and item.get("spinnerType") == "wait_time":
        text = _str_or_none(item.get("message")) or "Routing you to a live agent..."
        wait_time = item.get("waitTime")
        details = {"wait_time": wait_time} if isinstance(wait_time, (str, int, float)) and wait_time else {}
        yield SystemNotice(message_id, text, arrived, kind="wait", details=details)
    # EndSpinner, SubscribeToSupportQueue, SubscribeToChatPresence and the like
    # only steer ServiceNow's own widget.


def _content(item: Mapping[str, Any]) -> "tuple[str, Dict[str, Any]]":
    """Text and Rasa message fields for one rich body item."""
    ui_type = item.get("uiType")
    value = item.get("value")
    label = _str_or_none(item.get("label")) or _str_or_none(item.get("header")) or ""
    if ui_type == "OutputText":
        return (value if isinstance(value, str) else label).strip(), {}
    if ui_type == "OutputImage":
        url = _url_of(value)
        return _str_or_none(item.get("altText")) or label, {"image": url} if url else {}
    if ui_type == "OutputLink":
        url = _url_of(value)
        return label or (url or ""), {"attachment": url} if url else {}
    if ui_type == "OutputHtml" and isinstance(value, str):
        return html.unescape(_TAG.sub(" ", value)).strip(), {"custom": {"html": value}}
    if ui_type == "OutputCard":
        card = _json_object(item.get("data")) or _json_object(value) or {}
        lines = [text for text in (_str_or_none(card.get(key)) for key in ("title", "subtitle")) if text]
        fields = card.get("fields")
        for entry in fields if isinstance(fields, list) else []:
            if isinstance(entry, dict):
                lines.append(f"{_str_or_none(entry.get('fieldLabel')) or ''}: {_str_or_none(entry.get('fieldValue')) or ''}")
        return "\n".join(lines) or label, {"custom": {"card": card}}
    options = item.get("options")
    if isinstance(options, list) and options:
        buttons = [
            {"title": title, "payload": _str_or_none(option.get("value")) or title}
            for option in options
            if isinstance(option, dict)
            for title in [_str_or_none(option.get("label")) or _str_or_none(option.get("value"))]
            if title
        ]
        return _str_or_none(item.get("promptMsg")) or label, {"buttons": buttons}
    if isinstance(value, str) and value.strip():
        return value.strip(), {}
    return label, ({"custom": {"servicenow": dict(item)}} if not label else {})


def attachment_wire(attachment: UserAttachment) -> Dict[str, Any]:
    """``message.attachment`` as the Bot Integration API takes it (the shape a
    working client, Mattermost's plugin, sends: one object)."""
    return {
        "clientAttachmentId": _fresh_id(),
        "url": attachment.url,
        "contentType": attachment.content_type,
        "fileName": attachment.name,
    }


def _history_entry(turn: Turn, user_name: Optional[str]) -> Dict[str, Any]:
    name = "Virtual Agent" if turn.from_bot else (user_name or "User")
    return {
        "displayName": name,
        "isBotMessage": turn.from_bot,
        "timestamp": str(int(turn.timestamp_ms)),
        "type": "text",
        "value": turn.text,
    }


def _message(text: str) -> Dict[str, Any]:
    return {"text": text, "typed": True, "clientMessageId": _fresh_id()}


def _fresh_id() -> str:
    """A request's or message's id: 32 random hex digits, as ``uuid4().hex``
    gives, without building a ``UUID`` in Python (two for every message)."""
    return secrets.token_hex(16)


def _first_text(metadata: Mapping[str, Any], *keys: str) -> Optional[str]:
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _url_of(value: Any) -> Optional[str]:
    """The item's web URL; None when it gives none, or one that is not a plain
    http(s) URL (a ``javascript:`` target, or newlines that smuggle Markdown)."""
    candidate = value
    if isinstance(value, dict):
        candidate = next((value[key] for key in ("action", "url", "link") if isinstance(value.get(key), str) and value[key]), None)
    return candidate if is_web_url(candidate) else None


def _json_object(value: Any) -> Optional[Dict[str, Any]]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        # A card sent as a JSON string is parsed with the same limits as a request body.
        try:
            decoded = decode_json(value.encode("utf-8", "surrogatepass"), max_bytes=MAX_CALLBACK_BYTES)
        except PayloadError:
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


def _str_or_none(value: Any) -> Optional[str]:
    """Text of a scalar field; None for absent, empty or structured values (not their repr)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None
