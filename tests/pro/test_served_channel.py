"""Both doors served the way ``rasa run`` mounts channels (Rasa's own
``register`` on a real Sanic server on loopback), against the ServiceNow
emulator process, on both ServiceNow APIs, with the demo assistant: the
webhook, the SSE stream, the callback URL, Virtual Agent's pushes, the
hand-back turn and the socket.io door. Written for whichever Rasa runs the
suite; the Rasa Pro suite is where it matters (sanic 25, Rasa Pro's channel
base classes, tracker and lock stores)."""

import asyncio
import json
import socket
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import requests

from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO, RASA_NAME
from connectors.servicenow.texts import UserTexts
from tests.e2e.conftest import WEBHOOK_SECRET, channel_options
from tests.e2e.harness import CallbackReceiver, Emulator, wait_for
from tests.e2e.socketio_client import SocketUser
from tests.pro.served import ServedChannel

# The Rasa 3.6 suite serves the channel with `rasa run` itself (tests/e2e).
pytestmark = pytest.mark.skipif(not IS_RASA_PRO, reason="Rasa Pro suite only; Rasa 3.6 runs tests/e2e with rasa run")
TEXTS = UserTexts()
GREETING = "Thank you for contacting support"
RATING = "How was your chat with the agent?"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module", params=("connect", "virtual_agent"))
def served(request, emulator, callback, demo_model, logs) -> Iterator[ServedChannel]:
    backend = request.param
    options = channel_options(emulator, callback, backend, metrics=True)
    server = ServedChannel(logs / f"{backend}.log", options, demo_model).wait_until_serving()
    if backend == "virtual_agent":
        emulator.configure(
            va_callback_url=f"{server.url}/webhooks/servicenow/callback",
            va_callback_auth={"X-Webhook-Secret": WEBHOOK_SECRET},
            va_callback_retries=2,
            va_callback_retry_delay_ms=300,
        )
    server.backend = backend  # type: ignore[attr-defined]
    yield server
    server.stop()


