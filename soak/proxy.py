"""A tiny load balancer in front of one deployment's replicas, as nginx would
be in production: round robin over the replicas that answer, the next one
when a replica refuses the connection (the request was not sent, so even a
POST may go elsewhere), a 502 when a replica dies with the request in
flight (it may have run: the client decides whether to send it again), no
buffering of Server-Sent Events.

``python -m soak.proxy --port 0 --upstream http://127.0.0.1:5005 ...``
prints ``soak proxy listening on http://127.0.0.1:<port>`` once it listens.

A client may ask for one replica with ``X-Soak-Replica: <index>`` (the soak's
users reconnect their streams to another replica on purpose); every answer
names the replica that gave it in ``X-Soak-Upstream``. A health check
(``GET /webhooks/servicenow/`` every 0.5 s) takes replicas out and back in.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from typing import Dict, List, Optional

import aiohttp
from aiohttp import web

HEALTH_PATH = "/webhooks/servicenow/"
HEALTH_EVERY_S = 0.5
#: Headers that belong to one hop (RFC 9110, 7.6.1) and are not passed on.
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length", "host"}


class Balancer:
    def __init__(self, upstreams: List[str]) -> None:
        self.upstreams = upstreams
        self.up = [True] * len(upstreams)
        self._turn = itertools.count()
        self._http: Optional[aiohttp.ClientSession] = None
        self.counts: Dict[str, int] = {}

    async def start(self) -> None:
        # A fresh connection per request: a request is never written to a connection the replica is about to close,
        # so "connection refused" always means "not sent" and nothing else does.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=3),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def order(self, wanted: Optional[str]) -> List[int]:
        n = len(self.upstreams)
        first = next(self._turn) % n
        ring = [(first + i) % n for i in range(n)]
        if wanted is not None and wanted.isdigit() and int(wanted) < n:
            ring.remove(int(wanted))
            ring.insert(0, int(wanted))
            return ring
        return [i for i in ring if self.up[i]] + [i for i in ring if not self.up[i]]

    async def health(self) -> None:
        assert self._http is not None
        while True:
            for index, upstream in enumerate(self.upstreams):
                try:
                    async with self._http.get(upstream + HEALTH_PATH, timeout=aiohttp.ClientTimeout(total=1.0)) as answer:
                        self.up[index] = answer.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    self.up[index] = False
            await asyncio.sleep(HEALTH_EVERY_S)  # wait-ok: the health check's period

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS and k.lower() != "x-soak-replica"}
        for index in self.order(request.headers.get("X-Soak-Replica")):
            upstream = self.upstreams[index]
            try:
                answer = await self._http.request(
                    request.method, upstream + request.path_qs, headers=headers, data=body or None,
                    allow_redirects=False, timeout=aiohttp.ClientTimeout(total=None, connect=3, sock_read=120),
                )
            except aiohttp.ClientConnectorError:
                self.up[index] = False
                continue
            except aiohttp.ServerTimeoutError as error:
                if str(error).startswith("Connection timeout"):
                    # Never connected, so never sent: the next replica may have it (nginx's proxy_connect_timeout).
                    self.up[index] = False
                    continue
                return _bad_gateway("UpstreamFailed", f"replica {index}: no answer in time", index)
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                return _bad_gateway("UpstreamFailed", f"replica {index}: {type(error).__name__}", index)
            try:
                return await self._relay(request, answer, index)
            finally:
                answer.release()
        return _bad_gateway("NoUpstream", "no replica accepted the connection", None)

    async def _relay(self, request: web.Request, answer: aiohttp.ClientResponse, index: int) -> web.StreamResponse:
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        headers["X-Soak-Upstream"] = str(index)
        if answer.content_type != "text/event-stream":
            try:
                data = await answer.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                return _bad_gateway("UpstreamFailed", f"replica {index}: {type(error).__name__}", index)
            return web.Response(status=answer.status, body=data, headers=headers)
        stream = web.StreamResponse(status=answer.status, headers=headers)
        await stream.prepare(request)
        try:
            async for chunk in answer.content.iter_any():
                await stream.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError):
            pass  # the replica went away: the stream ends and the browser reconnects with its Last-Event-ID
        return stream


def _bad_gateway(reason: str, message: str, index: Optional[int]) -> web.Response:
    headers = {"X-Soak-Upstream": str(index)} if index is not None else {}
    body = {"status": "failure", "code": 502, "reason": reason, "message": message}
    return web.Response(status=502, text=json.dumps(body), content_type="application/json", headers=headers)


async def serve(port: int, upstreams: List[str]) -> None:
    balancer = Balancer(upstreams)
    await balancer.start()
    app = web.Application(client_max_size=1024 ** 2)
    app.router.add_route("*", "/{tail:.*}", balancer.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    health = asyncio.get_running_loop().create_task(balancer.health())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"soak proxy listening on http://127.0.0.1:{bound}", flush=True)
    await stop.wait()
    health.cancel()
    await runner.cleanup()
    await balancer.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", action="append", required=True, help="a replica's base URL; repeat")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
