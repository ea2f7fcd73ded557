"""A ServiceNow instance for the reconciliation tests: the emulator on a loopback port, the channel's HTTP client and
Virtual Agent client on it, and the agent's side through the control plane."""

import asyncio
from typing import Any, AsyncIterator, Dict, List

import aiohttp
import pytest

from connectors.servicenow.servicenow.base import AgentMessage, ChatClosed, HandoffRequest, SystemNotice
from connectors.servicenow.servicenow.http import ServiceNowHTTP
from connectors.servicenow.servicenow.va_records import ConversationRecords
from connectors.servicenow.servicenow.virtual_agent import VirtualAgentBackend
from connectors.servicenow.config import ServiceNowSettings
from connectors.servicenow.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    RunningEmulator,
    start_emulator,
)

TABLE = "/api/now/table/"


async def no_sleep(_delay: float) -> None:
    return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Instance:
    """The emulator, the channel's HTTP client and Virtual Agent client on it, and the agent's side (control plane)."""

    def __init__(self, emulator: RunningEmulator, control: aiohttp.ClientSession, oauth: bool = False) -> None:
        self.emulator = emulator
        self.control_http = control
        credentials: Dict[str, Any] = {
            "instance_url": emulator.url, "api": "virtual_agent", "webhook_secret": "s3cret",
            "username": DEFAULT_USER, "password": DEFAULT_PASSWORD, "retry_attempts": 3,
        }
        if oauth:
            credentials.update(client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET)
        self.settings = ServiceNowSettings.from_credentials(credentials)
        self.http = ServiceNowHTTP(self.settings, sleep=no_sleep)
        self.backend = VirtualAgentBackend(self.settings, self.http)
        self.clock = Clock()
        self.records = ConversationRecords(self.http, clock=self.clock)

    async def control(self, path: str, body: Any = None, method: str = "POST") -> Any:
        async with self.control_http.request(method, f"{self.emulator.url}/__emu/{path}", json=body) as response:
            answer = await response.json()
            assert response.status == 200, (path, answer)
            return answer

    async def open_chat(self, sender: str = "user-1") -> str:
        opened = await self.backend.open_chat(HandoffRequest(sender_id=sender, text="I need a human"))
        return opened.chat_id

    async def agent(self, what: str, chat_id: str, **body: Any) -> List[Dict[str, Any]]:
        """An agent operation; the pushes it made."""
        answer = await self.control(f"agent/{what}", {"session": chat_id, **body})
        return list(answer.get("callbacks") or [])

    def table_requests(self) -> int:
        return sum(1 for r in self.emulator.state.requests if r.path.startswith(TABLE))

    async def settled(self, path_prefix: str, timeout: float = 10.0) -> None:
        """Wait until no request under ``path_prefix`` is still being answered (a delayed one logs when it is)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(1 for r in self.emulator.state.requests if r.path.startswith(path_prefix) and r.fault) == 0:
            assert loop.time() < deadline, "a delayed request was never answered"
            await asyncio.sleep(0.01)  # wait-ok: polling a condition with a deadline

    def events_of(self, pushes: List[Dict[str, Any]]) -> List[Any]:
        return [event for push in pushes for event in self.backend.parse_callback(push).events]


@pytest.fixture
async def instance() -> AsyncIterator[Instance]:
    emulator = await start_emulator()
    async with aiohttp.ClientSession() as control:
        made = Instance(emulator, control)
        yield made
        await made.http.aclose()
    await emulator.close()


def same(event: Any) -> Any:
    """An event without its arrival time (a read and a push arrive at different times)."""
    if isinstance(event, AgentMessage):
        return ("AgentMessage", event.message_id, event.text, event.agent_name, dict(event.rich))
    if isinstance(event, SystemNotice):
        return ("SystemNotice", event.message_id, event.text, event.kind, dict(event.details))
    if isinstance(event, ChatClosed):
        return ("ChatClosed", event.reason, event.text, event.message_id)
    return event
