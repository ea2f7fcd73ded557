"""Stores for the contract tests: the in-process one, Redis through fakeredis
(unit speed), and a real ``redis-server`` started here on a free loopback port.

Without ``redis-server`` the real-Redis cases are skipped with a reason,
unless ``REQUIRE_REDIS_TEST=1`` (set by ``.ci/run``) makes that a failure."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, List, Optional, Tuple

import pytest

from connectors.servicenow.store import MemoryStore, Store
from connectors.servicenow.store.redis import RedisStore
from tests import children
from tests.ports import free_port

REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> None:
    if Path(REDIS_SERVER).exists():
        return
    reason = f"the real-Redis store tests need redis-server at {REDIS_SERVER} (Debian: apt-get install redis-server)"
    if os.environ.get("REQUIRE_REDIS_TEST") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class RedisServer:
    """A throwaway ``redis-server`` with AOF on, that a test can stop, kill
    and start again on the same port and data directory."""

    def __init__(self, workdir: Path, *, appendfsync: str = "everysec") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendfsync = appendfsync
        self._process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = children.register(subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.workdir),
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ))
        deadline = time.monotonic() + 15
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}; see {self.workdir}/redis.log")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 15 s")
            time.sleep(0.02)  # wait-ok: polling a condition with a deadline

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def send(self, sig: int) -> None:
        assert self._process is not None
        self._process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM shuts down cleanly (AOF flushed); SIGKILL is a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(timeout=15)
        self._process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> "RedisServer":
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path) -> "RedisServer":
    """A server of the test's own, to stop and start."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    if server.running:
        server.send(signal.SIGCONT)  # in case the test left it stopped
    server.stop(signal.SIGKILL)


async def wait_until(condition: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition") -> Any:
    """Await ``condition`` until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)  # wait-ok: polling a condition with a deadline


StoreFactory = Callable[..., Store]


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def make_stores(request) -> AsyncIterator[Callable[..., Tuple[Store, Store]]]:
    """Builds two stores over the same state, standing for two replicas (for
    the in-process store, one instance twice: its semantics hold within a
    process). Options (``retained``, ``stream_ttl``) go to both."""
    kind = request.param
    opened: List[Store] = []
    prefix = f"test{uuid.uuid4().hex[:8]}:"
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
    elif kind == "fakeredis":
        import fakeredis
        from fakeredis import aioredis as fake_aioredis

        fake_server = fakeredis.FakeServer()

    def make(**options: Any) -> Tuple[Store, Store]:
        if kind == "memory":
            store = MemoryStore(**options)
            opened.append(store)
            return store, store
        pair = []
        for _ in range(2):
            if kind == "redis":
                store = RedisStore.from_url(server.url, prefix=prefix, **options)
            else:
                store = RedisStore(fake_aioredis.FakeRedis(server=fake_server), prefix=prefix, **options)
            opened.append(store)
            pair.append(store)
        return pair[0], pair[1]

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for store in opened:
        await store.aclose()
