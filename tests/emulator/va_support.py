"""Helpers for the Virtual Agent tests: a connector-webhook stand-in on a real loopback port, and a VA client.

Nothing here sleeps to wait: the receiver wakes waiters through a condition, and the emulator is polled with a
deadline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Deque, Dict, List, Mapping, Optional

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy

from .conftest import BASIC, JSON_HEADERS, EmulatorClient, Reply

VA_PATH = "/api/sn_va_as_service/bot/integration"
#: Long enough for a loaded CI machine; the happy path takes milliseconds.
DEADLINE_S = 10.0
HEX32 = r"^[0-9a-f]{32}$"


@dataclass
class Received:
    """One callback as the webhook got it."""

    path_qs: str
    headers: CIMultiDictProxy
    raw: bytes
    body: Any


@dataclass
class Answer:
    """How the webhook answers one callback: a status, optionally only after ``hold`` is set."""

    status: int = 200
    hold: Optional[asyncio.Event] = None


class CallbackReceiver:
    """The connector's webhook: records every callback and answers from a script (default 200)."""

    def __init__(self) -> None:
        self.received: List[Received] = []
        self.answers: Deque[Answer] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self._held: List[asyncio.Event] = []
        self._changed = asyncio.Condition()
        self._runner: Optional[web.AppRunner] = None
        self.url = ""
        #: Runs on each callback after it is recorded and before it is answered: what the emulator's state is while
        #: its push is on the wire.
        self.on_receive: Optional[Callable[[Received], Awaitable[None]]] = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/webhook?secret=s3cr3t"

    async def close(self) -> None:
        # Release held answers first, so a failed test does not wait out the server's shutdown timeout.
        for answer in self._held:
            answer.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)
        self._held.extend(a.hold for a in answers if a.hold is not None)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        answer = self.answers.popleft() if self.answers else Answer()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            received = Received(request.path_qs, request.headers, raw, json.loads(raw))
            if self.on_receive is not None:
                await self.on_receive(received)
            async with self._changed:
                self.received.append(received)
                self._changed.notify_all()
            if answer.hold is not None:
                await answer.hold.wait()
        finally:
            self.in_flight -= 1
        return web.json_response({"status": "success"}, status=answer.status)

    async def wait_until(self, predicate: Callable[[List[Received]], bool], timeout: float = DEADLINE_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.received)), timeout)

    async def wait_for(self, count: int, timeout: float = DEADLINE_S) -> List[Received]:
        """The first ``count`` callbacks, once they have arrived."""
        await self.wait_until(lambda received: len(received) >= count, timeout)
        return self.received[:count]

    async def arrives_within(self, count: int, timeout: float) -> bool:
        """Whether ``count`` callbacks arrive within ``timeout`` (a bounded wait on the condition, no sleep)."""
        try:
            await self.wait_for(count, timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def payloads(self) -> List[Dict[str, Any]]:
        return [r.body for r in self.received]


def describe(item: Mapping[str, Any]) -> str:
    """A body item in one short string: ``OutputText:<value>`` or ``ActionMsg:<actionType>[:<message>]``."""
    if item["uiType"] == "ActionMsg":
        suffix = f":{item['message']}" if item["actionType"] == "System" else ""
        return f"ActionMsg:{item['actionType']}{suffix}"
    return f"{item['uiType']}:{item.get('value')}"


def flags(payload: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: payload[k] for k in ("agentChat", "completed", "takeControl") if k in payload}


def items_of(payloads: List[Dict[str, Any]]) -> List[str]:
    return [describe(item) for payload in payloads for item in payload["body"]]


class VaClient:
    """The connector's side of the VA API, plus shortcuts to the emulator's control plane."""

    def __init__(self, client: EmulatorClient, receiver: Optional[CallbackReceiver]) -> None:
        self.client = client
        self._receiver = receiver

    @property
    def receiver(self) -> CallbackReceiver:
        assert self._receiver is not None, "this VaClient has no callback receiver"
        return self._receiver

    def body(
        self,
        text: Optional[str] = "hello",
        *,
        action: Optional[str] = None,
        session: str = "chat-1",
        user: str = "abel.tuter",
        **extra: Any,
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "requestId": uuid.uuid4().hex,
            "clientSessionId": session,
            "userId": user,
            "botToBot": True,
        }
        if text is not None:
            body["message"] = {"text": text, "typed": True}
        if action is not None:
            body["action"] = action
        body.update(extra)
        return body

    async def post(
        self,
        body: Any,
        *,
        headers: Optional[Mapping[str, str]] = None,
        auth: Optional[aiohttp.BasicAuth] = BASIC,
        data: Optional[bytes] = None,
    ) -> Reply:
        merged = {**JSON_HEADERS, **(headers or {})}
        if data is not None:
            return await self.client.request("POST", VA_PATH, data=data, auth=auth, headers=merged)
        return await self.client.request("POST", VA_PATH, json=body, auth=auth, headers=merged)

    async def send(self, text: Optional[str] = "hello", **kwargs: Any) -> Dict[str, Any]:
        """Send a request that must be accepted; returns the body sent."""
        body = self.body(text, **kwargs)
        reply = await self.post(body)
        assert (reply.status, reply.body) == (200, {"status": "success"}), reply
        return body

    async def escalate(self, session: str = "chat-1", **kwargs: Any) -> Dict[str, Any]:
        """AGENT and its three queueing callbacks; returns the body sent."""
        before = len(self.receiver.received)
        body = await self.send("I need a human", action="AGENT", session=session, **kwargs)
        await self.receiver.wait_for(before + 3)
        return body

    async def live(self, session: str = "chat-1", **kwargs: Any) -> Dict[str, Any]:
        """A session an agent accepted, with all callbacks so far received (3 queueing + 5 accept)."""
        body = await self.escalate(session, **kwargs)
        before = len(self.receiver.received)
        await self.client.ok("POST", "agent/accept", {"session": session})
        await self.receiver.wait_for(before + 5)
        return body

    async def transcript(self, session: str = "chat-1") -> Dict[str, Any]:
        return await self.client.ok("GET", f"transcript/{session}")

    async def settled(self, timeout: float = DEADLINE_S) -> Dict[str, Any]:
        """The callback log once no delivery is pending (polled with a deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            log = await self.client.ok("GET", "callbacks")
            if log["pending"] == 0:
                return log
            assert loop.time() < deadline, f"callbacks still pending: {log['pending']}"
            await asyncio.sleep(0.01)  # wait-ok: polling interval of a condition with a deadline (no event crosses the HTTP boundary)
