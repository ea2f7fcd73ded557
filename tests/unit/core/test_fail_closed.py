"""The handoff under tracker-store failures and races: it fails closed.

The demo model runs in process; its tracker store is Rasa's usual
``FailSafeTrackerStore`` around an in-memory store that a switch breaks.
ServiceNow (Connect) is mocked with aioresponses."""

import asyncio
from types import SimpleNamespace

import pytest
from aioresponses import aioresponses

from connectors.servicenow.errors import ConversationBusy, StoreUnavailable
from connectors.servicenow.retry import Pauses
from connectors.servicenow.locks import ConversationLocks
from connectors.servicenow.rasa_glue.slots import WRITE_PAUSES
from connectors.servicenow.servicenow.base import AgentMessage, ChatClosed, CloseReason, PollResult
from tests.unit.support import (
    GROUP,
    LEAVE,
    MESSAGES,
    SESSIONS,
    TEXTS,
    body_of,
    close,
    delivered_texts,
    new_channel,
    requests_to,
    say,
    slots,
    wait_until,
)


class StoreSwitch:
    """Makes the store under Rasa's fail-safe wrapper fail, as a database that went away."""

    def __init__(self, agent, monkeypatch) -> None:
        self.primary = agent.tracker_store._tracker_store
        self.broken = False
        #: How many calls failed, and how many saves are still to fail (None: all while broken).
        self.failures = 0
        self.saves_to_fail = None
        for name in ("retrieve", "save", "keys"):
            monkeypatch.setattr(self.primary, name, self._guard(name, getattr(self.primary, name)))

    def _guard(self, name, original):
        async def guarded(*args, **kwargs):
            failing = self.broken
            if name == "save" and self.saves_to_fail:
                self.saves_to_fail -= 1
                failing = True
            if failing:
                self.failures += 1
                raise OSError(f"{name}: unable to open database file")
            return await original(*args, **kwargs)

        return guarded


@pytest.fixture
def store(agent, monkeypatch):
    return StoreSwitch(agent, monkeypatch)


async def start(channel, rasa_turn, mock):
    mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
    replies = await say(channel, rasa_turn, "talk to live agent")
    assert [reply["text"] for reply in replies] == [TEXTS.connecting]


# -- the flag check -----------------------------------------------------------


async def test_a_failing_store_never_sends_a_user_in_handoff_to_the_bot(channels, rasa_turn, store, agent):
    with aioresponses() as mock:
        await start(channels(), rasa_turn, mock)
        restarted = channels()  # a process that has not seen this user yet
        rasa_turn.reset_mock()

        store.broken = True
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await say(restarted, rasa_turn, "are you there?")
        rasa_turn.assert_not_awaited()
        assert not restarted.core.store.known_inactive("u1")  # nothing cached from a failed read

        store.broken = False
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(restarted, rasa_turn, "are you there?") == []
        assert [body_of(mock, "POST", MESSAGES, i)["message"] for i in range(len(requests_to(mock, "POST", MESSAGES)))] == [
            "are you there?"
        ]
    rasa_turn.assert_not_awaited()
    tracker = await agent.tracker_store.retrieve("u1")
    assert tracker.latest_message.text == "talk to live agent"  # the bot never saw the others


async def test_a_user_not_in_handoff_waits_for_the_store_too_then_reaches_the_bot(channels, rasa_turn, store):
    channel = channels()
    store.broken = True
    with pytest.raises(StoreUnavailable):
        await say(channel, rasa_turn, "hello", sender="newcomer")
    rasa_turn.assert_not_awaited()
    store.broken = False
    assert (await say(channel, rasa_turn, "hello", sender="newcomer"))[0]["text"].startswith("Hello!")
    assert channel.core.store.known_inactive("newcomer")


async def test_typing_is_dropped_and_a_callback_refused_while_the_store_fails(channels, store):
    channel = channels()
    store.broken = True
    # Typing never reads the tracker store: unknown here is simply dropped.
    assert await channel.core.router.user_typing("u1", True) is False
    callback = SimpleNamespace(chat_id="va-chat", sender_id="u1", fingerprint="f", events=[])
    with pytest.raises(StoreUnavailable):
        await channel.core.callbacks.find_chat(callback)
    store.broken = False
    await channel.core.callbacks.find_chat(callback)  # no chat: acknowledged, nothing to deliver


