"""python-socketio's server, able to stop cleanly with the web server, and
reading what clients send by the webhook's rules.

Each engine.io socket schedules its next ping as a task of its own that
sleeps ``ping_interval`` (25 s), and python-socketio keeps no handle on it:
``AsyncServer.shutdown()`` stops only the server's service task. When Rasa's
loop closed with sockets open, their ping tasks were destroyed pending
("Task was destroyed but it is pending!"). Here the engine.io server keeps
the tasks it starts, and ``close()`` tells every client the server is going
(a socket.io client reconnects, to another replica or to this one once it is
back), then stops those tasks.
"""

import asyncio
import json
from typing import Any, Callable, Dict, Optional, Set, Union

import engineio
from socketio import AsyncServer, packet

from connectors.servicenow.payloads import MAX_BODY_BYTES, PayloadError, decode_json_text

#: The event a packet that failed the checks becomes (``ScreenedPacket``); not one a client should send.
REFUSED_INPUT_EVT = "servicenow_refused_input"
#: The key the connect handler finds in place of auth data that failed the checks.
REFUSED_AUTH = "servicenow_refused"


class _WebhookRules:
    """The JSON python-socketio decodes packets with: the webhook's rules
    (payloads.py), so a packet nested 5,000 deep, a 1e999 or a lone
    surrogate is refused before any handler (or Rasa) sees it."""

    @staticmethod
    def dumps(data: Any, **options: Any) -> str:
        return json.dumps(data, **options)

    @staticmethod
    def loads(text: Union[str, bytes]) -> Any:
        if isinstance(text, (bytes, bytearray)):
            # python-socketio's Redis manager decodes what another replica
            # published with this module too, as bytes (and drops, without a
            # word, what fails): the deployment's own messages, of any size,
            # not a client's packet.
            return json.loads(text)
        return decode_json_text(text, max_bytes=MAX_BODY_BYTES)


class ScreenedPacket(packet.Packet):
    """A socket.io packet decoded by the webhook's rules. A packet that fails
    them becomes the event ``REFUSED_INPUT_EVT`` (the door answers the socket
    with ``servicenow_error``), or, for a connect, auth data the connect
    handler refuses: never an exception in python-socketio's dispatch."""

    json = _WebhookRules

    def decode(self, encoded_packet: Any) -> int:
        try:
            return int(super().decode(encoded_packet) or 0)
        except PayloadError as error:
            refusal: Dict[str, Any] = {"reason": error.reason, "message": error.message}
            data: Any = [REFUSED_INPUT_EVT, refusal]
            if getattr(self, "packet_type", None) == packet.CONNECT:
                data = {REFUSED_AUTH: refusal}
            else:
                # A binary event's attachments would follow; it is not waited for.
                self.packet_type = packet.EVENT
            self.data = data
            return 0


def refused_input(data: Any) -> Optional[PayloadError]:
    """The refusal a ``REFUSED_INPUT_EVT`` carries (None when a client sent that event itself)."""
    if isinstance(data, dict) and isinstance(data.get("reason"), str) and isinstance(data.get("message"), str):
        return PayloadError(400, data["reason"], data["message"])
    return None


class _EngineIOServer(engineio.AsyncServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: "Set[asyncio.Future[Any]]" = set()

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> "asyncio.Future[Any]":
        task = super().start_background_task(target, *args, **kwargs)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class SocketServer(AsyncServer):
    def __init__(self, **options: Any) -> None:
        super().__init__(serializer=ScreenedPacket, **options)

    def _engineio_server_class(self) -> type:
        return _EngineIOServer

    async def close(self, timeout: float) -> None:
        """Disconnect every client, stop the background tasks (pings, the
        Redis manager's listener), waiting up to ``timeout`` for them."""
        # Not engine.io's disconnect(): it waits until each socket's queue is
        # sent, forever for a long-polling client that stopped polling.
        for socket in list(self.eio.sockets.values()):
            await socket.close(wait=False)
        self.eio.sockets.clear()
        await self.shutdown()
        tasks = list(self.eio.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
