"""The socket.io sink: a session's reader shows what its sockets were not
shown, and leaves what no socket took for the next one (the same readers on
two replicas' stores: tests/store/test_socketio_sink.py)."""

import asyncio
from typing import List

import pytest

from connectors.servicenow.outbox.base import OutboundItem, Outgoing
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.store import MemoryStore
from connectors.servicenow.store.keys import SOCKET_SINK



class Sockets:
    """What the reader emits to; ``connected`` says whether a socket is there."""

    def __init__(self) -> None:
        self.connected = True
        self.shown: List[str] = []
        self.changed = asyncio.Event()

    async def emit(self, item: OutboundItem) -> bool:
        if not self.connected:
            return False
        self.shown.append(item.payload["text"])
        self.changed.set()
        return True

    async def until_shown(self, count: int) -> None:
        async def wait() -> None:
            while len(self.shown) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), 5)


def say(text: str) -> Outgoing:
    return Outgoing({"recipient_id": "s1", "text": text})


@pytest.fixture
def outbox():
    return Outbox(MemoryStore(), None, owner="r1")


async def test_a_session_that_comes_back_gets_what_it_missed_once(outbox):
    first = Sockets()
    reader = outbox.reader("s1", first.emit)
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 5)
    await outbox.put("s1", [say("one"), say("two")])
    await first.until_shown(2)
    task.cancel()  # the last socket disconnected
    await asyncio.gather(task, return_exceptions=True)

    await outbox.put("s1", [say("three"), say("four")])  # while the page reloads

    again = Sockets()
    reader = outbox.reader("s1", again.emit)
    task = asyncio.ensure_future(reader.run())
    await again.until_shown(2)
    await outbox.put("s1", [say("five")])
    await again.until_shown(3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert first.shown == ["one", "two"]
    assert again.shown == ["three", "four", "five"]


async def test_an_item_no_socket_took_stays_for_the_next_one(outbox):
    gone = Sockets()
    gone.connected = False  # disconnected before the reader noticed
    reader = outbox.reader("s1", gone.emit)
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 5)
    await outbox.put("s1", [say("one")])
    await asyncio.wait_for(task, 5)  # the reader stops without moving the pointer
    assert await outbox.store.sink_position("s1", SOCKET_SINK) is None

    back = Sockets()
    task = asyncio.ensure_future(outbox.reader("s1", back.emit).run())
    await back.until_shown(1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert back.shown == ["one"]


async def test_a_reader_counts_as_a_reader_of_its_session_until_it_stops(outbox):
    sockets = Sockets()
    reader = outbox.reader("s1", sockets.emit)
    assert outbox.readers == 1 and outbox.mailbox_count == 1
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.readers == 0 and outbox.mailbox_count == 0


async def test_a_sessions_pointer_goes_with_its_idle_stream():
    # The pointer is the stream's ``socketio`` sink: bounded as the stream is,
    # it goes when the conversation has been quiet for ``stream_ttl``.
    clock = [1000.0]
    store = MemoryStore(stream_ttl=60, clock=lambda: clock[0])
    outbox = Outbox(store, None, owner="r1")
    sockets = Sockets()
    reader = outbox.reader("s1", sockets.emit)
    task = asyncio.ensure_future(reader.run())
    await outbox.put("s1", [say("one")])
    await sockets.until_shown(1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await store.sink_position("s1", SOCKET_SINK) is not None
    clock[0] += 61
    assert await store.sink_position("s1", SOCKET_SINK) is None
    assert await store.read("s1") == []
