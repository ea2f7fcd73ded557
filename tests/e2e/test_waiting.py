"""Waiting for an agent and availability before opening, end to end with
short timeouts: "still waiting" notices with the queue position (Connect) or
the wait spinner's estimate (Virtual Agent), the no-agent timeout, the user
idle timeout, business hours (open and closed) and Connect's ``not_available``."""

import datetime
import re
import time
from typing import Iterator, List, Tuple
from zoneinfo import ZoneInfo

import pytest

from connectors.servicenow.rasa_glue.nlg import fill
from tests.e2e.conftest import BACKENDS, TEXTS, Handoff, channel_options, point_emulator_at
from tests.e2e.harness import RasaServer, new_sender, wait_for

AGENT_WAIT_S = 5
NOTICE_EVERY_S = 1.5
IDLE_S = 3
ALWAYS_OPEN = {"timezone": "UTC", **{day: "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}
#: UTC+14 all year: "today" there is rarely today in UTC, which the closed-date check must get right.
ZONE = "Pacific/Kiritimati"


@pytest.fixture(scope="module", params=BACKENDS)
def waiting(request, e2e_dir, demo_model, emulator, callback) -> Iterator[Handoff]:
    backend = request.param
    options = channel_options(
        emulator, callback, backend,
        agent_wait_timeout=AGENT_WAIT_S,
        waiting_notice_interval=NOTICE_EVERY_S,
        user_idle_timeout=IDLE_S,
        business_hours=ALWAYS_OPEN,  # the open case: every test here opens a chat within hours
    )
    # A persistent tracker store: a restart resumes the chats (and their timers).
    endpoints = {"tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(e2e_dir / f"waiting-{backend}.db")}}
    server = RasaServer(e2e_dir, demo_model, options, endpoints, name=f"waiting-{backend}").start()
    yield Handoff(backend, server, emulator, callback)
    server.stop()


@pytest.fixture
def handoff_waiting(waiting: Handoff) -> Handoff:
    if waiting.backend == "virtual_agent":
        point_emulator_at(waiting.emulator, waiting.rasa)
    return waiting


def waiting_notices(handoff: Handoff, sender: str) -> list:
    return [text for text in handoff.callback.texts(sender) if text.startswith("Thanks for waiting.")]


def test_waiting_notices_come_until_no_agent_accepts_in_time(handoff_waiting: Handoff):
    handoff = handoff_waiting
    ahead = new_sender()
    handoff.start(ahead)  # someone already waits in the queue
    sender = new_sender()
    chat = handoff.start(sender)

    notice = handoff.callback.wait_for_text(sender, lambda text: text.startswith("Thanks for waiting."))
    if handoff.backend == "connect":
        position = int(re.search(r"You're number (\d+) in the queue", notice).group(1))
        assert position == handoff.emulator.session(chat)["position"] and position >= 2
        assert notice == fill(TEXTS.waiting_position, {"position": position})
    else:
        # The Virtual Agent's wait spinner said "8 Seconds" when the chat was queued.
        assert notice == fill(TEXTS.waiting_wait_time, {"wait_time": "8 Seconds"})

    handoff.callback.wait_for_text(sender, lambda text: text == TEXTS.no_agent, timeout=AGENT_WAIT_S + 10)
    assert len(waiting_notices(handoff, sender)) >= 2, "a notice every waiting_notice_interval"
    assert handoff.left_by_user(chat)
    handoff.wait_until_over(sender)
    handoff.assert_slots_cleared(sender)
    handoff.assert_back_with_the_bot(sender)
    # The notices stopped with the chat: the no-agent text was the last thing the channel said of it.
    texts = handoff.callback.texts(sender)
    assert not any(text.startswith("Thanks for waiting.") for text in texts[texts.index(TEXTS.no_agent):])
    handoff.callback.wait_for_text(ahead, lambda text: text == TEXTS.no_agent, timeout=AGENT_WAIT_S + 10)


def test_an_agent_who_joins_stops_the_wait_and_an_idle_user_is_let_go(handoff_waiting: Handoff):
    handoff = handoff_waiting
    sender = new_sender()
    chat = handoff.start_live(sender)
    started = time.monotonic()
    # The user keeps writing past both the agent wait and the idle timeout:
    # neither fires while they do.
    sent = []
    while time.monotonic() - started < AGENT_WAIT_S + 1:
        sent.append(f"still here {len(sent)}")
        assert handoff.rasa.say(sender, sent[-1]) == []
        time.sleep(1.0)  # wait-ok: pacing the user's messages (one a second), not waiting for a result
    assert handoff.rasa.slots(sender)["handoff_active"] is True
    assert TEXTS.no_agent not in handoff.callback.texts(sender)

    handoff.callback.wait_for_text(sender, lambda text: text == TEXTS.user_idle, timeout=IDLE_S + 10)
    # The agent was told before the chat was left.
    told = fill(TEXTS.user_idle_agent, {"idle_time": f"{IDLE_S} seconds"})
    wait_for(lambda: told in handoff.user_messages(sender, chat), what="the agent to be told the user is idle")
    assert handoff.user_messages(sender, chat)[-len(sent) - 1:] == sent + [told]
    assert handoff.left_by_user(chat)
    handoff.wait_until_over(sender)
    handoff.assert_slots_cleared(sender)
    handoff.assert_back_with_the_bot(sender)


def test_a_connect_queue_nobody_is_available_in_opens_no_chat(handoff_waiting: Handoff):
    handoff = handoff_waiting
    if handoff.backend != "connect":
        pytest.skip("not_available is a Connect queue's flag")
    emulator = handoff.emulator
    queues = emulator.get("config")["connect_queues"]
    unavailable = {qid: {**queue, "not_available": True} for qid, queue in queues.items()}
    opened_before = len(emulator.get("sessions")["sessions"])
    emulator.configure(connect_queues=unavailable)
    try:
        sender = new_sender()
        replies = handoff.rasa.say(sender, "talk to live agent")
        assert [reply["text"] for reply in replies] == [TEXTS.no_agent_available]
        assert handoff.rasa.slots(sender)["handoff_active"] is not True
        assert len(emulator.get("sessions")["sessions"]) == opened_before
        handoff.assert_back_with_the_bot(sender)
    finally:
        emulator.configure(connect_queues=queues)
    # Available again: the same conversation gets a chat.
    chat = handoff.start(sender)
    handoff.rasa.say(sender, "/end_chat")
    assert handoff.left_by_user(chat)


def test_a_chat_resumed_after_a_restart_gets_its_agent_wait_again(handoff_waiting: Handoff):
    """Without Redis the timers live in the process: the chats resumed from
    the tracker store after a restart are timed again, from the restart."""
    handoff = handoff_waiting
    if handoff.backend != "connect":
        pytest.skip("only Connect can tell a resumed chat still waits (its session state)")
    sender = new_sender()
    chat = handoff.start(sender)
    handoff.rasa.stop()
    assert TEXTS.no_agent not in handoff.callback.texts(sender)
    handoff.rasa.start()
    handoff.callback.wait_for_text(sender, lambda text: text == TEXTS.no_agent, timeout=AGENT_WAIT_S + 15)
    assert handoff.left_by_user(chat)
    handoff.wait_until_over(sender)
    assert handoff.callback.texts(sender).count(TEXTS.no_agent) == 1


@pytest.fixture(scope="module")
def closed(e2e_dir, demo_model, emulator, callback) -> Iterator[Tuple[RasaServer, datetime.datetime]]:
    """A server whose hours are all day, every day, but today and tomorrow are closed dates."""
    today = datetime.datetime.now(ZoneInfo(ZONE)).date()
    hours = {
        "timezone": ZONE,
        **{day: "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        "closed_dates": [today.isoformat(), (today + datetime.timedelta(days=1)).isoformat()],
    }
    options = channel_options(emulator, callback, "virtual_agent", business_hours=hours)
    server = RasaServer(e2e_dir, demo_model, options, name="waiting-closed").start()
    yield server, datetime.datetime.combine(today + datetime.timedelta(days=2), datetime.time(0, 0))
    server.stop()


def test_outside_business_hours_no_chat_opens_and_the_user_hears_when_it_will(closed, emulator):
    server, reopens = closed
    sessions_before = len(emulator.get("sessions")["sessions"])
    sender = new_sender()
    replies = server.say(sender, "talk to live agent")
    expected = fill(TEXTS.outside_hours, {"next_opening": f"{reopens.strftime('%A %H:%M')} ({ZONE})"})
    assert [reply["text"] for reply in replies] == [expected]
    assert server.slots(sender)["handoff_active"] is not True
    assert len(emulator.get("sessions")["sessions"]) == sessions_before

    def hand_back_reasons() -> List[str]:
        return [
            entity["value"]
            for event in server.tracker(sender)["events"]
            if event["event"] == "user" and (event.get("parse_data") or {}).get("intent", {}).get("name") == "handoff_ended"
            for entity in event["parse_data"].get("entities", [])
            if entity.get("entity") == "handoff_end_reason"
        ]

    # The refusal, too, is handed back to the bot as a turn with its reason.
    assert wait_for(hand_back_reasons, what="the hand-back turn of the refusal") == ["outside_hours"]
    assert server.slots(sender)["handoff_end_reason"] == "outside_hours"
    replies = server.say(sender, "hi")
    assert replies and replies[0]["text"].startswith("Hello! I'm the virtual assistant")
