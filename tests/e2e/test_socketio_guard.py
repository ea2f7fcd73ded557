"""Hostile socket.io clients against a real ``rasa run`` with the socket.io
door (issue 22): input that the webhook refuses is refused here too, with an
error event to the socket and nothing in the log but a line; one client
cannot use up the sockets of all, and a message for a session without a
socket waits for its next one."""

import asyncio
import json
from typing import Iterator

import pytest
import requests

from tests.e2e.conftest import TEXTS
from tests.e2e.harness import RasaServer
from tests.e2e.socketio_client import SocketUser
from tests.e2e.test_socketio import CHANNEL, bot_texts, connected, socket_options, start_handoff, until

#: Sockets one client address may hold open (``max_streams_per_client``).
CLIENT_SOCKETS = 3
#: Sockets (tabs) of one session (``max_streams_per_sender``).
SESSION_SOCKETS = 2
#: Another loopback address: another client, as far as the server can tell.
OTHER_CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def sio_guarded(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    options = socket_options(emulator, callback, max_streams_per_client=CLIENT_SOCKETS, max_streams_per_sender=SESSION_SOCKETS)
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-socketio-guard", channel=CHANNEL)
    server.start()
    yield server
    server.stop()


def nested(depth: int, leaf: str = '"x"') -> str:
    """JSON text nested ``depth`` deep, written out (a client's encoder would refuse to build it)."""
    return '{"a":' * depth + leaf + "}" * depth


def log_lines(server: RasaServer) -> int:
    return len(server.log_path.read_text(errors="replace").splitlines())


async def send_raw(user: SocketUser, event_json: str) -> None:
    """One socket.io EVENT packet, as text, past the client's own encoder."""
    await user.client.eio.send("2" + event_json)


@pytest.mark.parametrize(
    "packet, reason",
    [
        ('["user_uttered",{"message":"hi","session_id":"%s","metadata":' + nested(5000) + "}]", "InvalidJSON"),
        ('["user_uttered",{"message":"hi","session_id":"%s","metadata":' + nested(900) + "}]", "InvalidJSON"),
        ('["user_uttered",{"message":"hi","session_id":"%s","metadata":{"n":1e999}}]', "InvalidJSON"),
        ('["user_uttered",{"message":"hi","session_id":"%s","metadata":{"n":NaN}}]', "InvalidJSON"),
        ('["user_uttered",{"message":"\\ud800","session_id":"%s"}]', "InvalidText"),
        ('["user_uttered",{"message":"' + "x" * 70_000 + '","session_id":"%s"}]', "PayloadTooLarge"),
        # Rasa's channel also takes metadata as a JSON string: the same rules apply to it.
        ('["user_uttered",{"message":"hi","session_id":"%s","metadata":' + json.dumps(nested(5000)) + "}]", "InvalidMetadata"),
    ],
    ids=["5000-deep", "900-deep", "1e999", "NaN", "lone-surrogate", "70-KB", "5000-deep-string"],
)
async def test_what_the_webhook_refuses_the_socket_refuses_with_an_error_event(sio_guarded, packet, reason):
    user = await connected(sio_guarded)
    try:
        before = log_lines(sio_guarded)
        await send_raw(user, packet % user.session_id)
        await user.wait(lambda: user.of("servicenow_error"), what="the error event")
        assert user.of("servicenow_error")[0]["reason"] == reason
        # The socket still works, and the bot heard nothing of the refused message.
        await user.say("hello")
        await user.wait_for_text(lambda text: text.startswith("Hello!"))
        assert sio_guarded.tracker(user.session_id)["latest_message"]["text"] == "hello"
        log = sio_guarded.log_path.read_text(errors="replace")
        assert "RecursionError" not in log and "Traceback" not in log
        assert log_lines(sio_guarded) - before < 20  # not thousands of lines per message
    finally:
        await user.disconnect()


async def test_a_connect_whose_auth_data_fails_the_checks_is_refused_with_the_reason(sio_guarded):
    import socketio

    refused = asyncio.get_running_loop().create_future()
    client = socketio.AsyncClient(reconnection=False)
    client.on("connect_error", lambda data: refused.done() or refused.set_result(data))
    deep = json.loads(nested(40))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(sio_guarded.url, auth={"token": deep}, transports=["websocket"], wait_timeout=10)
    # socket.io clients get it as the error's message and data (JavaScript: err.message, err.data).
    assert (await asyncio.wait_for(refused, 10))["data"]["reason"] == "InvalidJSON"


# -- capacity (issue 22 item 4) ------------------------------------------------


def sio_health(server: RasaServer) -> dict:
    return requests.get(f"{server.url}/webhooks/servicenow_socketio/", timeout=10).json()


async def refused_connect(server: RasaServer) -> dict:
    """Connect, expecting a refusal: what the client's ``connect_error`` carries."""
    import socketio

    refused = asyncio.get_running_loop().create_future()
    client = socketio.AsyncClient(reconnection=False)
    client.on("connect_error", lambda data: refused.done() or refused.set_result(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(server.url, transports=["websocket"], wait_timeout=10)
    return await asyncio.wait_for(refused, 10)


async def no_sockets(server: RasaServer) -> None:
    await until(lambda: sio_health(server)["open_streams"] == 0, what="the earlier tests' sockets to close")


async def test_a_client_over_its_socket_cap_is_refused_at_connect_with_the_reason(sio_guarded):
    """The review: one client opened 1,000 sessions (and readers) in 3.6 s."""
    await no_sockets(sio_guarded)
    flood = [await connected(sio_guarded) for _ in range(CLIENT_SOCKETS)]
    try:
        data = (await refused_connect(sio_guarded))["data"]
        assert data["reason"] == "TooManyClientStreams" and data["retry_after"] > 0, data
        assert str(CLIENT_SOCKETS) in data["message"]
        counts = sio_health(sio_guarded)
        assert (counts["open_streams"], counts["socketio_sockets"], counts["socketio_readers"]) == (CLIENT_SOCKETS,) * 3
        # Another client is not held up by this one.
        other = SocketUser(sio_guarded.url, source_address=OTHER_CLIENT)
        await other.connect()
        await other.start_session()
        await other.say("hello")
        await other.wait_for_text(lambda text: text.startswith("Hello!"))
        await other.disconnect()
    finally:
        for user in flood:
            await user.disconnect()
    await no_sockets(sio_guarded)
    again = await connected(sio_guarded)  # room again once they closed
    await again.disconnect()


async def test_an_agents_message_for_a_session_without_a_socket_waits_for_its_next_one(sio_guarded, emulator):
    """The review: with the readers used up, an agent's message was relayed
    to nobody and dropped. Here the session's socket is refused while the
    client is at its cap; the message waits and comes with the next socket."""
    await no_sockets(sio_guarded)
    user = await connected(sio_guarded)
    session = user.session_id
    others = []
    try:
        chat = await start_handoff(sio_guarded, emulator, user)
        await user.disconnect()  # the page reloads; meanwhile the client's other tabs take every socket
        others = [await connected(sio_guarded) for _ in range(CLIENT_SOCKETS)]
        emulator.say(chat, "while you were away")
        await until(lambda: "while you were away" in bot_texts(sio_guarded, session), what="the relay of the message")
        assert (await refused_connect(sio_guarded))["data"]["reason"] == "TooManyClientStreams"
        await others.pop().disconnect()
        await until(lambda: sio_health(sio_guarded)["open_streams"] == CLIENT_SOCKETS - 1, what="a socket to close")
        back = await connected(sio_guarded, session)
        try:
            await back.wait_for_text(lambda text: text == "while you were away")
            await back.say("/end_chat")
            await back.wait_for_text(lambda text: text == TEXTS.user_ended)
        finally:
            await back.disconnect()
    finally:
        for other in others:
            await other.disconnect()


async def test_a_session_over_its_socket_cap_is_told_why_and_disconnected(sio_guarded):
    await no_sockets(sio_guarded)
    tabs = [await connected(sio_guarded)]
    session = tabs[0].session_id
    try:
        tabs.append(await connected(sio_guarded, session))
        extra = SocketUser(sio_guarded.url)
        await extra.connect()  # the session is not known at connect: counted for the client only
        await extra.client.emit("session_request", {"session_id": session})
        await extra.wait(lambda: extra.of("servicenow_error"), what="the refusal")
        refusal = extra.of("servicenow_error")[0]
        assert refusal["reason"] == "TooManyStreams" and refusal["retry_after"] > 0, refusal
        assert not extra.of("session_confirm")
        await until(lambda: not extra.client.connected, what="the server to disconnect the extra tab")
        await extra.disconnect()
        await until(lambda: sio_health(sio_guarded)["open_streams"] == SESSION_SOCKETS, what="the extra tab counted out")
        # The session's own tabs go on.
        await tabs[1].say("hello")
        await tabs[1].wait_for_text(lambda text: text.startswith("Hello!"))
    finally:
        for tab in tabs:
            await tab.disconnect()
