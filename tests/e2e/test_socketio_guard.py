"""Hostile socket.io clients against a real ``rasa run`` with the socket.io
door (issue 22): input that the webhook refuses is refused here too, with an
error event to the socket and nothing in the log but a line."""

import asyncio
import json
from typing import Iterator

import pytest

from tests.e2e.harness import RasaServer
from tests.e2e.socketio_client import SocketUser
from tests.e2e.test_socketio import CHANNEL, connected, socket_options


@pytest.fixture(scope="module")
def sio_guarded(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    server = RasaServer(e2e_dir, demo_model, socket_options(emulator, callback), name="rasa-socketio-guard", channel=CHANNEL)
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