async def test_resume_after_a_restart_reports_a_failing_store_instead_of_finding_no_chats(channels, rasa_turn, store):
    with aioresponses() as mock:
        await start(channels(), rasa_turn, mock)
    restarted = channels()
    store.broken = True
    with pytest.raises(StoreUnavailable):
        await restarted.core.chats.resume()
    store.broken = False
    assert await restarted.core.chats.resume() == 1
    assert restarted.core.registry.get("u1").chat_id == GROUP


# -- writes ---------------------------------------------------------------------


async def test_a_handoff_state_write_rides_out_a_brief_failure(channels, rasa_turn, store, agent):
    store.saves_to_fail = len(WRITE_PAUSES.delays)  # every attempt but the last fails
    with aioresponses() as mock:
        await start(channels(), rasa_turn, mock)
        assert not requests_to(mock, "POST", LEAVE)
    assert store.failures == len(WRITE_PAUSES.delays)
    assert (await slots(agent))["handoff_active"] is True


async def test_a_start_that_cannot_be_saved_leaves_the_new_chat_and_tells_the_user(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        rasa_turn.side_effect = breaking_after(agent.handle_message, store)
        replies = await say(channel, rasa_turn, "talk to live agent")
        assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert [reply["text"] for reply in replies] == [TEXTS.start_failed]
    # Each attempt of the write once, and one read for each notice rendered
    # from the demo domain (utter_servicenow_connecting, _start_failed).
    assert store.failures == len(WRITE_PAUSES.delays) + 1 + 2
    assert channel.core.registry.get("u1") is None
    store.broken = False
    assert (await slots(agent))["handoff_active"] is False


def breaking_after(handle_message, store):
    """Rasa's turn runs on a working store, which breaks right after it."""

    async def turn(message):
        result = await handle_message(message)
        store.broken = True
        return result

    return turn


async def test_a_users_end_that_cannot_be_saved_changes_nothing_and_says_so(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        rasa_turn.reset_mock()
        store.broken = True
        for command in ("/end_chat", "/restart"):
            assert [reply["text"] for reply in await say(channel, rasa_turn, command)] == [TEXTS.end_failed]
        assert not requests_to(mock, "POST", LEAVE)  # the agent still has the user
        rasa_turn.assert_not_awaited()
        mock.post(MESSAGES, payload={"result": {"sys_id": "m1", "timestamp": 1}})
        assert await say(channel, rasa_turn, "still there?") == []  # and the chat goes on

        store.broken = False
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        assert [reply["text"] for reply in await say(channel, rasa_turn, "/end_chat")] == [TEXTS.user_ended]
        assert len(requests_to(mock, "POST", LEAVE)) == 1
    assert (await slots(agent))["handoff_active"] is False


async def receive_close(channel):
    """ServiceNow pushes the agent's close; the push is stored at once, the chat ends after its grace."""
    await channel.core.callbacks.receive(closed_by_agent())
    await channel.core.work.wait(timeout=5)


def closed_by_agent():
    return SimpleNamespace(chat_id=GROUP, sender_id="u1", fingerprint="close", events=[ChatClosed(CloseReason.AGENT_CLOSED)])


async def test_an_end_from_servicenow_that_cannot_be_saved_holds_the_next_message_until_it_is(
    channels, rasa_turn, store, agent
):
    channel = channels()
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
    assert await delivered_texts(channel) == [TEXTS.agent_closed]  # the user is told all the same
    assert channel.core.registry.get("u1") is None

    rasa_turn.reset_mock()
    with pytest.raises(StoreUnavailable):  # the bot must not answer on a tracker that says "in handoff"
        await say(channel, rasa_turn, "hi")
    rasa_turn.assert_not_awaited()

    store.broken = False
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")
    values = await slots(agent)
    assert values["handoff_active"] is False and values["live_chat_id"] is None
    tracker = await agent.tracker_store.retrieve("u1")
    texts = [event.text for event in tracker.events if event.type_name in ("user", "bot")]
    assert texts.index(TEXTS.agent_closed) < texts.index("hi")  # the end is saved before the next turn


async def test_an_unsaved_end_is_saved_in_the_background_once_the_store_is_back(channels, rasa_turn, store, agent, monkeypatch):
    channel = channels()
    monkeypatch.setattr(channel.core.unsaved, "pauses", Pauses((0.05,)))
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
    failures = store.failures
    await wait_until(lambda: store.failures > failures)  # retried while it fails
    store.broken = False
    await wait_until(lambda: not channel.core.unsaved)
    assert (await slots(agent))["handoff_active"] is False


async def test_no_new_handoff_starts_before_the_end_of_the_last_one_is_saved(channels, rasa_turn, store, agent):
    channel = channels()
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        store.broken = True
        await receive_close(channel)
        mock.post(SESSIONS, payload={"result": {"group": "d" * 32, "state": 1}})
        output = channel.get_output_channel()  # through Rasa's API, where no webhook turn saves it first
        await output.send_response("u1", {"custom": {"handoff": {}}})
        await asyncio.gather(*channel.core.work)
        assert len(requests_to(mock, "POST", SESSIONS)) == 1  # only the first handoff's
    assert await delivered_texts(channel) == [TEXTS.agent_closed, TEXTS.start_failed]
    store.broken = False
    assert await channel.core.chats.active_chat("u1") is None  # saves the end first
    assert (await slots(agent))["handoff_active"] is False


# -- messages sent while the chat opens ---------------------------------------------


class HeldOpen:
    """Holds ServiceNow's answer to the open until released."""

    def __init__(self, channel) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        open_chat = channel.core.backend.open_chat

        async def held(*args, **kwargs):
            self.called.set()
            await self.release.wait()
            return await open_chat(*args, **kwargs)

        channel.core.backend.open_chat = held


async def test_messages_sent_while_the_chat_opens_reach_the_agent_in_order(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}}, repeat=True)
        trigger = asyncio.ensure_future(say(channel, rasa_turn, "talk to live agent"))
        await held.called.wait()
        later = [asyncio.ensure_future(say(channel, rasa_turn, f"detail {n}")) for n in range(3)]
        await asyncio.sleep(0)  # wait-ok: lets the three arrive before the chat opens
        held.release.set()
        assert [reply["text"] for reply in await trigger] == [TEXTS.connecting]
        assert await asyncio.gather(*later) == [[], [], []]
        sent = [body_of(mock, "POST", MESSAGES, i)["message"] for i in range(3)]
    assert sent == ["detail 0", "detail 1", "detail 2"]
    rasa_turn.assert_awaited_once()  # the bot saw the request only


