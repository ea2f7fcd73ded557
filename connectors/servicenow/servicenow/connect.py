"""Connect Support, the legacy live-chat API that older instances run.

Endpoints (reconstructed from ServiceNow's own Connect UI; see the README):

* ``POST /api/now/connect/support/queues/{queue}/sessions {"message"}`` opens a
  chat; ``result.group`` is the conversation id (``live_chat_id``).
* ``POST /api/now/connect/conversations/{group}/messages {"message"}`` sends.
* ``GET  /api/now/connect/conversations/{group}/messages[?before=ms]`` reads,
  newest first, one page at a time.
* ``POST /api/now/connect/support/sessions/{group}/leave`` ends the chat.
* ``GET  /api/now/connect/support/sessions?group_id=`` gives the session state.

Agent replies are only visible by polling. New messages are told apart by
``sys_id``, not by time: several can share a timestamp, and one can be
committed after a newer one was already read.
"""

import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import quote, urljoin

from connectors.servicenow.attachments import (
    ATTACHMENT_UPLOAD_PATH,
    CONNECT_ATTACHMENT_TABLE,
    AttachmentPolicy,
    UserAttachment,
    agent_file_fields,
)
from connectors.servicenow.servicenow.base import (
    AgentEvent,
    AgentJoined,
    AgentMessage,
    SEEN_IDS_KEPT,
    Backend,
    ChatClosed,
    ChatRef,
    CloseReason,
    Cursor,
    HandoffRequest,
    OpenedChat,
    PollResult,
    QueueStatus,
    SentMessage,
    SystemNotice,
    chat_path_segment,
    checked_chat_id,
    is_valid_chat_id,
)
from connectors.servicenow.servicenow.http import ServiceNowHTTP, as_dict, result_of
from connectors.servicenow.config import CONNECT_API, ServiceNowSettings
from connectors.servicenow.errors import ServiceNowRejected
from connectors.servicenow.urls import is_web_url

logger = logging.getLogger(__name__)

SYSTEM_AUTHOR = "system"
# KB0598883: "has left" when the agent closes first, "has closed" when the
# agent closes after the requester left. An agent-to-agent transfer is
# announced with "has left" too, followed by "<B> has joined" and with the
# session still open, which is how the two are told apart.
END_OF_CHAT_TEXT = re.compile(r"has (left|closed) the support session", re.IGNORECASE)
LEFT_TEXT = re.compile(r"has left the support session", re.IGNORECASE)
JOINED_TEXT = re.compile(r"has joined the support session", re.IGNORECASE)
OPEN_TRANSFER_STATES = ("pending", "accepted")
CLOSED_STATES = {
    3: CloseReason.AGENT_CLOSED,
    4: CloseReason.ESCALATED,
    7: CloseReason.AGENT_CLOSED,
    8: CloseReason.ABANDONED,
}
# A message committed this long after a newer one was read still counts as new.
LATE_COMMIT_WINDOW_MS = 60_000.0
# Connect's page size is not documented (the emulator's is 25). A page shorter
# than this, or than the longest page seen, is the start of the thread.
MIN_FULL_PAGE = 20
_MENTION = re.compile(r"@M\[[^|\]]*\|([^\]]*)\]")
_LINK = re.compile(r"@L\[([^|\]]*)\|([^\]]*)\]")


