"""The socket.io front door on two replicas: two ``rasa run`` processes
with ``ServiceNowSocketIOInput``, the same ``redis_url``, a shared tracker
store and lock store, a real ``redis-server`` and the emulator (Virtual
Agent: ServiceNow pushes to replica B only).

Without ``redis-server`` these tests are skipped with a reason, unless
``REQUIRE_REDIS_TEST=1`` makes that a failure."""

from typing import Iterator, Tuple

import pytest

from tests.e2e.conftest import TEXTS, WEBHOOK_SECRET, channel_options
from tests.e2e.harness import RasaServer
from tests.e2e.test_replicas import redis, start_replicas  # noqa: F401 (the module's Redis fixture)
from tests.e2e.test_socketio import CHANNEL, GREETING, bot_texts, chat_of, connected, until

AGENT_TEXTS = ("one", "two", "while away", "after")


@pytest.fixture(scope="module")
def sio_replicas(e2e_dir, demo_model, emulator, callback, redis) -> Iterator[Tuple[RasaServer, RasaServer]]:  # noqa: F811
    options = channel_options(emulator, callback, "virtual_agent", session_persistence=True)
    del options["callback_url"], options["chat_page"]
    a, b = start_replicas(e2e_dir, demo_model, redis, options, "sio-replica", channel=CHANNEL)
    yield a, b
    a.stop()
    b.stop()


def push_to(emulator, server: RasaServer) -> None:
    emulator.configure(
        va_callback_url=f"{server.url}/webhooks/servicenow_socketio/callback",
        va_callback_auth={"X-Webhook-Secret": WEBHOOK_SECRET},
        va_callback_retries=2,
        va_callback_retry_delay_ms=300,
    )


async def test_agent_messages_received_by_b_are_shown_once_on_a_socket_on_a(sio_replicas, emulator):
    a, b = sio_replicas
    push_to(emulator, b)
    user = await connected(a)
    session = user.session_id
    # A second tab of the same session, connected to the other replica.
    tab = await connected(b, session)
    try:
        await user.say("talk to live agent")
        await user.wait_for_text(lambda text: text == TEXTS.connecting)
        # The turn ran on A; its replies reach the tab on B through the Redis manager.
        await tab.wait_for_text(lambda text: text == TEXTS.connecting)
        chat = await chat_of(a, session)
        emulator.accept(chat)
        await user.wait_for_text(lambda text: text.startswith(GREETING))
        for text in ("one", "two"):
            emulator.say(chat, text)  # pushed to B, emitted on A by A's reader
        await user.wait_for_text(lambda text: text == "two")
        await tab.wait_for_text(lambda text: text == "two")
        await tab.disconnect()

        await user.say("hello from A")
        await until(
            lambda: "hello from A" in [m["message"] for m in emulator.transcript(chat) if m["created_by"] == session],
            what="the user's message at the agent",
        )

        await user.disconnect()  # the page reloads...
        emulator.say(chat, "while away")
        await until(lambda: "while away" in bot_texts(b, session), what="B to store the agent's message")
        again = await connected(b, session)  # ...and the socket comes back on the other replica
        try:
            await again.wait_for_text(lambda text: text == "while away")
            emulator.say(chat, "after")
            await again.wait_for_text(lambda text: text == "after")
            await again.say("/end_chat")
            await again.wait_for_text(lambda text: text == TEXTS.user_ended)
            assert [t for t in again.texts() if t in AGENT_TEXTS] == ["while away", "after"]
        finally:
            await again.disconnect()
        # Each agent message once per socket, in order.
        assert [t for t in user.texts() if t in AGENT_TEXTS] == ["one", "two"]
        assert [t for t in tab.texts() if t in AGENT_TEXTS] == ["one", "two"]
        assert len([t for t in user.texts() if t.startswith(GREETING)]) == 1
    finally:
        for socket in (user, tab):
            if socket.client.connected:
                await socket.disconnect()
