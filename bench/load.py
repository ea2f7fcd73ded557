"""Load generation and statistics: timed requests, closed-loop runs with a
fixed concurrency, and a callback receiver that timestamps what reaches the
"user". Times are wall-clock (``time.time()``) where two processes must agree,
monotonic elsewhere."""

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

import aiohttp
from aiohttp import web


@dataclass(frozen=True)
class Stats:
    count: int
    median: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Stats":
        if not samples:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        ordered = sorted(samples)
        return cls(len(ordered), statistics.median(ordered), _quantile(ordered, 0.95), _quantile(ordered, 0.99), statistics.fmean(ordered))

    def as_dict(self) -> Dict[str, Any]:
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(self).items()}


def _quantile(ordered: Sequence[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def client(limit: int = 256) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def post_json(session: aiohttp.ClientSession, url: str, payload: Any, headers: Optional[Dict[str, str]] = None) -> Any:
    async with session.post(url, json=payload, headers=headers) as response:
        body = await response.json(content_type=None)
        if response.status >= 400:
            raise RuntimeError(f"POST {url} -> {response.status}: {body}")
        return body


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json(content_type=None)


async def timed_post(session: aiohttp.ClientSession, url: str, payload: Any) -> "tuple[float, Any]":
    """Milliseconds for one POST, and its decoded answer."""
    started = time.perf_counter()
    body = await post_json(session, url, payload)
    return (time.perf_counter() - started) * 1000, body


@dataclass
class LoopResult:
    completed: int
    errors: int
    seconds: float
    latencies_ms: List[float]

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


async def closed_loop(request: Callable[[int, int], Awaitable[bool]], concurrency: int, seconds: float) -> LoopResult:
    """``concurrency`` workers send back-to-back for ``seconds``;
    ``request(worker, n)`` returns whether the call counted as a success.
    Workers are numbered so each can keep to its own conversations: Rasa's
    per-conversation lock would otherwise serialise them."""
    deadline = time.perf_counter() + seconds
    latencies: List[float] = []
    counters = {"ok": 0, "errors": 0, "next": 0}

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            number = counters["next"]
            counters["next"] += 1
            started = time.perf_counter()
            try:
                ok = await request(index, number)
            except Exception:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            counters["ok" if ok else "errors"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return LoopResult(counters["ok"], counters["errors"], time.perf_counter() - started, latencies)


async def gather_limited(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> List[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def run(call: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(run(call) for call in calls))


class Arrivals:
    """When each text first reached the user, and waiters for texts to come."""

    def __init__(self) -> None:
        self.arrivals: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}
        self._waiters: Dict[str, asyncio.Future] = {}

    def arrived(self, text: Any, at: float) -> None:
        if not isinstance(text, str):
            return
        self.counts[text] = self.counts.get(text, 0) + 1
        self.arrivals.setdefault(text, at)
        waiter = self._waiters.pop(text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)

    async def wait_for(self, text: str, timeout: float = 30.0) -> float:
        if text in self.arrivals:
            return self.arrivals[text]
        waiter = self._waiters.setdefault(text, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(waiter, timeout)

    def reset(self) -> None:
        """Forget what arrived (between runs that reuse texts)."""
        self.arrivals.clear()
        self.counts.clear()


class Receiver(Arrivals):
    """The user's frontend: a callback URL that notes when each text arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._runner: Optional[web.AppRunner] = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/callback", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/callback"
        return self.url

    async def _receive(self, request: web.Request) -> web.Response:
        arrived = time.time()
        item = await request.json()
        self.arrived(item.get("text"), arrived)
        return web.Response(status=200)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class StreamReader(Arrivals):
    """The user's browser on the channel's Server-Sent Events stream
    (``GET .../stream?sender=``): notes when each item's text arrived."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        super().__init__()
        self._session = session
        self._url = url
        self._task: Optional["asyncio.Task[None]"] = None
        self._open = asyncio.Event()
        self._error: Optional[BaseException] = None

    async def start(self, timeout: float = 30.0) -> None:
        """Open the stream; returns once the channel has answered it."""
        self._task = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self._open.wait(), timeout)
        if self._error is not None:
            raise RuntimeError(f"GET {self._url} failed: {self._error}")

    async def _read(self) -> None:
        try:
            async with self._session.get(self._url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
                response.raise_for_status()
                self._open.set()
                await self._lines(response)
        except Exception as error:  # the stream's end is the scenario's concern: it waits for texts
            self._error = error
            self._open.set()

    async def _lines(self, response: aiohttp.ClientResponse) -> None:
        async for raw in response.content:
            arrived = time.time()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                try:
                    item = json.loads(line[5:].strip())
                except ValueError:
                    continue
                if isinstance(item, dict):
                    self.arrived(item.get("text"), arrived)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def jitter(low: float, high: float) -> float:
    return random.uniform(low, high)
