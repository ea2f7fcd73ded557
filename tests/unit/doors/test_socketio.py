"""The socket.io door's parts that need no server: options, what a socket
hears when its message could not be handled, and a core shared with the
webhook door."""

from types import SimpleNamespace
from typing import Any, List, Tuple

import pytest

from connectors.servicenow import ServiceNowSocketIOInput
from connectors.servicenow.config import SocketIOSettings
from connectors.servicenow.errors import ConfigurationError, StoreUnavailable
from connectors.servicenow.texts import UserTexts

BASE_OPTIONS = {"instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q1"}


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

    channel.core.router.handle = store_down
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
    await channel.core.http.aclose()


async def test_a_socket_cannot_speak_for_a_session_it_did_not_confirm():
    channel = ServiceNowSocketIOInput.from_credentials({**BASE_OPTIONS, "session_persistence": True})
    channel.sio = RecordingServer()
    channel._session_of["sid1"] = "s1"
    await channel._handle_message("sid1", {"message": "hello", "session_id": "someone-else"}, None)
    await channel._handle_message("sid1", "not an object", None)
    assert [data["reason"] for event, data, _room in channel.sio.emitted] == ["NoSession", "InvalidMessage"]
    await channel.core.http.aclose()


# -- both doors in one process ---------------------------------------------------


async def test_the_two_doors_share_one_core_whichever_comes_first():
    from connectors.servicenow import ServiceNowInput

    for first, second in ((ServiceNowInput, ServiceNowSocketIOInput), (ServiceNowSocketIOInput, ServiceNowInput)):
        options = {**BASE_OPTIONS, "queue_id": f"shared-{first.__name__}"}
        owner, other = first.from_credentials(options), second.from_credentials(options)
        # One core: one registry, outbox and store, and one message of a conversation at a time, either door.
        assert other.core is owner.core and other.core.router.turns is owner.core.router.turns
        # Each door records its own name on the user's messages.
        assert {owner.routes.door, other.routes.door} == {"servicenow", "servicenow_socketio"}
        # A second door of one kind is another process's worth: a core of its own.
        again = first.from_credentials(options)
        assert again.core is not owner.core
        await owner.core.http.aclose()
        await again.core.http.aclose()
    # Other options: a core of its own.
    alone = ServiceNowInput.from_credentials({**BASE_OPTIONS, "queue_id": "another-queue"})
    assert alone.core is not owner.core
    await alone.core.http.aclose()
