"""Two replicas (see test_replicas.py) that lose their processes: both
restarted while items wait for a user with no stream open, and ``kill -9``
of the replica that just acknowledged Virtual Agent callbacks. No
``callback_url`` here: the user's only way to get the items is a stream,
so what waits in the store is all there is.

Without ``redis-server`` these tests are skipped with a reason, unless
``REQUIRE_REDIS_TEST=1`` makes that a failure."""

import threading
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from tests.e2e.conftest import TEXTS, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, new_sender, wait_for
from tests.e2e.test_replicas import Stream, redis, start_replicas  # noqa: F401 (redis: the module's fixture)


@pytest.fixture(scope="module")
def stream_replicas(e2e_dir, demo_model, emulator, callback, redis) -> Iterator[Tuple[RasaServer, RasaServer]]:
    options = channel_options(emulator, callback, "virtual_agent")
    del options["callback_url"]
    a, b = start_replicas(e2e_dir, demo_model, redis, options, "stream-replica")
    yield a, b
    a.stop()
    b.stop()


def on_both(action: Callable[[RasaServer], Any], servers: Tuple[RasaServer, ...]) -> None:
    """Run ``action`` on every replica at once, as an orchestrator would."""
    errors: List[BaseException] = []

    def run(server: RasaServer) -> None:
        try:
            action(server)
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def acknowledged(emulator, chat: str, texts: List[str]) -> bool:
    """Every callback carrying one of ``texts`` was answered 2xx."""
    delivered = [
        str(entry["payload"]) for entry in emulator.get(f"callbacks?session={chat}")["callbacks"]
        if entry["outcome"] == "delivered"
    ]
    return all(any(f"'{text}'" in payload for payload in delivered) for text in texts)


def agent_texts(stream: Stream, expected: List[str]) -> List[str]:
    return [text for text in stream.texts() if text in expected]


def start_live_chat(server: RasaServer, emulator, sender: str) -> str:
    assert [reply["text"] for reply in server.say(sender, "talk to live agent")] == [TEXTS.connecting]
    chat = server.slots(sender)["live_chat_id"]
    assert chat
    emulator.accept(chat)
    return chat


def test_items_waiting_for_a_stream_survive_a_restart_of_both_replicas(stream_replicas, emulator):
    a, b = stream_replicas
    point_emulator_at(emulator, a)
    sender = new_sender()
    chat = start_live_chat(a, emulator, sender)
    waiting = ["one", "two", "three"]
    for text in waiting:
        emulator.say(chat, text)  # nobody streams: the items wait in the store
    wait_for(lambda: acknowledged(emulator, chat, waiting), what="A to acknowledge the agent's messages")

    on_both(lambda server: server.stop(), (a, b))  # SIGTERM: the graceful path
    on_both(lambda server: server.start(), (a, b))

    first = Stream(b, sender)  # no id: what no stream has taken yet
    wait_for(lambda: "three" in first.texts(), what="the waiting items on B's stream")
    greeting = next(text for text in first.texts() if text.startswith("Thank you for contacting support"))
    assert first.texts().index(greeting) < first.texts().index("one")
    assert agent_texts(first, waiting) == waiting
    assert len(set(item["id"] for item in first.items)) == len(first.items)
    # A browser reconnecting to A resumes exactly after what it saw.
    resumed = Stream(a, sender, last_event_id=first.id_of("one"))
    wait_for(lambda: "three" in resumed.texts(), what="the resumed stream on A")
    assert agent_texts(resumed, waiting) == ["two", "three"]
    # A new stream without an id does not show again what a stream took.
    fresh = Stream(a, sender)
    emulator.say(chat, "four")
    for stream in (first, resumed, fresh):
        wait_for(lambda: "four" in stream.texts(), what="the next message on every stream")
    assert fresh.texts() == ["four"]
    assert agent_texts(first, waiting + ["four"]) == waiting + ["four"]
    for stream in (first, resumed, fresh):
        stream.close()
    assert [reply["text"] for reply in b.say(sender, "/end_chat")] == [TEXTS.user_ended]


def test_kill_9_of_the_replica_that_acknowledged_callbacks_loses_nothing(stream_replicas, emulator):
    # Last in this module: A stays dead.
    a, b = stream_replicas
    point_emulator_at(emulator, a)
    sender = new_sender()
    chat = start_live_chat(b, emulator, sender)
    sent = [f"message {n}" for n in range(1, 6)]
    for text in sent:
        emulator.say(chat, text)
    wait_for(lambda: acknowledged(emulator, chat, sent), what="A to acknowledge the agent's messages")
    a.kill()  # at once: whatever A had in memory is gone

    # The user comes to B only now: what A acknowledged was stored before its 200.
    stream = Stream(b, sender)
    wait_for(lambda: sent[-1] in stream.texts(), what="the acknowledged messages on B's stream")
    # A second tab resuming from the first message sees the rest, once.
    later = Stream(b, sender, last_event_id=stream.id_of(sent[0]))
    point_emulator_at(emulator, b)
    emulator.say(chat, "after the crash")
    for each in (stream, later):
        wait_for(lambda: "after the crash" in each.texts(), what="B to take the callbacks")
    assert agent_texts(stream, sent + ["after the crash"]) == sent + ["after the crash"]
    assert agent_texts(later, sent + ["after the crash"]) == sent[1:] + ["after the crash"]
    stream.close()
    later.close()
    assert [reply["text"] for reply in b.say(sender, "/end_chat")] == [TEXTS.user_ended]