async def test_messages_sent_while_an_open_fails_get_an_answer_not_the_bot(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, status=503, repeat=True)
        trigger = asyncio.ensure_future(say(channel, rasa_turn, "talk to live agent"))
        await held.called.wait()
        later = asyncio.ensure_future(say(channel, rasa_turn, "my VPN is broken"))
        await asyncio.sleep(0)  # wait-ok: lets it arrive before the open fails
        held.release.set()
        assert [reply["text"] for reply in await trigger] == [TEXTS.start_failed]
        assert [reply["text"] for reply in await later] == [TEXTS.message_not_delivered]
    rasa_turn.assert_awaited_once()
    # A message sent after the failure is the bot's again.
    assert (await say(channel, rasa_turn, "hi"))[0]["text"].startswith("Hello!")


async def test_a_message_waits_for_a_handoff_opened_through_rasas_api(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}})
        await channel.get_output_channel().send_response("u1", {"custom": {"handoff": {}}})
        await held.called.wait()
        message = asyncio.ensure_future(say(channel, rasa_turn, "hello agent"))
        await asyncio.sleep(0)  # wait-ok: lets it arrive before the chat opens
        held.release.set()
        assert await message == []
        assert body_of(mock, "POST", MESSAGES) == {"message": "hello agent"}
    rasa_turn.assert_not_awaited()


async def test_a_message_that_waits_too_long_for_the_open_is_told_to_retry(channels, rasa_turn):
    channel = channels()
    held = HeldOpen(channel)
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        await channel.get_output_channel().send_response("u1", {"custom": {"handoff": {}}})
        await held.called.wait()
        with pytest.raises(ConversationBusy):
            await channel.core.chats.active_chat("u1", wait_s=0.01)
        held.release.set()
        await wait_until(lambda: channel.core.registry.get("u1") is not None)


