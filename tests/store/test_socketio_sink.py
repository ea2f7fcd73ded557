"""socket.io session readers of the outbox, over two stores standing
for two replicas (in-process, fakeredis and a real redis-server): a session
resumes on the other replica exactly after what a socket took, and two
readers of one session (two tabs on two replicas) each show every item once
while the session's pointer, and the delivery report, move once per item."""

import asyncio
from typing import Any, List

from connectors.servicenow.outbox.base import OutboundItem, Outgoing
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.store.keys import SOCKET_SINK
from tests.store.conftest import wait_until


class Socket:
    def __init__(self) -> None:
        self.shown: List[str] = []
        self.changed = asyncio.Event()

    async def emit(self, item: OutboundItem) -> bool:
        self.shown.append(item.payload["text"])
        self.changed.set()
        return True

    async def until_shown(self, count: int) -> None:
        async def wait() -> None:
            while len(self.shown) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), 10)


def say(text: str) -> Outgoing:
    return Outgoing({"recipient_id": "s1", "text": text})


async def stop(task: "asyncio.Task[Any]") -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_session_resumes_on_the_other_replica_after_what_a_socket_took(make_stores):
    store_a, store_b = make_stores()
    a, b = Outbox(store_a, None, owner="a"), Outbox(store_b, None, owner="b")
    on_a = Socket()
    reader = a.reader("s1", on_a.emit)
    task = asyncio.ensure_future(reader.run())
    await asyncio.wait_for(reader.caught_up.wait(), 10)
    await b.put("s1", [say("one"), say("two")])  # appended on B, read on A
    await on_a.until_shown(2)
    await stop(task)

    await b.put("s1", [say("three")])  # nobody connected
    on_b = Socket()
    task = asyncio.ensure_future(b.reader("s1", on_b.emit).run())
    await on_b.until_shown(1)
    await a.put("s1", [say("four")])
    await on_b.until_shown(2)
    await stop(task)
    assert on_a.shown == ["one", "two"]
    assert on_b.shown == ["three", "four"]
    assert (await store_a.sink_position("s1", SOCKET_SINK)) == (await store_b.read("s1"))[-1].entry_id


async def test_two_tabs_on_two_replicas_each_show_every_item_once_and_report_it_once(make_stores):
    store_a, store_b = make_stores()
    reported: List[str] = []
    a = Outbox(store_a, None, owner="a", on_taken=lambda _s, entry, _d: reported.append(entry.payload["text"]))
    b = Outbox(store_b, None, owner="b", on_taken=lambda _s, entry, _d: reported.append(entry.payload["text"]))
    tab_a, tab_b = Socket(), Socket()
    readers = [a.reader("s1", tab_a.emit), b.reader("s1", tab_b.emit)]
    tasks = [asyncio.ensure_future(reader.run()) for reader in readers]
    for reader in readers:
        await asyncio.wait_for(reader.caught_up.wait(), 10)
    await a.put("s1", [say("one"), say("two"), say("three")])
    await tab_a.until_shown(3)
    await tab_b.until_shown(3)
    # A socket shows an item before its reader moves the pointer and reports
    # it; the report of the last one may still be on its way.
    async def all_reported() -> bool:
        return len(reported) >= 3

    await wait_until(all_reported, what="three delivery reports")
    for task in tasks:
        await stop(task)
    assert tab_a.shown == tab_b.shown == ["one", "two", "three"]
    assert sorted(reported) == ["one", "three", "two"]
