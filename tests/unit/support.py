"""What the unit tests of the core share: a channel on the demo model (in
process), ServiceNow (Connect) mocked with aioresponses, and helpers to talk
to it."""

import asyncio
import json
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import aiohttp

from connectors.servicenow import ServiceNowInput
from connectors.servicenow.payloads import UserPayload
from connectors.servicenow.retry import Pauses
from connectors.servicenow.texts import UserTexts

BASE = "https://acme.service-now.com"
GROUP = "c" * 32
SESSIONS = f"{BASE}/api/now/connect/support/queues/q1/sessions"
MESSAGES = f"{BASE}/api/now/connect/conversations/{GROUP}/messages"
LEAVE = f"{BASE}/api/now/connect/support/sessions/{GROUP}/leave"
TEXTS = UserTexts()
#: Connect, with no poll inside a test (these are about turns, not polling) and quick retries.
OPTIONS = {
    "instance_url": BASE, "username": "rasa.integration", "password": "pw", "queue_id": "q1",
    "poll_interval": 600, "idle_poll_interval": 600, "session_check_interval": 600,
    "retry_attempts": 2, "retry_backoff": 0,
}
#: The production pauses between tracker write attempts (0.1, 0.3, 0.9 s) would only slow tests down.
NO_WRITE_PAUSES = Pauses((0.0, 0.0, 0.0))


def bound(channel: Any, agent: Any) -> Any:
    """The channel serving ``agent``, as Rasa binds it, with no pause between tracker write attempts."""
    channel.bind(SimpleNamespace(ctx=SimpleNamespace(agent=agent)))
    channel.core.slots.write_pauses = NO_WRITE_PAUSES
    return channel


def new_channel(agent: Any, **options: Any) -> Any:
    return bound(ServiceNowInput.from_credentials({**OPTIONS, **options}), agent)


async def close(channel: Any) -> None:
    await channel.core.shutdown(timeout=1)
    await channel.core.http.aclose()


async def say(channel: Any, rasa_turn: Any, text: str, sender: str = "u1") -> List[Dict[str, Any]]:
    return await channel.handle(UserPayload(sender=sender, message=text), rasa_turn)


async def slots(agent: Any, sender: str = "u1") -> Dict[str, Any]:
    tracker = await agent.tracker_store.retrieve(sender)
    return tracker.current_slot_values()


def body_of(mock: Any, method: str, url: str, index: int = -1) -> Any:
    return json.loads(mock.requests[(method, aiohttp.client.URL(url))][index].kwargs["data"])


def requests_to(mock: Any, method: str, url: str) -> List[Any]:
    return mock.requests.get((method, aiohttp.client.URL(url)), [])


async def start(channel: Any, rasa_turn: Any, mock: Any) -> List[Dict[str, Any]]:
    mock.post(SESSIONS, payload={"result": {"group": GROUP, "state": 1}})
    return await say(channel, rasa_turn, "talk to live agent")


async def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline


async def delivered_texts(channel: Any, sender: str = "u1") -> List[str]:
    """The texts a fresh stream of the conversation gets now."""
    subscription = channel.core.outbox.subscribe(sender, "")
    texts = []
    while True:
        item = await subscription.next(heartbeat=0.05)
        if item is None:
            break
        if "text" in item.payload:
            texts.append(item.payload["text"])
    subscription.close()
    return texts


class CountingRenewals:
    """A store that counts its lease renewals (the poll and callback leases must be renewed while their work runs)."""

    def __init__(self, store: Any) -> None:
        self.store, self.renewals = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def renew_lease(self, *args: Any, **kwargs: Any) -> Any:
        self.renewals += 1
        return await self.store.renew_lease(*args, **kwargs)
