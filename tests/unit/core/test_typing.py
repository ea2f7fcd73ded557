"""Typing reaches the agent as changes only: one call in flight per chat, calls
spaced by the minimum interval, the latest state winning, no retries."""

import asyncio
from typing import List

from connectors.servicenow.errors import ServiceNowUnavailable
from connectors.servicenow.core.chat import LiveChat
from connectors.servicenow.core.typing import TypingForwarder
from connectors.servicenow.servicenow.base import ChatRef


class Agent:
    """Records typing calls; each call waits until the test lets it finish."""

    def __init__(self) -> None:
        self.calls: List[bool] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.release.set()
        self.called = asyncio.Condition()
        self.fail_next = False

    async def send(self, chat: ChatRef, typing: bool) -> bool:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        async with self.called:
            self.calls.append(typing)
            self.called.notify_all()
        try:
            await self.release.wait()
            if self.fail_next:
                self.fail_next = False
                raise ServiceNowUnavailable("down", attempts=1)
            return True
        finally:
            self.in_flight -= 1

    async def wait_for_calls(self, count: int) -> None:
        async with self.called:
            await asyncio.wait_for(self.called.wait_for(lambda: len(self.calls) >= count), timeout=5)


def live_chat(chat_id: str = "c1") -> LiveChat:
    return LiveChat(sender_id="u1", chat_id=chat_id, user="u1")


async def idle(forwarder: TypingForwarder, chat: LiveChat) -> None:
    """Wait until the chat's worker has finished (nothing more to send)."""
    state = forwarder._chats.get(chat.chat_id)
    if state is not None and state.worker is not None:
        await asyncio.wait_for(asyncio.shield(state.worker), timeout=5)


async def test_a_burst_of_changes_costs_two_calls_and_the_latest_state_wins():
    agent = Agent()
    forwarder = TypingForwarder(agent.send, min_interval=0.2)
    chat = live_chat()
    forwarder.note(chat, True)
    await agent.wait_for_calls(1)
    for typing in (False, True, False, True, True, False):
        forwarder.note(chat, typing)
    await idle(forwarder, chat)
    assert agent.calls == [True, False]


async def test_changes_made_before_the_first_call_leaves_send_only_the_latest():
    agent = Agent()
    forwarder = TypingForwarder(agent.send, min_interval=0.2)
    chat = live_chat()
    for typing in (True, False, True, False):
        forwarder.note(chat, typing)
    await agent.wait_for_calls(1)
    await idle(forwarder, chat)
    assert agent.calls == [False]


async def test_the_same_state_again_is_not_sent():
    agent = Agent()
    forwarder = TypingForwarder(agent.send, min_interval=0.0)
    chat = live_chat()
    forwarder.note(chat, True)
    await idle(forwarder, chat)
    for _ in range(5):
        forwarder.note(chat, True)
    await idle(forwarder, chat)
    assert agent.calls == [True]


async def test_one_call_in_flight_per_chat_and_calls_at_least_the_interval_apart():
    agent = Agent()
    agent.release.clear()
    forwarder = TypingForwarder(agent.send, min_interval=0.1)
    chat = live_chat()
    forwarder.note(chat, True)
    await agent.wait_for_calls(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for typing in (False, True, False):
        forwarder.note(chat, typing)
        await asyncio.sleep(0)  # wait-ok: one turn of the loop lets any (wrong) second worker run
    assert agent.calls == [True] and agent.in_flight == 1
    agent.release.set()
    await agent.wait_for_calls(2)
    assert loop.time() - started >= 0.1 * 0.9  # timer slack
    await idle(forwarder, chat)
    assert agent.calls == [True, False] and agent.most_in_flight == 1


async def test_a_failed_call_is_not_retried():
    agent = Agent()
    agent.fail_next = True
    forwarder = TypingForwarder(agent.send, min_interval=0.0)
    chat = live_chat()
    forwarder.note(chat, True)
    await idle(forwarder, chat)
    assert agent.calls == [True]
    forwarder.note(chat, False)  # the next change still goes out
    await idle(forwarder, chat)
    assert agent.calls == [True, False]


async def test_ended_chats_cost_nothing_and_are_forgotten():
    agent = Agent()
    forwarder = TypingForwarder(agent.send, min_interval=0.0)
    chat = live_chat()
    forwarder.note(chat, True)
    await idle(forwarder, chat)
    chat.ended = True
    forwarder.note(chat, False)
    assert forwarder.prune() == 1 and len(forwarder) == 0
    assert agent.calls == [True]


async def test_shutdown_cancels_a_waiting_worker():
    agent = Agent()
    forwarder = TypingForwarder(agent.send, min_interval=60.0)
    chat = live_chat()
    forwarder.note(chat, True)
    await agent.wait_for_calls(1)
    forwarder.note(chat, False)  # waits a minute for its turn
    await forwarder.aclose()
    assert agent.calls == [True]
