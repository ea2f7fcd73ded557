"""Nothing the agent says is lost (issue 19): Virtual Agent pushes that never arrive are read back from ServiceNow's
record of the chat, and pushes that overtake each other are shown in ServiceNow's order. Real ``rasa run``
processes, the emulator (which, like ServiceNow, never retries a push here), a ``callback_url`` receiver and SSE
streams; with Redis, two replicas.

The restart tests use a long ``reconcile_interval`` (30 s) and expect the messages well before it: what brings them
is the pass a replica makes when it starts. The tests of pushes lost while Rasa is up use a short one (1 s)."""

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import requests

from tests.e2e.conftest import TEXTS, Handoff, channel_options, point_emulator_at
from tests.e2e.harness import CallbackReceiver, Emulator, RasaServer, new_sender, wait_for
from tests.e2e.test_handback import RATING_QUESTION, hand_back_events
from tests.e2e.test_replicas import Stream, redis, start_replicas  # noqa: F401 (redis: the module's fixture)

#: A steady pass this far apart cannot be what delivers within ``START_DEADLINE_S`` of a restart.
LONG_INTERVAL_S = 30.0
START_DEADLINE_S = 20.0
SHORT_INTERVAL_S = 1.0
#: A few passes of ``SHORT_INTERVAL_S``, with room for a loaded machine.
PASS_DEADLINE_S = 15.0
WELCOME = "Thank you for contacting support"


def sqlite_endpoints(workdir: Path, name: str) -> Dict[str, Any]:
    return {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(workdir / f"{name}-trackers.db")}}


def no_retries(emulator: Emulator, server: RasaServer) -> None:
    """Push to ``server`` as ServiceNow does: once."""
    point_emulator_at(emulator, server, va_callback_retries=0)


def push_of(chat: str, text: str, **respond: Any) -> Dict[str, Any]:
    """A fault on the emulator's push of the agent's ``text`` in ``chat``, and no other.

    A fault on the chat's next push would take whatever push is on its way
    when the test sets it: the agent's welcome, which the channel may have
    shown from its read of the chat's record before that push arrived."""
    return {"match": {"api": "callback", "session": chat, "body_regex": re.escape(json.dumps(text))}, "respond": respond}


def agent_said(callback: CallbackReceiver, sender: str) -> List[str]:
    return [text for text in callback.agent_texts(sender) if not text.startswith(WELCOME)]


def stream_agent_texts(stream: Stream) -> List[str]:
    return [
        item["text"] for item in stream.items
        if item["event"] == "message" and (item.get("metadata") or {}).get("source") == "agent"
        and not item["text"].startswith(WELCOME)
    ]


