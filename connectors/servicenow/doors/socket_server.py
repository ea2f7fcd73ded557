"""python-socketio's server, able to stop cleanly with the web server.

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
from typing import Any, Callable, Set

import engineio
from socketio import AsyncServer


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
