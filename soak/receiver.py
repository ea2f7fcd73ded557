"""The frontend's ``callback_url``: records every POST for the user it names,
and can be made slow (the ``slow_callback`` fault)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, Optional

from aiohttp import web


class Receiver:
    def __init__(self, deliver: Callable[[str, Dict[str, Any], float], None]) -> None:
        #: Called with (recipient id, payload, arrival time) for each POST.
        self._deliver = deliver
        #: Seconds each answer is held back (0: answer at once).
        self.delay = 0.0
        self.url = ""
        self.posts = 0
        self._runner: Optional[web.AppRunner] = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 ** 2)
        app.router.add_post("/callback", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/callback"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        self.posts += 1
        if isinstance(payload, dict) and isinstance(payload.get("recipient_id"), str):
            self._deliver(payload["recipient_id"], payload, arrived)
        if self.delay:
            await asyncio.sleep(self.delay)  # the fault: a frontend that answers slowly
        return web.json_response({"status": "ok"})
