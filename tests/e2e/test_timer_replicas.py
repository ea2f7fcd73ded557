"""The waiting timers (agent wait, waiting notices) across replicas and
restarts, with a real ``redis-server``: each fires once across the
deployment, and a timer that came due while its replica was down fires once
the replica is back."""

import time
from typing import Iterator, Tuple

import pytest
import redis as redis_client

from tests.e2e.conftest import TEXTS, channel_options
from tests.e2e.harness import RasaServer, new_sender, wait_for
from tests.e2e.test_replicas import prefix_of, redis, start_replicas  # noqa: F401 (the module's redis fixture)

AGENT_WAIT_S = 4
NOTICE_EVERY_S = 1.0
NAME = "timer-replica"


@pytest.fixture(scope="module")
def timer_replicas(e2e_dir, demo_model, emulator, callback, redis) -> Iterator[Tuple[RasaServer, RasaServer]]:  # noqa: F811
    options = channel_options(
        emulator, callback, "connect", agent_wait_timeout=AGENT_WAIT_S, waiting_notice_interval=NOTICE_EVERY_S
    )
    a, b = start_replicas(e2e_dir, demo_model, redis, options, NAME)
    yield a, b
    a.stop()
    b.stop()


def notices(callback, sender: str) -> int:
    return sum(text.startswith("Thanks for waiting.") for text in callback.texts(sender))


def test_each_timer_fires_once_across_two_replicas(timer_replicas, emulator, callback):
    a, b = timer_replicas
    # Chats opened on both replicas, so that both timer loops know the
    # earliest due time and race for every timer.
    chats = {}
    for server in (a, b, a, b):
        sender = new_sender()
        assert [reply["text"] for reply in server.say(sender, "talk to live agent")] == [TEXTS.connecting]
        chats[sender] = server.slots(sender)["live_chat_id"]

    for sender, chat in chats.items():
        callback.wait_for_text(sender, lambda text: text == TEXTS.no_agent, timeout=AGENT_WAIT_S + 15)
        wait_for(lambda: emulator.session(chat)["requester_left"], what="the chat to be left")
    for sender, chat in chats.items():
        assert callback.texts(sender).count(TEXTS.no_agent) == 1
        assert len(emulator.requests_for(chat, "POST", "/leave")) == 1
        # One notice a second until the fourth second: never one per replica.
        assert 2 <= notices(callback, sender) <= AGENT_WAIT_S / NOTICE_EVERY_S, callback.texts(sender)
        assert a.slots(sender)["handoff_active"] is False


def test_a_timer_due_while_the_replica_was_down_fires_after_its_restart(timer_replicas, emulator, callback, redis):  # noqa: F811
    a, b = timer_replicas
    b.stop()  # one replica only: nobody else may fire it meanwhile
    sender = new_sender()
    assert [reply["text"] for reply in a.say(sender, "talk to live agent")] == [TEXTS.connecting]
    chat = a.slots(sender)["live_chat_id"]
    a.stop()

    client = redis_client.Redis.from_url(redis.url)
    try:
        due_ms = client.zscore(f"{prefix_of(NAME)}timers", f"no_agent:{chat}")
        assert due_ms is not None, "the agent-wait timer is kept in Redis"
        wait_for(lambda: time.time() * 1000 > due_ms, timeout=AGENT_WAIT_S + 5, what="the timer to come due")
    finally:
        client.close()
    assert TEXTS.no_agent not in callback.texts(sender)
    assert not emulator.requests_for(chat, "POST", "/leave")

    a.start()
    callback.wait_for_text(sender, lambda text: text == TEXTS.no_agent, timeout=30)
    wait_for(lambda: emulator.session(chat)["requester_left"], what="the chat to be left")
    assert callback.texts(sender).count(TEXTS.no_agent) == 1
    assert len(emulator.requests_for(chat, "POST", "/leave")) == 1
    assert a.slots(sender)["handoff_active"] is False
