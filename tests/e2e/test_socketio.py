"""The socket.io front door end to end: ``rasa run`` with
``connectors.servicenow.ServiceNowSocketIOInput`` (Connect, polled by the
emulator), and python-socketio's ``AsyncClient`` speaking Rasa's socketio
protocol as rasa-webchat does."""

import asyncio
import time
import uuid
from typing import Iterator

import jwt
import pytest
import yaml

from tests.e2e.conftest import TEXTS, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, wait_for
from tests.e2e.socketio_client import SocketUser

CHANNEL = "connectors.servicenow.ServiceNowSocketIOInput"
JWT_KEY = "socketio-test-secret"
GREETING = "Thank you for contacting support"


def socket_options(emulator, callback, **overrides):
    options = channel_options(emulator, callback, "connect", session_persistence=True, **overrides)
    del options["callback_url"]  # a socket.io frontend has no callback URL
    del options["chat_page"]
    return options


@pytest.fixture(scope="module")
def sio_rasa(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    server = RasaServer(e2e_dir, demo_model, socket_options(emulator, callback), name="rasa-socketio", channel=CHANNEL)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_rasa(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    options = socket_options(emulator, callback, jwt_key=JWT_KEY)
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-socketio-jwt", channel=CHANNEL)
    server.start()
    yield server
    server.stop()


async def connected(server: RasaServer, session_id=None, **connect) -> SocketUser:
    user = SocketUser(server.url)
    await user.connect(**connect)
    await user.start_session(session_id)
    return user


async def until(condition, what: str = "condition", timeout: float = 15.0):
    """``wait_for`` in a thread: the socket.io client's loop must keep running meanwhile."""
    return await asyncio.to_thread(wait_for, condition, timeout, 0.05, what)


async def chat_of(server: RasaServer, session_id: str) -> str:
    return await until(lambda: server.slots(session_id)["live_chat_id"], what="the live chat id")


async def start_handoff(server: RasaServer, emulator, user: SocketUser) -> str:
    await user.say("talk to live agent")
    await user.wait_for_text(lambda text: text == TEXTS.connecting)
    chat = await chat_of(server, user.session_id)
    emulator.accept(chat)
    await user.wait_for_text(lambda text: text.startswith(GREETING))
    return chat


def bot_texts(server: RasaServer, session_id: str) -> list:
    return [event.get("text") for event in server.tracker(session_id)["events"] if event["event"] == "bot"]


def agent_received(emulator, chat: str) -> list:
    return [m["message"] for m in emulator.transcript(chat) if m["created_by"] == "rasa.integration"]


async def test_a_handoff_over_socketio(sio_rasa, emulator):
    user = await connected(sio_rasa)
    try:
        await user.say("hello")
        await user.wait_for_text(lambda text: text.startswith("Hello! I'm the virtual assistant"))

        chat = await start_handoff(sio_rasa, emulator, user)
        # Status events of their own, which stock widgets ignore.
        assert user.of("servicenow_handoff")[0] == {
            "active": True, "chat_id": chat, "api": "connect", "agent_joined": False
        }

        # During the handoff the user's messages go to the agent, never to NLU.
        await user.say("my printer is on fire")
        await until(lambda: "my printer is on fire" in agent_received(emulator, chat), what="the message at the agent")
        # The agent's reply arrives without user input.
        emulator.say(chat, "Have you tried turning it off?")
        await user.wait_for_text(lambda text: text == "Have you tried turning it off?")

        await user.say("/end_chat")
        await user.wait_for_text(lambda text: text == TEXTS.user_ended)
        await user.wait(lambda: any(not status["active"] for status in user.of("servicenow_handoff")))
        await user.say("hello")
        await user.wait(lambda: user.texts().count(next(t for t in user.texts() if t.startswith("Hello!"))) == 2)
        assert sio_rasa.slots(user.session_id)["handoff_active"] is False
    finally:
        await user.disconnect()


async def test_a_reconnect_with_the_same_session_replays_what_was_missed_once(sio_rasa, emulator):
    user = await connected(sio_rasa)
    session = user.session_id
    chat = await start_handoff(sio_rasa, emulator, user)
    emulator.say(chat, "before the reload")
    await user.wait_for_text(lambda text: text == "before the reload")
    await user.disconnect()  # the page reloads

    emulator.say(chat, "during the reload 1")
    emulator.say(chat, "during the reload 2")
    # Polled and put in the outbox while no socket is connected (the tracker records what was relayed).
    await until(lambda: "during the reload 2" in bot_texts(sio_rasa, session), what="the relay of the agent's messages")

    again = await connected(sio_rasa, session)
    try:
        assert again.session_id == session
        await again.wait_for_text(lambda text: text == "during the reload 2")
        emulator.say(chat, "after the reload")
        await again.wait_for_text(lambda text: text == "after the reload")
        shown = [t for t in again.texts() if "reload" in t]
        # Nothing the first socket showed, each missed item once, in order.
        assert shown == ["during the reload 1", "during the reload 2", "after the reload"]
        await again.say("/end_chat")
        await again.wait_for_text(lambda text: text == TEXTS.user_ended)
    finally:
        await again.disconnect()


async def test_two_sessions_are_isolated(sio_rasa, emulator):
    alice = await connected(sio_rasa)
    bob = await connected(sio_rasa)
    try:
        chat = await start_handoff(sio_rasa, emulator, alice)
        emulator.say(chat, "for alice only")
        await alice.wait_for_text(lambda text: text == "for alice only")
        await bob.say("hello")
        await bob.wait_for_text(lambda text: text.startswith("Hello!"))
        assert not [t for t in bob.texts() if t == "for alice only" or t.startswith(GREETING)]
        assert bob.of("servicenow_handoff") == []
        # Bob cannot speak for Alice's session: his socket never confirmed it.
        await bob.client.emit("user_uttered", {"message": "hijack", "session_id": alice.session_id})
        await bob.wait(lambda: bob.of("servicenow_error"), what="the refusal")
        assert bob.of("servicenow_error")[0]["reason"] == "NoSession"
        assert "hijack" not in agent_received(emulator, chat)
        await alice.say("/end_chat")
        await alice.wait_for_text(lambda text: text == TEXTS.user_ended)
    finally:
        await alice.disconnect()
        await bob.disconnect()


def token(subject: str, key: str = JWT_KEY) -> str:
    return jwt.encode({"sub": subject, "exp": int(time.time()) + 600}, key, algorithm="HS256")


async def test_jwt_a_wrong_or_missing_token_is_refused(jwt_rasa):
    import socketio

    for auth in (None, {"token": token("someone", key="not-the-key")}, {"token": "garbage"}):
        user = SocketUser(jwt_rasa.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await user.connect(auth=auth)
        assert not user.client.connected


async def test_jwt_a_valid_token_speaks_for_its_subject(jwt_rasa):
    subject = f"jwt-{uuid.uuid4().hex[:8]}"
    # rasa-webchat asks for whatever id it stored; the token decides.
    user = await connected(jwt_rasa, "some-other-session", auth={"token": f"Bearer {token(subject)}"})
    try:
        assert user.session_id == subject
        await user.say("hello")
        await user.wait_for_text(lambda text: text.startswith("Hello!"))
        assert jwt_rasa.tracker(subject)["latest_message"]["text"] == "hello"
    finally:
        await user.disconnect()


@pytest.fixture(scope="module")
def both_doors(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    """One ``rasa run`` with both doors and no redis_url; Virtual Agent pushes to the webhook door's callback."""
    options = channel_options(emulator, callback, "virtual_agent")
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-both-doors")
    # The same ServiceNow options (that is what makes the doors share one core), plus a socketio one.
    socket_section = {**options, "session_persistence": True}
    server.credentials.write_text(yaml.safe_dump({"connectors.servicenow.ServiceNowInput": options, CHANNEL: socket_section}))
    server.start()
    yield server
    server.stop()


async def test_both_doors_in_one_process_share_the_handoff(both_doors, emulator, callback):
    point_emulator_at(emulator, both_doors)  # callbacks reach the webhook door only
    user = await connected(both_doors)
    try:
        await user.say("talk to live agent")
        await user.wait_for_text(lambda text: text == TEXTS.connecting)
        chat = await chat_of(both_doors, user.session_id)
        emulator.accept(chat)
        await user.wait_for_text(lambda text: text.startswith(GREETING))
        emulator.say(chat, "pushed to the other door")
        await user.wait_for_text(lambda text: text == "pushed to the other door")
        # The webhook door sees the same live chat: its message goes to the agent, not to NLU.
        assert await asyncio.to_thread(both_doors.say, user.session_id, "via the webhook") == []
        await until(
            lambda: "via the webhook" in [m["message"] for m in emulator.transcript(chat) if m["created_by"] == user.session_id],
            what="the webhook message at the agent",
        )
        await user.say("/end_chat")
        await user.wait_for_text(lambda text: text == TEXTS.user_ended)
    finally:
        await user.disconnect()