def say(server: ServedChannel, sender: str, text: str) -> List[Dict[str, Any]]:
    answer = requests.post(f"{server.url}/webhooks/servicenow/webhook", json={"sender": sender, "message": text}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def slots(server: ServedChannel, sender: str) -> Dict[str, Any]:
    return server.slots(sender)


def start_live(server: ServedChannel, emulator: Emulator, callback: CallbackReceiver, sender: str) -> str:
    assert [reply["text"] for reply in say(server, sender, "talk to live agent")] == [TEXTS.connecting]
    chat = slots(server, sender)["live_chat_id"]
    assert chat
    emulator.accept(chat)
    callback.wait_for_text(sender, lambda text: text.startswith(GREETING))
    return chat


def test_routes_are_mounted_under_webhooks_servicenow(served):
    routes = served.routes()
    for path in ("/webhooks/servicenow/webhook", "/webhooks/servicenow/stream", "/webhooks/servicenow/callback"):
        assert path in routes, routes
    # sanic 25 would have used the blueprint's second argument (the module path) as its prefix.
    assert not [path for path in routes if "connectors" in path], routes
    assert requests.get(f"{served.url}/webhooks/servicenow/", timeout=10).status_code == 200
    assert requests.get(f"{served.url}/webhooks/servicenow", timeout=10).status_code == 200


def test_a_handoff_round_trip_on_the_installed_rasa(served, emulator, callback):
    sender = f"pro-{uuid.uuid4().hex[:8]}"
    assert say(served, sender, "hi")[0]["text"].startswith("Hello! I'm the virtual assistant")
    chat = start_live(served, emulator, callback, sender)
    assert slots(served, sender)["handoff_active"] is True

    assert say(served, sender, "my VPN is down") == []  # to the agent, not to the bot
    requester = "rasa.integration" if served.backend == "connect" else sender
    wait_for(lambda: "my VPN is down" in [m["message"] for m in emulator.transcript(chat) if m["created_by"] == requester],
             what="the user's message at the agent")
    emulator.say(chat, "Have you tried turning it off and on?")
    callback.wait_for_text(sender, lambda text: text == "Have you tried turning it off and on?")

    emulator.close(chat)
    # The end notice, then the hand-back turn (the demo asks for a rating), out of band.
    callback.wait_for_text(sender, lambda text: text == RATING)
    texts = callback.texts(sender)
    assert texts.index(TEXTS.agent_closed) < texts.index(RATING)
    values = slots(served, sender)
    assert values["handoff_active"] is False and values["handoff_end_reason"] == "agent_closed"
    assert say(served, sender, "hi")[0]["text"].startswith("Hello!")


def test_the_stream_delivers_agent_replies(served, emulator, callback):
    sender = f"sse-{uuid.uuid4().hex[:8]}"
    chat = start_live(served, emulator, callback, sender)
    stream = requests.get(f"{served.url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True, timeout=30)
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    received: List[Dict[str, Any]] = []

    def read() -> None:
        try:
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    received.append(json.loads(line[5:]))
        except (requests.exceptions.RequestException, AttributeError, ValueError):
            pass  # the test closed the stream under the reader

    threading.Thread(target=read, daemon=True).start()
    emulator.say(chat, "streamed hello")
    wait_for(lambda: any(item.get("text") == "streamed hello" for item in received), what="the streamed reply")
    stream.close()
    say(served, sender, "/end_chat")


def test_metrics_count_the_handoffs(served):
    body = requests.get(f"{served.url}/webhooks/servicenow/metrics", timeout=10).text
    started = [line for line in body.splitlines() if line.startswith("servicenow_handoff_handoffs_started_total")]
    assert started and any(float(line.rsplit(" ", 1)[1]) >= 1 for line in started), body[:2000]


def test_the_user_ending_gets_the_notice_in_the_answer(served, emulator, callback):
    sender = f"end-{uuid.uuid4().hex[:8]}"
    start_live(served, emulator, callback, sender)
    assert [reply["text"] for reply in say(served, sender, "/end_chat")] == [TEXTS.user_ended]
    assert slots(served, sender)["handoff_end_reason"] == "user_ended"


def raw_post(server: ServedChannel, framing: List[str]) -> Dict[str, Any]:
    """A POST to the webhook with these framing headers, and its answer (status and JSON body)."""
    head = ["POST /webhooks/servicenow/webhook HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            "Connection: close", *framing]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b'{"sender": "u", "message": "hi"}')
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return {"status": int(status_line.split()[1]), "body": json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")}


@pytest.mark.parametrize("framing, status, reason", [
    (["Transfer-Encoding: gzip"], 400, "InvalidHeaders"),
    (["Content-Length: 99999999999"], 413, "PayloadTooLarge"),
    (["Content-Length: 3 2"], 400, "InvalidHeaders"),
    (["Content-Length: +32"], 400, "InvalidHeaders"),
])
def test_a_body_framed_as_the_channel_refuses_gets_its_error_envelope(served, framing, status, reason):
    # sanic 25 answers a Transfer-Encoding it cannot frame with its own plain 400; the doors answer in JSON.
    answer = raw_post(served, framing)
    assert answer["status"] == status, answer
    assert answer["body"]["status"] == "failure" and answer["body"]["reason"] == reason, answer


@pytest.fixture(scope="module")
def socket_served(emulator, callback, demo_model, logs) -> Iterator[ServedChannel]:
    options = channel_options(emulator, callback, "connect", session_persistence=True)
    del options["callback_url"], options["chat_page"]
    server = ServedChannel(
        logs / "socketio.log", options, demo_model, channel="connectors.servicenow.ServiceNowSocketIOInput"
    ).wait_until_serving()
    yield server
    server.stop()


async def test_the_socketio_door_hands_over_and_back(socket_served, emulator):
    assert "/webhooks/servicenow_socketio/callback" in socket_served.routes()
    user = SocketUser(socket_served.url)
    await user.connect()
    session = await user.start_session(f"sio-{uuid.uuid4().hex[:8]}")
    await user.say("talk to live agent")
    await user.wait_for_text(lambda text: text == TEXTS.connecting)
    chat = await asyncio.to_thread(lambda: wait_for(lambda: slots(socket_served, session)["live_chat_id"], what="the chat id"))
    await asyncio.to_thread(emulator.accept, chat)
    await user.wait_for_text(lambda text: text.startswith(GREETING))
    await asyncio.to_thread(emulator.say, chat, "Hello from the agent")
    await user.wait_for_text(lambda text: text == "Hello from the agent")
    await user.say("/end_chat")
    await user.wait_for_text(lambda text: text == TEXTS.user_ended)
    await user.disconnect()


def test_the_suite_names_its_rasa():
    assert RASA_NAME.startswith("Rasa Pro 3.")
