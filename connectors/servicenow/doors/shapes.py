"""What an outbox item, or a bot reply, is on a socket: the shapes Rasa's
``SocketIOOutput`` emits and rasa-webchat renders."""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from connectors.servicenow.markdown import escape_text, web_url
from connectors.servicenow.outbox.base import HANDOFF_EVENT, TYPING_EVENT, OutboundItem

#: Handoff status (``{"active", "chat_id", "api", "agent_joined", "agent_name"?}``).
HANDOFF_STATUS_EVT = "servicenow_handoff"
#: The agent's typing state (``{"typing": true|false}``).
AGENT_TYPING_EVT = "servicenow_typing"
VIDEO_SUFFIXES = (".mp4", ".webm", ".ogg", ".mov")
VIDEO_HOSTS = ("youtube.com/", "youtu.be/", "vimeo.com/")
# Whose text may not carry Markdown links: what agents and ServiceNow wrote.
UNTRUSTED_SOURCES = ("agent", "system")


def socketio_events(item: OutboundItem, bot_message_evt: str) -> List[Tuple[str, Dict[str, Any]]]:
    """What an outbox item is on the socket: messages as ``bot_message_evt``,
    typing and handoff status as events of their own."""
    if item.kind == TYPING_EVENT:
        return [(AGENT_TYPING_EVT, {"typing": bool(item.payload.get("typing"))})]
    if item.kind == HANDOFF_EVENT:
        status = item.payload.get("handoff")
        return [(HANDOFF_STATUS_EVT, dict(status) if isinstance(status, Mapping) else {})]
    return [(bot_message_evt, message) for message in socketio_messages(item.payload)]


def socketio_messages(message: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """A Rasa bot message (``text``, ``buttons``, ``image``, ``attachment``,
    ``custom``) in the shapes Rasa's ``SocketIOOutput`` emits and
    rasa-webchat renders: each ``\\n\\n``-separated part of the text on its
    own, quick replies on the last part, images and videos as attachments,
    links as Markdown text.

    rasa-webchat renders text as Markdown and keeps any link scheme
    (``transformLinkUri: null``), so whatever the bot's author did not write
    (agents, ServiceNow, values ServiceNow filled into the channel's texts) is
    escaped, and every link is built from a validated URL (``markdown.py``)."""
    written = message.get("text")
    written = written.strip() if isinstance(written, str) else ""
    metadata = message.get("metadata")
    from_servicenow = isinstance(metadata, Mapping) and metadata.get("source") in UNTRUSTED_SOURCES
    text = written if markdown_allowed(message) else escape_text(written)
    attachment = message.get("attachment")
    link_url: Optional[str] = None
    if isinstance(attachment, str) and attachment:
        link_url = web_url(attachment)
        if link_url is None and not text:
            text = escape_text(attachment.strip())
    out: List[Dict[str, Any]] = []
    if link_url is not None and not is_video(link_url):
        # A link: its label as Markdown (rasa-webchat renders it as a link).
        text = f"[{text}]({link_url})" if text and written != attachment else link_url
    buttons = message.get("buttons")
    parts = [part for part in text.split("\n\n") if part.strip()] if text else []
    if isinstance(buttons, list) and buttons:
        parts = parts or [text]
        out.extend({"text": part} for part in parts[:-1])
        out.append({"text": parts[-1], "quick_replies": [quick_reply(button) for button in buttons if isinstance(button, dict)]})
    else:
        out.extend({"text": part} for part in parts)
    image = message.get("image")
    if isinstance(image, str) and image:
        source = web_url(image) if from_servicenow else image
        if source is not None:
            out.append({"attachment": {"type": "image", "payload": {"src": source}}})
    if link_url is not None and is_video(link_url):
        # rasa-webchat plays a video in an iframe: only a validated web URL reaches it.
        out.append({"attachment": {"type": "video", "payload": {"src": link_url}}})
    elif isinstance(attachment, dict) and not from_servicenow:
        out.append({"attachment": attachment})
    custom = message.get("custom")
    # A bot's custom payload goes out as Rasa's channel sends it (its ``data``);
    # ServiceNow's rich items (HTML, cards) only when their text said nothing.
    if isinstance(custom, dict) and (not from_servicenow or not out):
        out.append(custom["data"] if "data" in custom else custom)
    return out


def markdown_allowed(message: Mapping[str, Any]) -> bool:
    """Whether the message's text is the bot author's Markdown: not for what
    agents and ServiceNow wrote, nor for a channel text that a value from
    outside filled in (``metadata.markdown`` false, set by ``speech``)."""
    metadata = message.get("metadata")
    if not isinstance(metadata, Mapping):
        return True
    return metadata.get("source") not in UNTRUSTED_SOURCES and metadata.get("markdown") is not False


def quick_reply(button: Mapping[str, Any]) -> Dict[str, Any]:
    title = button.get("title")
    payload = button.get("payload", title)
    return {"content_type": "text", "title": title, "payload": payload}


def is_video(url: str) -> bool:
    lowered = url.lower().split("?", 1)[0]
    return lowered.endswith(VIDEO_SUFFIXES) or any(host in lowered for host in VIDEO_HOSTS)