class ConnectBackend(Backend):
    api = CONNECT_API
    pulls = True

    def __init__(self, settings: ServiceNowSettings, http: ServiceNowHTTP) -> None:
        self._settings = settings
        self._http = http
        # With Basic auth or the password grant we know who we are; with the
        # client-credentials grant the instance tells us on the first chat.
        self._user: Optional[str] = settings.username
        self._full_page = MIN_FULL_PAGE

    async def open_chat(self, request: HandoffRequest, chat_id: Optional[str] = None) -> OpenedChat:
        queue = request.queue_id or self._settings.queue_id
        entry = as_dict(
            result_of(
                await self._http.request(
                    "POST",
                    f"/api/now/connect/support/queues/{quote(str(queue), safe='')}/sessions",
                    json_body={"message": request.text},
                )
            )
        )
        group = entry.get("group")
        if not group:
            raise ServiceNowRejected("Connect opened a session without a conversation 'group'", status=200)
        if not is_valid_chat_id(str(group)):
            raise ServiceNowRejected("Connect opened a session with a malformed conversation 'group'", status=200)
        if self._user is None:
            self._user = await self._requester_of(str(group))
        return OpenedChat(chat_id=str(group), user=self._user)

    async def send(self, chat: ChatRef, text: str) -> SentMessage:
        message = as_dict(
            result_of(
                await self._http.request(
                    "POST", f"/api/now/connect/conversations/{chat_path_segment(chat.chat_id)}/messages", json_body={"message": text}
                )
            )
        )
        return SentMessage(message_id=_str_or_none(message.get("sys_id")), timestamp=_timestamp(message))

    async def send_attachment(
        self, chat: ChatRef, text: str, attachment: UserAttachment, policy: AttachmentPolicy
    ) -> SentMessage:
        # Connect messages carry attachment sys_ids, not URLs: the file goes to
        # the Attachment API first, on the conversation's record [I table].
        data = await policy.download(attachment, self._http.fetch_session())
        record = as_dict(
            result_of(
                await self._http.request(
                    "POST",
                    ATTACHMENT_UPLOAD_PATH,
                    params={
                        "table_name": CONNECT_ATTACHMENT_TABLE,
                        "table_sys_id": checked_chat_id(chat.chat_id),
                        "file_name": attachment.name,
                    },
                    raw_body=data,
                    content_type=attachment.content_type,
                )
            )
        )
        attachment_id = _str_or_none(record.get("sys_id"))
        if attachment_id is None:
            raise ServiceNowRejected("ServiceNow stored the attachment without a 'sys_id'", status=200)
        message = as_dict(
            result_of(
                await self._http.request(
                    "POST",
                    f"/api/now/connect/conversations/{chat_path_segment(chat.chat_id)}/messages",
                    json_body={"message": text or attachment.name, "attachments": [attachment_id]},
                )
            )
        )
        return SentMessage(message_id=_str_or_none(message.get("sys_id")), timestamp=_timestamp(message))

    async def leave(self, chat: ChatRef) -> None:
        await self._http.request("POST", f"/api/now/connect/support/sessions/{chat_path_segment(chat.chat_id)}/leave", json_body={})

    async def unavailable_reason(self, queue_id: Optional[str]) -> Optional[str]:
        """The queue's ``not_available`` flag (reference 1.3): true, or the
        reason text some instances give. One ``GET .../queues``."""
        queue = str(queue_id or self._settings.queue_id)
        entries = result_of(await self._http.request("GET", "/api/now/connect/support/queues"))
        for entry in entries or []:
            if isinstance(entry, dict) and entry.get("sys_id") == queue:
                flag = entry.get("not_available")
                if isinstance(flag, str):
                    flag = flag.strip()
                    if flag.lower() in ("", "false", "0"):
                        return None
                    return "not available" if flag.lower() in ("true", "1") else flag
                return "not available" if flag else None
        return None

    async def queue_status(self, chat: ChatRef) -> QueueStatus:
        """``position`` and the wait estimate of the chat's queue entry while it
        waits (state 1). The estimate is ``average_wait_time``: the entry's
        ``wait_time`` is how long it has waited so far, not how long it will."""
        entry = await self._session_entry(chat)
        if entry is None or _int_or_none(entry.get("state")) != 1:
            return QueueStatus(waiting=False)
        position = _int_or_none(entry.get("position"))
        return QueueStatus(
            waiting=True,
            position=position if position and position > 0 else None,
            wait_time=entry.get("average_wait_time") or None,
        )

    async def check_closed(self, chat: ChatRef) -> Optional[ChatClosed]:
        entry = await self._session_entry(chat)
        if entry is None:
            return ChatClosed(CloseReason.NOT_FOUND)
        state = _int_or_none(entry.get("state"))
        reason = CLOSED_STATES.get(state) if state is not None else None
        return ChatClosed(reason) if reason else None

    async def _session_entry(self, chat: ChatRef) -> Optional[Dict[str, Any]]:
        entries = result_of(
            await self._http.request("GET", "/api/now/connect/support/sessions", params={"group_id": checked_chat_id(chat.chat_id)})
        )
        return next(
            (entry for entry in entries or [] if isinstance(entry, dict) and entry.get("group") == chat.chat_id),
            None,
        )

    async def _transfer_in_progress(self, chat: ChatRef) -> bool:
        """A lone "has left" is a close unless the session is still open and being transferred."""
        entry = await self._session_entry(chat)
        return (
            entry is not None
            and _int_or_none(entry.get("state")) not in CLOSED_STATES
            and str(entry.get("transfer_state") or "") in OPEN_TRANSFER_STATES
        )

    async def poll(self, chat: ChatRef, cursor: Cursor) -> PollResult:
        try:
            fetched, requests = await self._fetch_since_cursor(chat.chat_id, cursor)
        except ServiceNowRejected as error:
            # The thread of a closed or vanished session can become unreadable;
            # that is an end of chat, not a fault, if the session says so.
            if error.status not in (403, 404):
                raise
            closed = await self.check_closed(chat)
            if closed is None:
                raise
            return PollResult([closed], cursor.last_updated, cursor.seen_ids, requests=2)
        new = [message for message in fetched if _is_new(message, cursor)]
        events = self._events(chat, new)
        if _ends_with_left(events) and await self._transfer_in_progress(chat):
            events = self._events(chat, new, transfer=True)
            requests += 1
        newest = max((_timestamp(message) or 0.0 for message in fetched), default=None)
        last_updated = max(filter(None, (cursor.last_updated, newest)), default=None)
        return PollResult(
            events=events,
            last_updated=last_updated,
            seen_ids=_seen_ids(fetched, cursor.seen_ids, last_updated),
            requests=requests,
        )

    async def _fetch_since_cursor(self, chat_id: str, cursor: Cursor) -> Tuple[List[Dict[str, Any]], int]:
        """Newest page first; older pages only while a whole page is newer than
        the cursor, and the page was full (a short page is the whole thread, so
        a new chat's first poll costs one request, not two).

        ``before`` is exclusive, so the next page asks for one millisecond more
        and drops the repeats: a page boundary inside a group of messages that
        share a timestamp would otherwise skip some of them.
        """
        fetched: List[Dict[str, Any]] = []
        fetched_ids: Set[str] = set()
        before: Optional[float] = None
        requests = 0
        while True:
            page = await self._messages(chat_id, before)
            requests += 1
            self._full_page = max(self._full_page, len(page))
            fresh = [message for message in page if _message_id(message) not in fetched_ids]
            if not fresh:
                break
            fetched.extend(fresh)
            fetched_ids.update(_message_id(message) for message in fresh)
            timestamps = [_timestamp(message) or 0.0 for message in fresh]
            if cursor.last_updated is not None and min(timestamps) <= cursor.last_updated:
                break
            if len(page) < self._full_page:
                break
            before = min(timestamps) + 1
        return fetched, requests

    async def _messages(self, group: str, before: Optional[float]) -> List[Dict[str, Any]]:
        params = {"before": str(int(before))} if before is not None else None
        result = result_of(
            await self._http.request("GET", f"/api/now/connect/conversations/{chat_path_segment(group)}/messages", params=params)
        )
        return [message for message in result or [] if isinstance(message, dict) and _message_id(message)]

    async def _requester_of(self, group: str) -> Optional[str]:
        thread = await self._messages(group, None)
        oldest = min(thread, key=lambda message: _timestamp(message) or 0.0, default=None)
        return _str_or_none(oldest.get("created_by")) if oldest else None

    def _events(
        self, chat: ChatRef, messages: Sequence[Dict[str, Any]], *, transfer: bool = False
    ) -> List[AgentEvent]:
        # Pages come newest first; reversing keeps the order ServiceNow stored
        # messages that share a timestamp, and the stable sort does the rest.
        ordered = sorted(reversed(messages), key=lambda message: _timestamp(message) or 0.0)
        own = {name for name in (chat.user, self._user) if name}
        events: List[AgentEvent] = []
        for index, message in enumerate(ordered):
            author = message.get("created_by")
            if author in own or message.get("reflected_field") == "work_notes":
                continue
            message_id = _message_id(message)
            timestamp = _timestamp(message) or 0.0
            text = _plain_text(message)
            if author == SYSTEM_AUTHOR:
                handed_over = LEFT_TEXT.search(text) and (transfer or _someone_joins(ordered[index + 1 :]))
                if END_OF_CHAT_TEXT.search(text) and not handed_over:
                    events.append(ChatClosed(CloseReason.AGENT_CLOSED, text, message_id, timestamp))
                    break
                joined = JOINED_TEXT.search(text)
                if joined:
                    # "<Agent> has joined the support session": the agent's arrival, said to the stream too.
                    events.append(AgentJoined(text[: joined.start()].strip() or None))
                events.append(SystemNotice(message_id, text, timestamp))
            else:
                agent = _str_or_none(message.get("sender_name")) or author
                files = _files(message, self._http.base_url)
                # A file sent alone carries its name as the text: not said twice.
                said = bool(text) and text not in {name for name, _, _ in files}
                if said:
                    events.append(AgentMessage(message_id, text, agent, timestamp))
                for index, (_, file_text, rich) in enumerate(files):
                    # One message per file; ids stay stable across polls for the dedupe.
                    file_id = f"{message_id}-{index}" if said or index else message_id
                    events.append(AgentMessage(file_id, file_text, agent, timestamp, rich))
        return events


