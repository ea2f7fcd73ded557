"""The socket.io door's parts that need no server: payload shapes, options,
the outbox reader's delivered-up-to pointer, and what a socket hears when
its message could not be handled."""

import asyncio
from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest

from connectors.servicenow import ServiceNowSocketIOInput
from connectors.servicenow.delivery import HANDOFF_EVENT, TYPING_EVENT, OutboundItem, Outbox, Outgoing
from connectors.servicenow.errors import ConfigurationError, StoreUnavailable
from connectors.servicenow.shared_delivery import SharedOutbox
from connectors.servicenow.socket_sink import SOCKET_SINK, SessionPointers, SessionReader
from connectors.servicenow.config import SocketIOSettings
from connectors.servicenow.socketio_channel import socketio_events, socketio_messages
from connectors.servicenow.store import MemoryStore
from connectors.servicenow.texts import UserTexts

BASE_OPTIONS = {"instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q1"}


# -- shapes --------------------------------------------------------------------


def test_text_is_split_at_blank_lines_as_rasa_does():
    assert socketio_messages({"text": "one\n\ntwo"}) == [{"text": "one"}, {"text": "two"}]


def test_choices_are_quick_replies_on_the_last_part():
    message = {"text": "Hi\n\nPick one", "buttons": [{"title": "Yes", "payload": "yes"}, {"title": "No", "payload": "no"}]}
    assert socketio_messages(message) == [
        {"text": "Hi"},
        {
            "text": "Pick one",
            "quick_replies": [
                {"content_type": "text", "title": "Yes", "payload": "yes"},
                {"content_type": "text", "title": "No", "payload": "no"},
            ],
        },
    ]


def test_an_image_is_an_image_attachment_after_its_text():
    assert socketio_messages({"text": "A photo", "image": "https://x/p.png"}) == [
        {"text": "A photo"},
        {"attachment": {"type": "image", "payload": {"src": "https://x/p.png"}}},
    ]
    assert socketio_messages({"text": "", "image": "https://x/p.png"}) == [
        {"attachment": {"type": "image", "payload": {"src": "https://x/p.png"}}}
    ]


def test_a_link_is_markdown_text_and_a_video_link_a_video():
    assert socketio_messages({"text": "The KB article", "attachment": "https://x/kb"}) == [
        {"text": "[The KB article](https://x/kb)"}
    ]
    assert socketio_messages({"text": "https://x/kb", "attachment": "https://x/kb"}) == [{"text": "https://x/kb"}]
    assert socketio_messages({"text": "How to", "attachment": "https://x/howto.mp4"}) == [
        {"text": "How to"},
        {"attachment": {"type": "video", "payload": {"src": "https://x/howto.mp4"}}},
    ]


def test_no_extra_keys_reach_the_widget():
    # rasa-webchat tells a text message by its keys: metadata and recipient_id stay out.
    message = {"recipient_id": "u1", "text": "Hi", "metadata": {"source": "agent"}}
    assert socketio_messages(message) == [{"text": "Hi"}]


def test_a_bots_custom_payload_is_emitted_as_rasa_does_and_servicenows_rich_items_as_their_text():
    assert socketio_messages({"custom": {"data": {"foo": 1}}}) == [{"foo": 1}]
    assert socketio_messages({"text": "Hi", "custom": {"data": {"foo": 1}}}) == [{"text": "Hi"}, {"foo": 1}]
    agent_html = {"text": "shown", "custom": {"html": "<b>shown</b>"}, "metadata": {"source": "agent"}}
    assert socketio_messages(agent_html) == [{"text": "shown"}]


def test_typing_and_status_are_events_of_their_own():
    typing = OutboundItem("1-0", TYPING_EVENT, {"recipient_id": "u1", "typing": True})
    status = OutboundItem("2-0", HANDOFF_EVENT, {"recipient_id": "u1", "handoff": {"active": False, "chat_id": "c"}})
    message = OutboundItem("3-0", "message", {"recipient_id": "u1", "text": "hi"})
    assert socketio_events(typing, "bot_uttered") == [("servicenow_typing", {"typing": True})]
    assert socketio_events(status, "bot_uttered") == [("servicenow_handoff", {"active": False, "chat_id": "c"})]
    assert socketio_events(message, "out") == [("out", {"text": "hi"})]


# -- options -------------------------------------------------------------------


def test_rasas_socketio_options_have_rasas_defaults():
    assert SocketIOSettings.from_credentials({}) == SocketIOSettings(
        user_message_evt="user_uttered",
        bot_message_evt="bot_uttered",
        namespace=None,
        session_persistence=False,
        socketio_path="/socket.io",
        metadata_key="metadata",
    )


@pytest.mark.parametrize(
    "options",
    [
        {"bot_message_evt": "session_confirm"},
        {"user_message_evt": "same", "bot_message_evt": "same"},
        {"socketio_path": "socket.io"},
        {"session_persistence": "maybe"},
        {"user_message_evt": 3},
    ],
)
def test_bad_socketio_options_stop_the_start(options):
    with pytest.raises(ConfigurationError):
        SocketIOSettings.from_credentials(options)


def test_the_channel_takes_both_kinds_of_options_and_still_refuses_unknown_ones():
    channel = ServiceNowSocketIOInput.from_credentials(
        {**BASE_OPTIONS, "session_persistence": "true", "bot_message_evt": "bot", "metadata_key": "customData"}
    )
    assert channel.socket.session_persistence is True
    assert channel.socket.bot_message_evt == "bot"
    assert channel.settings.queue_id == "q1"
    assert channel.name() == "servicenow_socketio" != "servicenow"
    with pytest.raises(ConfigurationError, match="sesion_persistence"):
        ServiceNowSocketIOInput.from_credentials({**BASE_OPTIONS, "sesion_persistence": True})