async def test_conversation_locks_serve_in_arrival_order_and_forget_idle_conversations():
    locks = ConversationLocks()
    order = []

    async def turn(n):
        async with locks.hold("u1", timeout=1):
            order.append(n)
            await asyncio.sleep(0)  # wait-ok: gives the others a chance to overtake

    await asyncio.gather(*(turn(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0

    async with locks.hold("u1", timeout=1):
        with pytest.raises(ConversationBusy):
            async with locks.hold("u1", timeout=0.01):
                pass
    assert len(locks) == 0


async def test_a_message_sent_while_the_bot_decides_on_the_handoff_goes_to_the_agent(channels, rasa_turn, agent):
    channel = channels()
    deciding, decide = asyncio.Event(), asyncio.Event()

    async def slow_turn(message):
        if message.text == "talk to live agent":
            deciding.set()
            await decide.wait()
        return await agent.handle_message(message)

    rasa_turn.side_effect = slow_turn
    with aioresponses() as mock:
        mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
        mock.post(MESSAGES, payload={"result": {"sys_id": "m", "timestamp": 1}})
        trigger = asyncio.ensure_future(say(channel, rasa_turn, "talk to live agent"))
        await deciding.wait()
        later = asyncio.ensure_future(say(channel, rasa_turn, "it is about my VPN"))
        await asyncio.sleep(0)  # wait-ok: lets it arrive while the bot is still deciding
        decide.set()
        assert [reply["text"] for reply in await trigger] == [TEXTS.connecting]
        assert await later == []
        assert body_of(mock, "POST", MESSAGES) == {"message": "it is about my VPN"}
    rasa_turn.assert_awaited_once()


# -- agent messages that race the end of the chat -------------------------------------



def agent_push(text, message_id):
    return SimpleNamespace(
        chat_id=GROUP, sender_id="u1", fingerprint=message_id, events=[AgentMessage(message_id, text, "Beth", 5)]
    )


async def transcript(agent, sender="u1"):
    tracker = await agent.tracker_store.retrieve(sender)
    return [event.text for event in tracker.events if event.type_name == "bot"]


class HeldLeave:
    def __init__(self, channel) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        leave = channel.core.backend.leave

        async def held(chat):
            self.called.set()
            await self.release.wait()
            return await leave(chat)

        channel.core.backend.leave = held


async def test_an_agent_message_pushed_while_the_user_ends_is_delivered_before_the_farewell_or_not_at_all(
    channels, rasa_turn, agent
):
    channel = channels()
    with aioresponses() as mock:
        await start(channel, rasa_turn, mock)
        await channel.core.callbacks.receive(agent_push("before the end", "m1"))
        held = HeldLeave(channel)
        mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
        ending = asyncio.ensure_future(say(channel, rasa_turn, "/end_chat"))
        await held.called.wait()
        await channel.core.callbacks.find_chat(agent_push("during the end", "m2"))  # acknowledged
        await channel.core.callbacks.receive(agent_push("during the end", "m2"))
        held.release.set()
        assert [reply["text"] for reply in await ending] == [TEXTS.user_ended]
    assert await delivered_texts(channel) == ["before the end"]
    texts = await transcript(agent)
    assert "during the end" not in texts
    assert texts.index("before the end") < texts.index(TEXTS.user_ended)


async def test_a_connect_poll_in_flight_when_the_user_ends_delivers_nothing_after_the_farewell(agent, rasa_turn, monkeypatch):
    channel = new_channel(agent, poll_interval=0.01)
    polling, answer = asyncio.Event(), asyncio.Event()

    async def slow_poll(chat, cursor):
        polling.set()
        await answer.wait()
        return PollResult([AgentMessage("m9", "too late", "Beth", 9)], 9, ("m9",))

    channel.core.backend.poll = slow_poll
    try:
        with aioresponses() as mock:
            await start(channel, rasa_turn, mock)
            await polling.wait()
            poller = channel.core.registry.get("u1").poller
            mock.post(LEAVE, payload={"result": {"group": GROUP, "state": 7}})
            assert [reply["text"] for reply in await say(channel, rasa_turn, "/end_chat")] == [TEXTS.user_ended]
            answer.set()
            await asyncio.wait([poller], timeout=5)
            assert poller.cancelled()  # the poll in flight was dropped, its messages stay unread in ServiceNow
        assert await delivered_texts(channel) == []
        assert "too late" not in await transcript(agent)
    finally:
        await close(channel)


async def test_the_resume_after_a_restart_keeps_trying_until_the_store_is_back(channels, rasa_turn, store, monkeypatch):
    monkeypatch.setattr("connectors.servicenow.core.core.RESUME_PAUSES", Pauses((0.01,)))
    with aioresponses() as mock:
        await start(channels(), rasa_turn, mock)
    restarted = channels()
    store.broken = True
    resuming = asyncio.ensure_future(restarted.core.resume())
    await wait_until(lambda: store.failures >= 3)  # tried, and tried again
    assert not resuming.done()
    store.broken = False
    await asyncio.wait_for(resuming, timeout=5)
    assert restarted.core.registry.get("u1").chat_id == GROUP