@pytest.fixture(scope="module")
def restarting(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    """A Virtual Agent deployment of one replica with a persistent tracker store, to stop and start."""
    options = channel_options(emulator, callback, "virtual_agent", reconcile_interval=LONG_INTERVAL_S)
    server = RasaServer(e2e_dir, demo_model, options, sqlite_endpoints(e2e_dir, "reconcile"), name="reconcile")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def steady(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    options = channel_options(emulator, callback, "virtual_agent", reconcile_interval=SHORT_INTERVAL_S)
    server = RasaServer(e2e_dir, demo_model, options, name="reconcile-steady")
    server.start()
    yield server
    server.stop()


def test_messages_written_while_rasa_was_down_arrive_once_in_order(restarting, emulator, callback):
    no_retries(emulator, restarting)
    sender = new_sender()
    chat = Handoff("virtual_agent", restarting, emulator, callback).start_live(sender)

    restarting.stop()
    written = ["while you were away (1)", "while you were away (2)", "while you were away (3)"]
    for text in written:
        emulator.say(chat, text)
    lost = [e for e in emulator.get(f"callbacks?session={chat}")["callbacks"] if e["outcome"] != "delivered"]
    assert lost, "the emulator was meant to fail these pushes (nobody listening)"
    restarting.start()
    stream = Stream(restarting, sender)
    try:
        wait_for(lambda: agent_said(callback, sender) == written, START_DEADLINE_S, what="the three messages at the callback")
        wait_for(lambda: stream_agent_texts(stream) == written, START_DEADLINE_S, what="the three messages on the stream")
        # Still in the handoff, and the agent hears the user.
        assert restarting.slots(sender)["handoff_active"] is True
        assert restarting.say(sender, "thanks") == []
        emulator.say(chat, "after the restart")
        wait_for(lambda: agent_said(callback, sender)[-1:] == ["after the restart"], what="a pushed message")
        assert agent_said(callback, sender) == written + ["after the restart"]
        assert stream_agent_texts(stream) == written + ["after the restart"]
    finally:
        stream.close()


def test_a_chat_that_ended_while_rasa_was_down_ends_with_the_hand_back_turn(restarting, emulator, callback):
    no_retries(emulator, restarting)
    sender = new_sender()
    chat = Handoff("virtual_agent", restarting, emulator, callback).start_live(sender)

    restarting.stop()
    emulator.say(chat, "I am closing this now")
    emulator.close(chat)  # the default close: the conversation goes back to the Virtual Agent
    restarting.start()

    wait_for(lambda: RATING_QUESTION in callback.texts(sender), START_DEADLINE_S, what="the hand-back turn's question")
    texts = callback.texts(sender)
    assert texts.index("I am closing this now") < texts.index(TEXTS.agent_closed) < texts.index(RATING_QUESTION)
    tracker = restarting.tracker(sender)
    assert tracker["slots"]["handoff_active"] is False
    [turn] = hand_back_events(tracker)
    assert turn["parse_data"]["entities"] == [{"entity": "handoff_end_reason", "value": "agent_closed"}]
    replies = restarting.say(sender, "hi")
    assert replies and replies[0]["text"].startswith("Hello! I'm the virtual assistant")


def test_pushes_dropped_while_rasa_is_up_are_recovered(steady, emulator, callback):
    no_retries(emulator, steady)
    sender = new_sender()
    chat = Handoff("virtual_agent", steady, emulator, callback).start_live(sender)
    stream = Stream(steady, sender)
    try:
        # Two pushes lost, then one that arrives: it brings the two along, in their place.
        for text in ("one", "two"):
            emulator.fault(**push_of(chat, text, drop_connection=True))
        for text in ("one", "two", "three"):
            emulator.say(chat, text)
        wait_for(lambda: agent_said(callback, sender) == ["one", "two", "three"], PASS_DEADLINE_S, what="one, two, three")
        # The last push lost, with nothing after it: the next pass finds it.
        emulator.fault(**push_of(chat, "four", drop_connection=True))
        emulator.say(chat, "four")
        wait_for(lambda: agent_said(callback, sender) == ["one", "two", "three", "four"], PASS_DEADLINE_S, what="four")
        wait_for(lambda: stream_agent_texts(stream) == ["one", "two", "three", "four"], PASS_DEADLINE_S, what="the stream")
        drops = [e for e in emulator.get(f"callbacks?session={chat}")["callbacks"] if e["outcome"] == "dropped"]
        assert len(drops) == 3
        # A few passes later, still nothing twice.
        passes_before = table_reads(emulator, chat)
        wait_for(lambda: table_reads(emulator, chat) >= passes_before + 2, PASS_DEADLINE_S, what="two more passes")
        assert agent_said(callback, sender) == ["one", "two", "three", "four"]
        assert stream_agent_texts(stream) == ["one", "two", "three", "four"]
    finally:
        stream.close()


def test_pushes_delivered_out_of_order_are_shown_in_order(steady, emulator, callback):
    no_retries(emulator, steady)
    sender = new_sender()
    chat = Handoff("virtual_agent", steady, emulator, callback).start_live(sender)
    # "first" is held until "second" has gone out; "third" is late by half a second.
    emulator.fault(**push_of(chat, "first", hold=True))
    emulator.say(chat, "first")
    emulator.say(chat, "second")
    emulator.fault(**push_of(chat, "third", delay_ms=500))
    emulator.say(chat, "third")
    emulator.say(chat, "fourth")
    wait_for(lambda: len(agent_said(callback, sender)) >= 4, PASS_DEADLINE_S, what="four messages")
    order = [e["payload"]["body"][0].get("value") for e in emulator.get(f"callbacks?session={chat}")["callbacks"]
             if e["outcome"] == "delivered" and e["payload"]["body"] and e["payload"]["body"][0].get("uiType") == "OutputText"]
    assert order.index("second") < order.index("first"), order  # the pushes did overtake each other
    assert agent_said(callback, sender) == ["first", "second", "third", "fourth"]


def conversation_of(emulator: Emulator, chat: str) -> str:
    """The chat's conversation, as the Table API shows it to the integration user."""
    response = requests.get(
        f"{emulator.url}/api/now/table/interaction", params={"client_session_id": chat},
        auth=("rasa.integration", "secret"), headers={"Accept": "application/json"}, timeout=10,
    )
    response.raise_for_status()
    return response.json()["result"][0]["channel_metadata_document"]


def record_reads(emulator: Emulator, conversation: str) -> List[float]:
    """When the channel read the conversation's messages (emulator time, ms), oldest first."""
    return [
        entry["at_ms"] for entry in emulator.get("requests")["requests"]
        if entry["path"] == "/api/now/table/sys_cs_message" and conversation in entry["query"].get("sysparm_query", "")
    ]


def table_reads(emulator: Emulator, chat: str) -> int:
    return len(record_reads(emulator, conversation_of(emulator, chat)))


# -- two replicas with Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(e2e_dir, demo_model, emulator, callback, redis) -> Iterator[Tuple[RasaServer, RasaServer]]:
    options = channel_options(emulator, callback, "virtual_agent", reconcile_interval=SHORT_INTERVAL_S)
    a, b = start_replicas(e2e_dir, demo_model, redis, options, "reconcile-replica")
    yield a, b
    a.stop()
    b.stop()


def test_two_replicas_deliver_each_missed_message_once(replicas, emulator, callback):
    a, b = replicas
    no_retries(emulator, b)
    sender = new_sender()
    assert [reply["text"] for reply in a.say(sender, "talk to live agent")] == [TEXTS.connecting]
    chat = a.slots(sender)["live_chat_id"]
    emulator.accept(chat)
    callback.wait_for_text(sender, lambda text: text.startswith(WELCOME))
    streams = [Stream(a, sender), Stream(b, sender)]
    try:
        written = ["lost (1)", "lost (2)", "lost (3)"]
        for text in written:
            emulator.fault(**push_of(chat, text, drop_connection=True))
        for text in written:
            emulator.say(chat, text)
        wait_for(lambda: agent_said(callback, sender) == written, PASS_DEADLINE_S, what="the lost messages")
        for stream in streams:
            wait_for(lambda s=stream: stream_agent_texts(s) == written, PASS_DEADLINE_S, what="each stream")
        # Both replicas watch the chat; one reads it per interval, under its lease. Eight reads of a quiet chat
        # span seven intervals (less only by how late the first came); two readers would need half that.
        conversation = conversation_of(emulator, chat)
        quiet_from = len(record_reads(emulator, conversation))
        wait_for(lambda: len(record_reads(emulator, conversation)) >= quiet_from + 8, 4 * PASS_DEADLINE_S,
                 what="eight more passes")
        reads = record_reads(emulator, conversation)[quiet_from : quiet_from + 8]
        assert (reads[-1] - reads[0]) / 1000 >= 5 * SHORT_INTERVAL_S, reads
        assert agent_said(callback, sender) == written
        assert all(stream_agent_texts(stream) == written for stream in streams)
    finally:
        for stream in streams:
            stream.close()





@pytest.fixture
def refusing_emulator(e2e_dir) -> Iterator[Emulator]:
    """A ServiceNow of this test's own: its request log then holds only this deployment's reads (the shared
    emulator serves the other tests' Rasa servers too, whose reconciling reads tables at any time), and the
    refusal reaches no other test."""
    running = Emulator(e2e_dir / "emulator-refusing.log")
    running.configure(table_read_access=["sys_user"])
    yield running
    running.stop()


@pytest.fixture
def refused(e2e_dir, demo_model, refusing_emulator, callback) -> Iterator[RasaServer]:
    """A deployment whose integration user may not read the conversation tables (its own process: the channel
    remembers a refusal for ten minutes)."""
    options = channel_options(refusing_emulator, callback, "virtual_agent", reconcile_interval=SHORT_INTERVAL_S)
    server = RasaServer(e2e_dir, demo_model, options, name="reconcile-refused").start()
    yield server
    server.stop()


def test_without_read_access_pushes_alone_are_relayed_and_the_log_says_so_once(refused, refusing_emulator, callback):
    emulator = refusing_emulator
    no_retries(emulator, refused)
    asked_before = len(emulator.get("requests")["requests"])
    sender = new_sender()
    chat = Handoff("virtual_agent", refused, emulator, callback).start_live(sender)
    for text in ("one", "two"):
        emulator.say(chat, text)
    wait_for(lambda: agent_said(callback, sender) == ["one", "two"], PASS_DEADLINE_S, what="the pushed messages")
    tables = [
        e for e in emulator.get("requests")["requests"][asked_before:] if e["path"].startswith("/api/now/table/")
    ]
    assert tables and all(e["status"] == 403 for e in tables)
    # Reads already under way when the first refusal came (the start's pass, the pushes' ordering reads) may each
    # be refused; after that the tables are left alone: a new push is relayed without waiting for a read.
    asked_after_refusal = len(emulator.get("requests")["requests"])
    emulator.say(chat, "three")
    wait_for(lambda: agent_said(callback, sender) == ["one", "two", "three"], PASS_DEADLINE_S, what="the third")
    later = emulator.get("requests")["requests"][asked_after_refusal:]
    assert not [e for e in later if e["path"].startswith("/api/now/table/")]
    assert refused.log_path.read_text().count("The integration user may not read") == 1
