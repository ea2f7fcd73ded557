"""Simulated users: each talks to the bot, asks for an agent, writes to the
agent, ends the chat or waits for the agent to end it, and comes back,
following its seeded plan (``plan.py``). Each keeps a Server-Sent Events
stream open as a browser's ``EventSource`` would: it reconnects with
``Last-Event-ID`` (on purpose to another replica, and after a replica or
Redis went away), and sometimes stays away for a while. Everything sent and
received goes to the recorder; the checker judges it afterwards.

The sleeps here are the users' behaviour (think time, a browser's reconnect
delay, a tab in the background), not waits for the system: whenever a user
waits for the system it waits on an event with a deadline."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Dict, List, Optional, Set

import aiohttp

from soak.checker import TEXTS, end_notice, parse_tag
from soak.history import Recorder
from soak.plan import session_plan, user_profile, user_text

#: How long a user waits for the agent to end the chat before deciding it is stuck.
END_WAIT_S = 90.0
#: How long a patient user waits for the agent's planned messages before ending.
AGENT_WAIT_S = 45.0
#: After an end, how long a user waits for its stream to show it (so a late event never ends the next chat).
CATCH_UP_S = 60.0
#: How long a frontend keeps sending one message again (after a 503 with Retry-After, a 502, a dropped connection).
RESEND_FOR_S = 180.0
#: ``retry: 2000`` of the stream: a browser's reconnect delay after the server closed it.
RECONNECT_S = 2.0
#: After "Sorry, I couldn't end the chat ... You're still connected" (the end
#: could not be saved: the chat goes on), the user sends the end command
#: again after these pauses.
END_AGAIN_S = (5.0, 10.0, 20.0, 30.0)


class Shared:
    """What all users share: the HTTP client, the recorder, the switches of the run."""

    def __init__(self, http: aiohttp.ClientSession, recorder: Recorder, seed: int, replicas: int, ramp_up: float) -> None:
        self.http = http
        self.recorder = recorder
        self.seed = seed
        self.replicas = replicas
        self.ramp_up = ramp_up
        #: Set at the end of the load: finish the current chat, start no new one.
        self.finishing = asyncio.Event()
        #: Set when everything is checked: close the streams.
        self.streams_off = asyncio.Event()
        #: Time of the last item that reached any user (the run waits for quiet before it looks).
        self.last_item_at = time.time()


class User:
    def __init__(self, uid: str, api: str, base_url: str, shared: Shared) -> None:
        self.uid = uid
        self.api = api
        self.base = base_url.rstrip("/") + "/webhooks/servicenow"
        self.shared = shared
        self.profile = user_profile(shared.seed, uid, shared.ramp_up)
        self.session = -1
        self.in_handoff = False
        self.ended = asyncio.Event()
        self.end_detail = ""
        self._last_notice = ""
        self._session_started_at = 0.0
        self._chat_seen_at: Dict[str, float] = {}
        self._current_chat: Optional[str] = None
        self._stream_caught_up = asyncio.Event()
        self._agent_seen: Dict[int, Set[int]] = {}
        self._agent_arrived = asyncio.Event()
        self.last_event_id: Optional[str] = None
        self.connections = 0
        self.done = asyncio.Event()
        self._rng = random.Random(f"{shared.seed}/replicas/{uid}")

    # -- the user's life -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        stream = asyncio.get_running_loop().create_task(self._stream_forever())
        try:
            await self._pause(self.profile.start_delay)
            number = 0
            while not self.shared.finishing.is_set():
                await self._one_session(number)
                number += 1
        finally:
            self.done.set()
            await self.shared.streams_off.wait()
            stream.cancel()

    async def _one_session(self, number: int) -> None:
        plan = session_plan(self.shared.seed, self.uid, number)
        self.session = number
        await self.say("hello", "bot")
        await self._pause(plan.before_handoff)
        if not await self._start_handoff(number):
            return
        for index in range(plan.user_messages):
            if await self._think(plan.user_gaps[index]):
                break  # the chat ended under the user
            last = index == plan.user_messages - 1 or self.shared.finishing.is_set()
            if plan.user_typing[index]:
                await self.typing(True)
            text = user_text(self.uid, number, index, last=last and plan.closer == "agent")
            replies = await self.say(text, "handoff")
            self._read_replies(replies)
            if last or self.ended.is_set():
                break
        if not self.ended.is_set():
            if plan.closer == "user":
                await self._end_chat(plan)
            else:
                await self._wait_for_the_agent_to_end(number)
        self.in_handoff = False
        await self._wait_for_the_stream_to_catch_up(number)
        await self._pause(plan.pause_after)

    async def _start_handoff(self, number: int) -> bool:
        for attempt in range(6):
            if attempt and self.shared.finishing.is_set():
                return False
            self.ended.clear()
            self.end_detail = self._last_notice = ""
            self._current_chat = None
            self._stream_caught_up.clear()
            self._session_started_at = time.time()
            replies = await self.say("talk to live agent", "start")
            texts = reply_texts(replies)
            if TEXTS.connecting in texts:
                self.in_handoff = True
                self.shared.recorder.user_event(self.uid, "handoff_started", number)
                return True
            detail = texts[0] if texts else ("no answer" if replies is None else "empty answer")
            self.shared.recorder.user_event(self.uid, "start_failed", number, detail[:80])
            # Refused (ServiceNow down, asked too often): the user tries again a little later.
            await self._pause(15.0 + 10.0 * attempt)
        return False

    async def _end_chat(self, plan: Any) -> None:
        if not plan.impatient:
            await self._wait_for_agent_messages(plan.agent_messages)
        if self.ended.is_set():
            return
        self.shared.recorder.user_event(self.uid, "end_requested", self.session)
        replies = await self._say_end()
        texts = reply_texts(replies)
        if TEXTS.user_ended in texts:
            self._mark_ended("user_ended")
        else:
            self._read_replies(replies)
            if not self.ended.is_set():
                self._mark_ended("end_answer:" + (texts[0][:40] if texts else str(replies)[:40]))

    async def _wait_for_the_agent_to_end(self, number: int) -> None:
        if await self._wait(self.ended, END_WAIT_S):
            return
        # No end yet: the agent may be slow, or the chat may have ended without the user being told. The user
        # writes once more; if that still goes to the chat (an empty answer), the checker compares it with the
        # agent's close. Then the user leaves with the end command, as the docs tell a user in this state to do.
        replies = await self.say("is anyone there", "remedy")
        routed_to_chat = replies == []
        self.shared.recorder.user_event(self.uid, "stuck" if routed_to_chat else "waited", number,
                                        "still routed to the chat" if routed_to_chat else "the bot answered")
        self._read_replies(replies)
        if not self.ended.is_set():
            replies = await self._say_end()
            texts = reply_texts(replies)
            self._mark_ended("stuck_then_" + ("user_ended" if TEXTS.user_ended in texts else "other"))

    async def _say_end(self) -> Optional[List[Dict[str, Any]]]:
        """The end command, sent again while the answer says the chat goes on
        (``end_failed``: the end could not be saved) and the chat has not
        ended meanwhile."""
        replies = await self.say("/end_chat", "end")
        for pause in END_AGAIN_S:
            texts = reply_texts(replies)
            if TEXTS.end_failed not in texts or self.ended.is_set():
                break
            self.shared.recorder.user_event(self.uid, "end_failed", self.session)
            if await self._wait(self.ended, pause):
                break
            replies = await self.say("/end_chat", "end")
        return replies

    async def _wait_for_agent_messages(self, count: int) -> None:
        deadline = time.monotonic() + AGENT_WAIT_S
        while len(self._agent_seen.get(self.session, ())) < count and not self.ended.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._agent_arrived.clear()
            await self._wait(self._agent_arrived, left)

    async def _wait_for_the_stream_to_catch_up(self, number: int) -> None:
        if not await self._wait(self._stream_caught_up, CATCH_UP_S):
            self.shared.recorder.user_event(self.uid, "stream_behind", number, "no handoff end on the stream")

    # -- requests --------------------------------------------------------------------------------------------------

    async def say(self, text: str, kind: str) -> Optional[List[Dict[str, Any]]]:
        """POST to the webhook as a frontend does: sent again after a 503 (Retry-After), a 502 or a dropped
        connection, for a while. Returns the replies, or ``None`` when it never got a 200."""
        record = self.shared.recorder.add("sends", user=self.uid, api=self.api, session=self.session, kind=kind,
                                          text=text, attempts=[])
        deadline = time.monotonic() + RESEND_FOR_S
        while True:
            started = time.time()
            status = reason = upstream = None
            replies: Optional[List[Dict[str, Any]]] = None
            retry_after = RECONNECT_S
            try:
                async with self.shared.http.post(
                    f"{self.base}/webhook", json={"sender": self.uid, "message": text},
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as answer:
                    status, upstream = answer.status, answer.headers.get("X-Soak-Upstream")
                    body = await _json(answer)
                    if status == 200 and isinstance(body, list):
                        replies = body
                    elif isinstance(body, dict):
                        reason = body.get("reason")
                    retry_after = _seconds(answer.headers.get("Retry-After"), RECONNECT_S)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                reason = type(error).__name__
            record["attempts"].append({"t": started, "done": time.time(), "status": status, "reason": reason,
                                       "upstream": upstream, "replies": replies})
            if status == 200:
                return replies
            if status not in (None, 502, 503, 504) or time.monotonic() > deadline:
                return None
            await asyncio.sleep(min(retry_after, 10.0))  # the frontend's resend delay

    async def typing(self, on: bool) -> None:
        record = self.shared.recorder.add("sends", user=self.uid, api=self.api, session=self.session, kind="typing",
                                          text=str(on), attempts=[])
        started = time.time()
        status = reason = upstream = None
        try:
            async with self.shared.http.post(f"{self.base}/typing", json={"sender": self.uid, "typing": on},
                                             timeout=aiohttp.ClientTimeout(total=30)) as answer:
                status, upstream = answer.status, answer.headers.get("X-Soak-Upstream")
                body = await _json(answer)
                reason = body.get("reason") if isinstance(body, dict) else None
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            reason = type(error).__name__
        record["attempts"].append({"t": started, "done": time.time(), "status": status, "reason": reason,
                                   "upstream": upstream, "replies": None})

    # -- what the user receives ------------------------------------------------------------------------------------

    def on_callback(self, payload: Dict[str, Any], arrived: float) -> None:
        self._receive("callback", payload, arrived, "typing" if "typing" in payload else "message", None, None)

    def _receive(self, sink: str, payload: Dict[str, Any], arrived: float, event: str, event_id: Optional[str],
                 conn: Optional[int]) -> None:
        self.shared.last_item_at = arrived
        handoff = payload.get("handoff") if isinstance(payload.get("handoff"), dict) else {}
        metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
        text = payload.get("text")
        self.shared.recorder.add(
            "received", user=self.uid, sink=sink, t=arrived, event=event, text=text, source=metadata.get("source"),
            event_id=event_id, conn=conn, chat_id=handoff.get("chat_id"), active=handoff.get("active"),
        )
        tag = parse_tag(text)
        if tag and tag[0] == "a":
            self._agent_seen.setdefault(tag[2], set()).add(tag[3])
            self._agent_arrived.set()
        if sink != "sse":
            return  # the user's idea of where it is comes from its stream and its own answers
        if event == "handoff" and handoff.get("chat_id"):
            chat = str(handoff["chat_id"])
            if handoff.get("active"):
                self._chat_seen_at.setdefault(chat, arrived)
                if self._chat_seen_at[chat] >= self._session_started_at:
                    self._current_chat = chat
            elif chat == self._current_chat:
                self._stream_caught_up.set()
                self._mark_ended(self._last_notice or "handoff_event")
        elif event == "message" and end_notice(text):
            # The stream shows the end (the handoff event) first and the notice right after it.
            self._last_notice = end_notice(text) or ""
            self.shared.recorder.user_event(self.uid, "notice", self.session, self._last_notice)

    def _read_replies(self, replies: Optional[List[Dict[str, Any]]]) -> None:
        texts = reply_texts(replies)
        for text in texts:
            if text and TEXTS.message_not_delivered in text:
                self.shared.recorder.user_event(self.uid, "told_not_delivered", self.session)
            notice = end_notice(text)
            if notice:
                self.shared.recorder.user_event(self.uid, "notice", self.session, notice)
                self._mark_ended(notice)
        if texts and not any(end_notice(t) for t in texts) and TEXTS.end_failed not in texts and self.in_handoff:
            # The bot answered a message meant for the agent: as far as the channel knows, the handoff is over.
            self._mark_ended("bot_answered")

    def _mark_ended(self, detail: str) -> None:
        if self.ended.is_set() or not self.in_handoff:
            return
        self.end_detail = detail
        self.ended.set()
        self.shared.recorder.user_event(self.uid, "ended", self.session, detail)

    # -- the stream ------------------------------------------------------------------------------------------------

    async def _stream_forever(self) -> None:
        replica = self._rng.randrange(self.shared.replicas)
        number = 0
        while not self.shared.streams_off.is_set():
            lifetime = self.profile.stream_lifetimes[number % len(self.profile.stream_lifetimes)]
            gap = self.profile.stream_gaps[number % len(self.profile.stream_gaps)]
            if self.shared.finishing.is_set():
                lifetime, gap = 3600.0, 0.0  # keep one stream through the drain
            why = await self._one_stream(replica, lifetime)
            number += 1
            replica = (replica + 1 + self._rng.randrange(self.shared.replicas - 1)) % self.shared.replicas \
                if self.shared.replicas > 1 else 0
            if why == "lifetime":
                if gap:
                    await self._pause(gap)  # a tab in the background: the stream stays closed a while
            else:
                await asyncio.sleep(RECONNECT_S)  # the browser's reconnect delay

    async def _one_stream(self, replica: int, lifetime: float) -> str:
        self.connections += 1
        conn = self.connections
        headers = {"X-Soak-Replica": str(replica)}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        record = self.shared.recorder.add("streams", user=self.uid, conn=conn, t=time.time(), status=None, reason=None,
                                          upstream=None, last_event_id=self.last_event_id, closed=None, why=None)
        why = "closed"
        try:
            async with self.shared.http.get(
                f"{self.base}/stream", params={"sender": self.uid}, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=45),
            ) as answer:
                record["status"], record["upstream"] = answer.status, answer.headers.get("X-Soak-Upstream")
                if answer.status != 200:
                    body = await _json(answer)
                    record["reason"] = body.get("reason") if isinstance(body, dict) else None
                    why = f"status {answer.status}"
                else:
                    reader = asyncio.get_running_loop().create_task(self._read_stream(answer, conn))
                    stop = asyncio.get_running_loop().create_task(self.shared.streams_off.wait())
                    done, _ = await asyncio.wait({reader, stop}, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done:
                        why = reader.result()
                    else:
                        why = "lifetime" if not stop.done() else "run over"
                        reader.cancel()
                    stop.cancel()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            why = type(error).__name__
        record["closed"], record["why"] = time.time(), why
        return why

    async def _read_stream(self, answer: aiohttp.ClientResponse, conn: int) -> str:
        event_id: Optional[str] = None
        event, data = "message", []
        try:
            async for raw in answer.content:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        self._dispatch(event, event_id, "\n".join(data), conn)
                    event, data = "message", []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return type(error).__name__
        return "server closed"

    def _dispatch(self, event: str, event_id: Optional[str], data: str, conn: int) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            payload = {"text": data}
        if event_id:
            self.last_event_id = event_id
        if isinstance(payload, dict):
            self._receive("sse", payload, time.time(), event, event_id, conn)

    # -- waiting ---------------------------------------------------------------------------------------------------

    async def _think(self, seconds: float) -> bool:
        """Think for ``seconds`` (less once the run is finishing); True when the chat ended meanwhile."""
        if self.shared.finishing.is_set():
            seconds = min(seconds, 0.5)
        return await self._wait(self.ended, seconds)

    async def _pause(self, seconds: float) -> None:
        await self._wait(self.shared.finishing, seconds)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            return False
        return True


async def _json(answer: aiohttp.ClientResponse) -> Any:
    try:
        return await answer.json(content_type=None)
    except (ValueError, aiohttp.ClientError, asyncio.TimeoutError):
        return None


def _seconds(value: Optional[str], default: float) -> float:
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def reply_texts(replies: Optional[List[Dict[str, Any]]]) -> List[Any]:
    """The texts of a webhook answer's replies (None for a reply without one)."""
    return [reply.get("text") for reply in replies or [] if isinstance(reply, dict)]
