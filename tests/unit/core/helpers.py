"""What the core's tests share beyond tests/unit/support.py: a tracker
store that breaks on demand, ServiceNow calls held until released, pushes
from ServiceNow, and replicas over one (fake) Redis."""

import asyncio
import uuid
from types import SimpleNamespace
from typing import List

from fakeredis import aioredis as fake_aioredis

from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.core.intake import DeliveryReports, Dispatcher
from connectors.servicenow.core.polling import Polling
from connectors.servicenow.ops.observe import Observer
from connectors.servicenow.outbox.stream import Outbox
from connectors.servicenow.rasa_glue.pending import PendingWrites
from connectors.servicenow.servicenow.base import AgentMessage, ChatClosed, CloseReason, PollResult
from connectors.servicenow.store import HandoffRecord, MemoryStore
from connectors.servicenow.store.redis import RedisStore
from connectors.servicenow.tasks import TaskSet
from tests.unit.support import GROUP, OPTIONS, MESSAGES, SESSIONS, TEXTS, requests_to, say

class RecordingSlots:
    def __init__(self):
        self.writes: List[list] = []

    async def write(self, sender_id, events):
        self.writes.append(list(events))

class Recorder:
    def __init__(self):
        self.closed = []
        self.failed = []

    async def on_closed(self, chat, event):
        self.closed.append(event)

    async def on_failed(self, chat, error):
        self.failed.append(error)

class PushBackend:
    api = "virtual_agent"
    pulls = False

    def __init__(self):
        self.reports = []
        self.reported = asyncio.Event()

    async def report_delivery(self, chat, message_id, delivered):
        self.reports.append((message_id, delivered))
        self.reported.set()

class PullBackend(PushBackend):
    api = "connect"
    pulls = True

class Relay:
    """A dispatcher with what it needs: an outbox on the memory store, tracker
    writes recorded, the end of the chat recorded."""

    def __init__(self, backend, settings, slots, recorder, store=None, keyed=False, order=None):
        self.store = store if store is not None else MemoryStore()
        self.work = TaskSet()
        self.backend = backend
        self.reports = DeliveryReports(settings, self.store, backend, self.work)
        self.outbox = Outbox(self.store, None, owner="r1", on_taken=self.reports.taken)
        self.pending = PendingWrites(slots)

        async def progressed(chat):
            pass

        self.gone = []
        self.dispatcher = Dispatcher(
            settings, backend, self.store, self.outbox, self.pending, Observer(), self.work,
            on_closed=recorder.on_closed, on_progress=progressed, on_gone=self.gone.append, keyed=keyed, order=order,
        )

    async def dispatch(self, chat, *args, **kwargs):
        """Dispatch for a live chat: its record is filed first (as opening it does)."""
        await self.store.create_handoff(HandoffRecord(chat.sender_id, chat.chat_id, self.backend.api))
        return await self.dispatcher.dispatch(chat, *args, **kwargs)

    async def flush(self, chat):
        await self.pending.flush(chat.sender_id)

    def take_unsaved(self, chat):
        return self.pending.take(chat.sender_id)

    async def stop(self):
        await self.work.wait(5)
        await self.pending.stop()

def make_relay(backend=None, settings=None):
    settings = settings or SETTINGS
    slots, recorder = RecordingSlots(), Recorder()
    relay = Relay(backend or PullBackend(), settings, slots, recorder)
    return relay, relay.outbox, slots, recorder

async def streamed(outbox, count, *, statuses=True):
    """The first ``count`` items on u1's stream (without handoff status items unless ``statuses``)."""
    subscription = outbox.subscribe("u1")
    items = []
    while len(items) < count:
        item = await subscription.next(heartbeat=1)
        if statuses or item is None or item.kind != "handoff":
            items.append(item)
    subscription.close()
    return items


#: Replicas that poll at once (Connect).
REPLICA_SETTINGS = ServiceNowSettings.from_credentials({**OPTIONS, "poll_interval": 0.02, "idle_poll_interval": 0.02})
#: Polling as the dispatch tests see it.
SETTINGS = ServiceNowSettings.from_credentials(
    {
        "instance_url": "https://acme.service-now.com", "username": "u", "password": "p", "queue_id": "q",
        "poll_interval": 1, "idle_poll_interval": 10, "idle_after": 60, "session_check_interval": 30,
    }
)


async def start_live(channel, rasa_turn, mock):
    """The user asks for an agent and the chat opens."""
    mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
    replies = await say(channel, rasa_turn, "talk to live agent")
    assert [reply["text"] for reply in replies] == [TEXTS.connecting]


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


def breaking_after(handle_message, store):
    """Rasa's turn runs on a working store, which breaks right after it."""

    async def turn(message):
        result = await handle_message(message)
        store.broken = True
        return result

    return turn


async def receive_close(channel):
    """ServiceNow pushes the agent's close; the push is stored at once, the chat ends after its grace."""
    await channel.core.callbacks.receive(closed_by_agent())
    await channel.core.work.wait(timeout=5)


def closed_by_agent():
    return SimpleNamespace(chat_id=GROUP, sender_id="u1", fingerprint="close", events=[ChatClosed(CloseReason.AGENT_CLOSED)])


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


def two_stores(server):
    """Two replicas' connections to one Redis."""
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    return tuple(RedisStore(fake_aioredis.FakeRedis(server=server), prefix=prefix) for _ in range(2))


def forwarded(mock):
    return len(requests_to(mock, "POST", MESSAGES))


def pollers(backend, store, owner):
    async def failed(chat, error):
        pass

    async def cursor_moved(chat):
        pass

    relay = Relay(backend, REPLICA_SETTINGS, RecordingSlots(), Recorder(), store=store)
    polling = Polling(
        REPLICA_SETTINGS, backend, store, relay.dispatcher, TaskSet(), owner=owner, on_failed=failed, on_cursor=cursor_moved
    )
    polling.relay = relay  # type: ignore[attr-defined]
    return polling


async def stop(polling):
    await polling.release(await polling.stop_polling(timeout=1), timeout=1)
    await polling.relay.stop()


class CountingPullBackend(PullBackend):
    def __init__(self):
        super().__init__()
        self.polls = 0
        self.polled = asyncio.Event()

    async def poll(self, chat, cursor):
        self.polls += 1
        self.polled.set()
        return PollResult([], cursor.last_updated, cursor.seen_ids)

    async def check_closed(self, chat):
        return None