# -- the reader's pointer --------------------------------------------------------


class Sockets:
    """What the reader emits to; ``connected`` says whether a socket is there."""

    def __init__(self) -> None:
        self.connected = True
        self.shown: List[str] = []
        self.changed = asyncio.Event()

    async def emit(self, item: OutboundItem) -> bool:
        if not self.connected:
            return False
        self.shown.append(item.payload["text"])
        self.changed.set()
        return True

    async def until_shown(self, count: int) -> None:
        async def wait() -> None:
            while len(self.shown) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), 5)


def say(text: str) -> Outgoing:
    return Outgoing({"recipient_id": "s1", "text": text})


@pytest.fixture(params=["in-process", "shared"])
def outbox(request):
    if request.param == "in-process":
        return Outbox(None)
    return SharedOutbox(MemoryStore(), None, owner="r1")


async def test_a_session_that_comes_back_gets_what_it_missed_once(outbox):
    pointers = SessionPointers()
    first = Sockets()
    reader = SessionReader(outbox, "s1", first.emit, pointers)
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 5)
    await outbox.put("s1", [say("one"), say("two")])
    await first.until_shown(2)
    task.cancel()  # the last socket disconnected
    await asyncio.gather(task, return_exceptions=True)

    await outbox.put("s1", [say("three"), say("four")])  # while the page reloads

    again = Sockets()
    reader = SessionReader(outbox, "s1", again.emit, pointers)
    task = asyncio.ensure_future(reader.run())
    await again.until_shown(2)
    await outbox.put("s1", [say("five")])
    await again.until_shown(3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert first.shown == ["one", "two"]
    assert again.shown == ["three", "four", "five"]


async def test_an_item_no_socket_took_stays_for_the_next_one(outbox):
    pointers = SessionPointers()
    gone = Sockets()
    gone.connected = False  # disconnected before the reader noticed
    reader = SessionReader(outbox, "s1", gone.emit, pointers)
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 5)
    await outbox.put("s1", [say("one")])
    await asyncio.wait_for(task, 5)  # the reader stops without moving the pointer
    if isinstance(outbox, SharedOutbox):
        assert await outbox.store.sink_position("s1", SOCKET_SINK) is None
    else:
        assert pointers.get("s1") is None

    back = Sockets()
    task = asyncio.ensure_future(SessionReader(outbox, "s1", back.emit, pointers).run())
    await back.until_shown(1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert back.shown == ["one"]


def test_pointers_are_bounded():
    pointers = SessionPointers(kept=2)
    for session in ("a", "b", "c"):
        pointers.set(session, "x-1")
    assert len(pointers) == 2 and pointers.get("a") is None


# -- a message that could not be handled ------------------------------------------


class RecordingServer:
    def __init__(self) -> None:
        self.emitted: List[Tuple[str, Any, Any]] = []

    async def emit(self, event: str, data: Any = None, room: Any = None, **_: Any) -> None:
        self.emitted.append((event, data, room))


async def test_a_store_failure_is_an_error_notice_never_the_bot():
    channel = ServiceNowSocketIOInput.from_credentials({**BASE_OPTIONS, "session_persistence": True})
    channel.sio = RecordingServer()
    channel.bind(SimpleNamespace(ctx=SimpleNamespace(agent=SimpleNamespace(is_ready=lambda: True))))
    channel._session_of["sid1"] = "s1"

    async def store_down(*_: Any, **__: Any) -> list:
        raise StoreUnavailable("redis is down")

    channel.front.handle = store_down
    bot_turns: List[Any] = []

    async def rasa(message: Any) -> None:
        bot_turns.append(message)

    await channel._handle_message("sid1", {"message": "hello", "session_id": "s1"}, rasa)
    assert bot_turns == []
    assert channel.sio.emitted == [
        (
            "servicenow_error",
            {"reason": "StoreUnavailable", "message": "The message was not handled; send it again shortly.", "retry_after": 2},
            "sid1",
        ),
        ("bot_uttered", {"text": UserTexts().message_not_handled}, "sid1"),
    ]
    await channel.http.aclose()


async def test_a_socket_cannot_speak_for_a_session_it_did_not_confirm():
    channel = ServiceNowSocketIOInput.from_credentials({**BASE_OPTIONS, "session_persistence": True})
    channel.sio = RecordingServer()
    channel._session_of["sid1"] = "s1"
    await channel._handle_message("sid1", {"message": "hello", "session_id": "someone-else"}, None)
    await channel._handle_message("sid1", "not an object", None)
    assert [data["reason"] for event, data, _room in channel.sio.emitted] == ["NoSession", "InvalidMessage"]
    await channel.http.aclose()


# -- both doors in one process ---------------------------------------------------


async def test_the_two_doors_share_one_core_whichever_comes_first():
    from connectors.servicenow import ServiceNowInput

    for first, second in ((ServiceNowInput, ServiceNowSocketIOInput), (ServiceNowSocketIOInput, ServiceNowInput)):
        options = {**BASE_OPTIONS, "queue_id": f"shared-{first.__name__}"}
        owner, other = first.from_credentials(options), second.from_credentials(options)
        assert owner.owns_core and not other.owns_core
        assert other.handoffs is owner.handoffs and other.outbox is owner.outbox and other.store is owner.store
        assert other.front.turns is owner.front.turns  # one message of a conversation at a time, either door
        # Each door records its own name on the user's messages.
        assert {owner.front.input_channel, other.front.input_channel} == {"servicenow", "servicenow_socketio"}
        await owner.http.aclose()
    # Other options: a core of its own.
    alone = ServiceNowInput.from_credentials({**BASE_OPTIONS, "queue_id": "another-queue"})
    assert alone.owns_core
    await alone.http.aclose()
