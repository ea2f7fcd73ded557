"""The human agents, played through the emulator's control plane: they take
every waiting chat, read who it is from the user's first message (its tag
names the user and the session), follow the same seeded plan as the user
(``plan.session_plan``), and close the chat when the plan says the agent
does. What the agents sent, and what ServiceNow answered, goes to the
recorder. The sleeps are the agents' pace, not waits for the system."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Optional, Set, Tuple

import aiohttp

from soak.checker import LAST_MARK, parse_tag
from soak.history import Recorder
from soak.plan import agent_text, session_plan

QUEUE_LOOK_S = 0.5
#: How long an agent waits for the user's first message before closing the chat as nobody's.
IDENTIFY_S = 90.0
#: How long an agent that closes waits for the user's last message.
LAST_WAIT_S = 120.0


class AgentDesk:
    def __init__(self, emulator_url: str, http: aiohttp.ClientSession, recorder: Recorder, seed: int) -> None:
        self.url = emulator_url.rstrip("/") + "/__emu"
        self.http = http
        self.recorder = recorder
        self.seed = seed
        #: Set at the end of the load: no more pauses, close chats as soon as the plan allows.
        self.finishing = asyncio.Event()
        #: Set when the users are done: stop taking chats.
        self.closing = asyncio.Event()
        self._chats: Set["asyncio.Task[None]"] = set()
        self.control_errors = 0

    async def run(self) -> None:
        while not self.closing.is_set():
            while not self.closing.is_set():
                status, body = await self._control("agent/accept", {})
                if status != 200:
                    break
                task = asyncio.get_running_loop().create_task(self._chat(body["session"]))
                self._chats.add(task)
                task.add_done_callback(self._chats.discard)
            await self._pause(QUEUE_LOOK_S, self.closing)

    async def close_what_is_left(self) -> int:
        """Take and close every chat still open (the end of the run), and wait for the agents' own chats."""
        self.closing.set()
        for task in list(self._chats):
            task.cancel()
        await asyncio.gather(*self._chats, return_exceptions=True)
        closed = 0
        status, body = await self._get("sessions")
        for session in (body or {}).get("sessions", []) if status == 200 else []:
            if not session.get("open"):
                continue
            name = session["session"]
            if session.get("state") in ("QUEUED", 1):
                await self._control("agent/accept", {"session": name})
            status, _ = await self._control("agent/close", {"session": name})
            self.recorder.add("agent_closes", chat=name, api=_api(session), user=None, session=None, t=time.time(),
                              done=time.time(), status=status, drain=True)
            closed += 1
        return closed

    async def _chat(self, summary: Dict[str, Any]) -> None:
        chat = summary["session"]
        api = _api(summary)
        record = self.recorder.add("chats", chat=chat, api=api, user=None, session=None, accepted=time.time())
        who = await self._identify(chat)
        if who is None:
            await self._close(chat, api, None, None)
            return
        user, number = who
        record["user"], record["session"] = user, number
        plan = session_plan(self.seed, user, number)
        for index in range(plan.agent_messages):
            await self._pause(plan.agent_gaps[index], self.finishing)
            if api == "virtual_agent" and plan.agent_typing[index]:
                await self._control("agent/typing", {"session": chat, "on": True})
            text = agent_text(user, number, index)
            started = time.time()
            status, body = await self._control("agent/message", {"session": chat, "text": text})
            self.recorder.add("agent_sends", chat=chat, api=api, user=user, session=number, index=index, text=text,
                              t=started, done=time.time(), status=status, message_id=_message_id(api, body))
            if status != 200:
                return  # the chat is over (409): the user ended it, or ServiceNow did
        if plan.closer == "agent":
            await self._wait_for_last(chat, user, number)
            await self._close(chat, api, user, number)

    async def _identify(self, chat: str) -> Optional[Tuple[str, int]]:
        deadline = time.monotonic() + IDENTIFY_S
        while time.monotonic() < deadline and not self.closing.is_set():
            for message in await self._messages(chat):
                tag = parse_tag(message.get("message"))
                if tag and tag[0] == "u":
                    return tag[1], tag[2]
            await asyncio.sleep(1.0)  # the agent reads the chat again in a second
        return None

    async def _wait_for_last(self, chat: str, user: str, number: int) -> None:
        deadline = time.monotonic() + LAST_WAIT_S
        while time.monotonic() < deadline:
            for message in await self._messages(chat):
                tag = parse_tag(message.get("message"))
                if tag and tag[:3] == ("u", user, number) and LAST_MARK in message.get("message", ""):
                    return
            await asyncio.sleep(2.0)  # the agent reads the chat again

    async def _close(self, chat: str, api: str, user: Optional[str], number: Optional[int]) -> None:
        started = time.time()
        status, _ = await self._control("agent/close", {"session": chat})
        self.recorder.add("agent_closes", chat=chat, api=api, user=user, session=number, t=started, done=time.time(),
                          status=status)

    async def _messages(self, chat: str) -> list:
        status, body = await self._get(f"transcript/{chat}")
        return (body or {}).get("messages", []) if status == 200 else []

    async def _control(self, path: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        try:
            async with self.http.post(f"{self.url}/{path}", json=body, timeout=aiohttp.ClientTimeout(total=30)) as answer:
                return answer.status, await answer.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            self.control_errors += 1
            return 0, None

    async def _get(self, path: str) -> Tuple[int, Any]:
        try:
            async with self.http.get(f"{self.url}/{path}", timeout=aiohttp.ClientTimeout(total=60)) as answer:
                return answer.status, await answer.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            self.control_errors += 1
            return 0, None

    @staticmethod
    async def _pause(seconds: float, cut_short: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(cut_short.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


def _api(summary: Dict[str, Any]) -> str:
    return "virtual_agent" if summary.get("api") == "va" else "connect"


def _message_id(api: str, body: Any) -> Optional[str]:
    if not isinstance(body, dict):
        return None
    if api == "virtual_agent":
        for payload in body.get("callbacks") or []:
            for item in payload.get("body") or []:
                if item.get("messageId"):
                    return item["messageId"]
        return None
    messages = body.get("messages") or []
    return messages[0].get("sys_id") if messages else None