def _files(message: Dict[str, Any], base_url: str) -> List["tuple[Optional[str], str, Dict[str, Any]]"]:
    """An agent message's ``attachments`` as (file name, text, Rasa fields). Each is
    an attachment record [I shape: ``sys_id``, ``file_name``, ``content_type``];
    its link is the record's own when given, else the instance's download URL,
    which needs a ServiceNow login on a real instance (docs/http-api.md)."""
    entries = message.get("attachments")
    files = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        sys_id = _str_or_none(entry.get("sys_id"))
        link = next(
            (entry[key] for key in ("download_link", "url", "link") if isinstance(entry.get(key), str) and entry[key]),
            None,
        )
        if link is None and sys_id and is_valid_chat_id(sys_id):
            link = f"{base_url}/sys_attachment.do?sys_id={sys_id}"
        if link is not None:
            # A record's link may be relative to the instance; anything that is not then a plain web URL is no link.
            link = urljoin(base_url + "/", link)
        if not is_web_url(link):
            continue
        name = _str_or_none(entry.get("file_name"))
        text, fields = agent_file_fields(link, _str_or_none(entry.get("content_type")), name)
        files.append((name, text, fields))
    return files


def _someone_joins(messages: Sequence[Dict[str, Any]]) -> bool:
    return any(
        message.get("created_by") == SYSTEM_AUTHOR and JOINED_TEXT.search(_plain_text(message)) for message in messages
    )


