"""Two replicas of one deployment on Rasa Pro, served as ``rasa run`` mounts
the channel (tests/pro/serve.py), with what a deployment shares: the channel's
``redis_url``, Rasa Pro's ``RedisTrackerStore`` and ``RedisLockStore`` on a real
``redis-server``. A handoff opened on one replica continues on the other:
the user's message there reaches the agent, not the bot; the agent's replies
and the hand-back turn reach the user once. Without ``redis-server`` these
skip with the reason (a failure under .ci/run)."""

import uuid
from typing import Iterator, Tuple

import pytest
import requests

from connectors.servicenow.rasa_glue.versions import IS_RASA_PRO
from connectors.servicenow.texts import UserTexts
from tests.e2e.conftest import WEBHOOK_SECRET, channel_options
from tests.e2e.harness import wait_for
from tests.pro.served import ServedChannel
from tests.store.conftest import RedisServer, require_redis_server

pytestmark = pytest.mark.skipif(not IS_RASA_PRO, reason="Rasa Pro suite only; Rasa 3.6 runs tests/e2e/test_replicas.py")
TEXTS = UserTexts()
RATING = "How was your chat with the agent?"


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("pro-replicas-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis, emulator, callback) -> Iterator[Tuple[ServedChannel, ServedChannel]]:
    logs = tmp_path_factory.mktemp("pro-replica-logs")
    options = {**channel_options(emulator, callback, "virtual_agent"), "redis_url": redis.url, "redis_prefix": "pro:"}
    endpoints = {
        "tracker_store": {"type": "redis", "url": "127.0.0.1", "port": redis.port, "db": 2, "key_prefix": "pro"},
        "lock_store": {"type": "redis", "url": "127.0.0.1", "port": redis.port, "db": 3, "key_prefix": "pro"},
    }
    a = ServedChannel(logs / "a.log", options, None, endpoints=endpoints)
    b = ServedChannel(logs / "b.log", options, None, endpoints=endpoints)
    try:
        a.wait_until_serving()
        b.wait_until_serving()
        # ServiceNow pushes to one address; either replica takes the callback.
        emulator.configure(
            va_callback_url=f"{b.url}/webhooks/servicenow/callback",
            va_callback_auth={"X-Webhook-Secret": WEBHOOK_SECRET},
            va_callback_retries=2,
            va_callback_retry_delay_ms=300,
        )
        yield a, b
    finally:
        a.stop()
        b.stop()


def say(server: ServedChannel, sender: str, text: str):
    answer = requests.post(f"{server.url}/webhooks/servicenow/webhook", json={"sender": sender, "message": text}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_handoff_opened_on_one_replica_continues_on_the_other(replicas, emulator, callback):
    a, b = replicas
    sender = f"rep-{uuid.uuid4().hex[:8]}"
    assert [reply["text"] for reply in say(a, sender, "talk to live agent")] == [TEXTS.connecting]
    chat = b.slots(sender)["live_chat_id"]  # B reads the tracker A wrote (Rasa Pro's RedisTrackerStore)
    assert chat
    emulator.accept(chat)
    assert say(b, sender, "sent to the other replica") == []  # to the agent, not to the bot
    wait_for(lambda: "sent to the other replica" in [m["message"] for m in emulator.transcript(chat) if m["created_by"] == sender],
             what="the message at the agent")
    emulator.say(chat, "one reply")
    callback.wait_for_text(sender, lambda text: text == "one reply")
    emulator.close(chat)
    callback.wait_for_text(sender, lambda text: text == RATING)
    assert callback.texts(sender).count("one reply") == 1 and callback.texts(sender).count(RATING) == 1
    assert a.slots(sender)["handoff_active"] is False
    assert say(a, sender, "hi")[0]["text"].startswith("Hello!")
