"""Fixtures: an emulator on a real loopback port (port 0) and an aiohttp client that talks to it over sockets; for the
Virtual Agent tests also a connector webhook on its own loopback port (``receiver``) and a VA client (``va``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Mapping, Optional

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from connectors.servicenow.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_PASSWORD,
    DEFAULT_QUEUE_SYS_ID,
    DEFAULT_USER,
    RunningEmulator,
    start_emulator,
)

if TYPE_CHECKING:
    from .va_support import CallbackReceiver, VaClient

BASIC = aiohttp.BasicAuth(DEFAULT_USER, DEFAULT_PASSWORD)
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
CONNECT = "/api/now/connect"


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy

    @property
    def result(self) -> Any:
        assert self.status == 200, (self.status, self.body)
        return self.body["result"]


class EmulatorClient:
    """Thin helpers over aiohttp: Connect calls as the integration user, control-plane calls, token requests."""

    def __init__(self, http: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
        self.http = http
        self.emulator = emulator
        self.url = emulator.url

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        auth: Optional[aiohttp.BasicAuth] = None,
        headers: Optional[Mapping[str, str]] = None,
        skip_auto_headers: Optional[List[str]] = None,
    ) -> Reply:
        async with self.http.request(
            method,
            self.url + path,
            json=json,
            data=data,
            auth=auth,
            headers=headers,
            skip_auto_headers=skip_auto_headers,
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = await response.text()
            return Reply(response.status, body, response.headers)

    async def api(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        auth: Optional[aiohttp.BasicAuth] = BASIC,
        bearer: Optional[str] = None,
    ) -> Reply:
        headers = dict(JSON_HEADERS)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
            auth = None
        return await self.request(method, CONNECT + path, json=json, auth=auth, headers=headers)

    async def control(self, method: str, path: str, json: Any = None) -> Reply:
        return await self.request(method, "/__emu/" + path, json=json)

    async def ok(self, method: str, path: str, json: Any = None) -> Any:
        """A control-plane call that must succeed; returns its body."""
        reply = await self.control(method, path, json)
        assert reply.status == 200, (path, reply.status, reply.body)
        return reply.body

    async def create_session(self, text: str = "My laptop will not boot", queue: str = DEFAULT_QUEUE_SYS_ID) -> Dict:
        return (await self.api("POST", f"/support/queues/{queue}/sessions", {"message": text})).result

    async def messages(self, group: str, before: Optional[int] = None, **kwargs: Any) -> List[Dict]:
        query = f"?before={before}" if before is not None else ""
        return (await self.api("GET", f"/conversations/{group}/messages{query}", **kwargs)).result

    async def entry(self, group: str) -> Dict:
        found = (await self.api("GET", f"/support/sessions?group_id={group}")).result
        assert len(found) == 1, found
        return found[0]

    async def token(self, **form: str) -> Reply:
        fields = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET, **form}
        return await self.request("POST", "/oauth_token.do", data=fields)

    async def password_token(self) -> Dict:
        reply = await self.token(grant_type="password", username=DEFAULT_USER, password=DEFAULT_PASSWORD)
        assert reply.status == 200, reply.body
        return reply.body


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    running = await start_emulator()
    yield running
    await running.close()


@pytest.fixture
async def client(emulator: RunningEmulator) -> AsyncIterator[EmulatorClient]:
    async with aiohttp.ClientSession() as http:
        yield EmulatorClient(http, emulator)


@pytest.fixture
async def live(client: EmulatorClient) -> Dict:
    """A session that Beth Anglin has accepted (so it holds: question, greeting)."""
    entry = await client.create_session()
    await client.ok("POST", "agent/accept", {"session": entry["group"]})
    return entry


@pytest.fixture
async def receiver() -> AsyncIterator["CallbackReceiver"]:
    """A connector webhook on a real loopback port (see va_support.py)."""
    from .va_support import CallbackReceiver

    webhook = CallbackReceiver()
    await webhook.start()
    yield webhook
    await webhook.close()


@pytest.fixture
async def va(client: EmulatorClient, receiver: "CallbackReceiver") -> "VaClient":
    """A VA client whose emulator delivers callbacks to ``receiver``."""
    from .va_support import VaClient

    await client.ok("POST", "config", {"va_callback_url": receiver.url})
    return VaClient(client, receiver)