def _ends_with_left(events: Sequence[AgentEvent]) -> bool:
    return bool(events) and isinstance(events[-1], ChatClosed) and bool(LEFT_TEXT.search(events[-1].text or ""))


def _is_new(message: Dict[str, Any], cursor: Cursor) -> bool:
    if _message_id(message) in cursor.seen_ids:
        return False
    if cursor.last_updated is None:
        return True
    return (_timestamp(message) or 0.0) >= cursor.last_updated - LATE_COMMIT_WINDOW_MS


def _seen_ids(
    fetched: Sequence[Dict[str, Any]], previous: Sequence[str], last_updated: Optional[float]
) -> Tuple[str, ...]:
    """Ids inside the late-commit window, newest first, then older ones still remembered."""
    floor = (last_updated or 0.0) - LATE_COMMIT_WINDOW_MS
    recent = [
        _message_id(message)
        for message in sorted(fetched, key=lambda message: _timestamp(message) or 0.0, reverse=True)
        if (_timestamp(message) or 0.0) >= floor
    ]
    kept = list(dict.fromkeys(recent + list(previous)))
    return tuple(kept[:SEEN_IDS_KEPT])


def _message_id(message: Dict[str, Any]) -> str:
    return str(message.get("sys_id") or message.get("id") or "")


def _timestamp(message: Dict[str, Any]) -> Optional[float]:
    value = message.get("timestamp")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _plain_text(message: Dict[str, Any]) -> str:
    text = message.get("message")
    if isinstance(text, str) and text.strip():
        return text.strip()
    formatted = message.get("formatted_message")
    if not isinstance(formatted, str):
        return ""
    formatted = _MENTION.sub(r"\1", formatted)
    formatted = _LINK.sub(lambda match: f"{match.group(2)} ({match.group(1)})", formatted)
    return formatted.strip()


def _str_or_none(value: Any) -> Optional[str]:
    return str(value) if value not in (None, "") else None


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
