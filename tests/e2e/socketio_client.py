"""A socket.io user for the tests: python-socketio's ``AsyncClient``
speaking Rasa's socketio protocol as rasa-webchat does (``session_request``
on connect, ``user_uttered`` with the confirmed ``session_id``)."""

import asyncio
from typing import Any, Callable, Dict, List, Optional, Tuple

import aiohttp
import socketio

from connectors.servicenow.doors.socketio import AGENT_TYPING_EVT, ERROR_EVT, HANDOFF_STATUS_EVT


if not hasattr(aiohttp, "ClientWSTimeout"):
    # python-engineio's websocket client builds aiohttp 3.10's ClientWSTimeout;
    # Rasa 3.6 pins aiohttp 3.9, whose ws_connect takes the close timeout in seconds.
    aiohttp.ClientWSTimeout = lambda ws_close=None, **_: ws_close  # type: ignore[attr-defined]


class SocketUser:
    def __init__(self, url: str, socketio_path: str = "/socket.io", source_address: Optional[str] = None) -> None:
        """``source_address``: connect from this local address (another
        loopback address stands for another client)."""
        self.url = url
        self.path = socketio_path
        self._http: Optional[aiohttp.ClientSession] = None
        if source_address is not None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source_address, 0)))
        self.client = socketio.AsyncClient(reconnection=False, http_session=self._http)
        #: Everything received, in order: (event, data).
        self.received: List[Tuple[str, Any]] = []
        self.session_id: Optional[str] = None
        self._changed = asyncio.Event()
        for event in ("bot_uttered", "session_confirm", HANDOFF_STATUS_EVT, AGENT_TYPING_EVT, ERROR_EVT):
            self.client.on(event, self._recorder(event))

    def _recorder(self, event: str) -> Callable[[Any], Any]:
        async def record(data: Any = None) -> None:
            self.received.append((event, data))
            self._changed.set()

        return record

    async def connect(self, auth: Optional[Dict[str, Any]] = None, transports: Optional[List[str]] = None) -> None:
        await self.client.connect(
            self.url, socketio_path=self.path, auth=auth, transports=transports or ["websocket"], wait_timeout=10
        )

    async def start_session(self, session_id: Optional[str] = None, timeout: float = 10.0) -> str:
        confirmed_before = len(self.of("session_confirm"))
        await self.client.emit("session_request", {"session_id": session_id})
        await self.wait(lambda: len(self.of("session_confirm")) > confirmed_before, timeout, "session_confirm")
        self.session_id = self.of("session_confirm")[-1]
        return self.session_id

    async def say(self, text: str, **extra: Any) -> None:
        await self.client.emit("user_uttered", {"message": text, "session_id": self.session_id, **extra})

    async def disconnect(self) -> None:
        await self.client.disconnect()
        if self._http is not None:
            await self._http.close()

    def of(self, event: str) -> List[Any]:
        return [data for name, data in self.received if name == event]

    def texts(self) -> List[str]:
        return [data["text"] for data in self.of("bot_uttered") if isinstance(data, dict) and "text" in data]

    async def wait(self, condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
        """Wait until ``condition()`` is true, woken by each received event."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = condition()
            if result:
                return result
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"Timed out waiting for {what}; received {self.received!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass  # look again: the condition may depend on something else

    async def wait_for_text(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        return await self.wait(lambda: next((t for t in self.texts() if predicate(t)), None), timeout, "a text")
