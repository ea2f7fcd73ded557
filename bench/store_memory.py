"""How much Redis memory one live Virtual Agent chat takes in the store.

    python -m bench.store_memory [--chats 100000] [--redis-url redis://host:6379/0]

Writes ``--chats`` live handoffs through ``RedisStore``, each as a live chat
leaves it: the record by sender, the chat-id index, and the outbox holding
the "handoff started" status entry with the stream sink's pointer on it. Then
it reports Redis's ``INFO memory`` ``used_memory`` growth per chat (target:
under 2 KB). Without ``--redis-url`` it starts a throwaway ``redis-server``
(Debian: ``apt-get install redis-server``) on a free loopback port; with one,
it writes under a fresh prefix and deletes its keys afterwards.

The same measurement runs in ``make bench`` (scenario ``redis_memory``, bench/scenarios/replicas.py).
"""

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Optional

from bench.cluster import pinned
from connectors.servicenow.store.base import HandoffRecord, NewEntry
from connectors.servicenow.store.redis import RedisStore

TARGET_BYTES = 2048
BATCH = 500


async def live_chat(store: RedisStore, n: int) -> None:
    sender = str(uuid.UUID(int=n))
    chat_id = uuid.UUID(int=n + 1 << 64).hex
    now = time.time()
    await store.create_handoff(
        HandoffRecord(
            sender_id=sender,
            chat_id=chat_id,
            api="virtual_agent",
            user="rasa.integration",
            last_updated=now * 1000,
            started_at=now,
        )
    )
    status = {
        "recipient_id": sender,
        "handoff": {"active": True, "chat_id": chat_id, "api": "virtual_agent", "agent_joined": False},
    }
    (entry,) = await store.append(sender, [NewEntry(status, kind="handoff", to_callback=False)]) or []
    await store.advance_sink(sender, "stream", entry.entry_id)


async def stream_node_max_bytes(store: RedisStore) -> int:
    config = await store._redis.config_get("stream-node-max-bytes")
    return int(config["stream-node-max-bytes"])


async def used_memory(store: RedisStore) -> int:
    info: Dict[str, Any] = await store._redis.info("memory")
    return int(info["used_memory"])


async def measure(url: str, chats: int) -> Dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    store = RedisStore.from_url(url, prefix=prefix, max_connections=64)
    try:
        await store.ping()
        before = await used_memory(store)
        started = time.monotonic()
        for first in range(0, chats, BATCH):
            await asyncio.gather(*(live_chat(store, n) for n in range(first, min(first + BATCH, chats))))
        after = await used_memory(store)
        keys = await store._redis.dbsize()
        result = {
            "chats": chats,
            "stream_node_max_bytes": await stream_node_max_bytes(store),
            "used_memory_before": before,
            "used_memory_after": after,
            "bytes_per_chat": (after - before) / chats,
            "keys_in_db": keys,
            "write_seconds": time.monotonic() - started,
        }
        async for key in store._redis.scan_iter(match=f"{prefix}*", count=1000):
            await store._redis.unlink(key)
        return result
    finally:
        await store.aclose()


def start_redis(
    workdir: str, stream_node_max_bytes: int, *, appendonly: bool = False, cpu: Optional[int] = None
) -> "tuple[subprocess.Popen, str]":
    """A throwaway ``redis-server`` on a free loopback port (``appendonly``:
    AOF with ``appendfsync everysec``, as docs/deployment.md recommends),
    optionally pinned to ``cpu``; returns the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server); or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--appendonly", "no"]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "", *persistence,
               "--stream-node-max-bytes", str(stream_node_max_bytes)]
    process = subprocess.Popen(pinned(command, cpu), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            sys.exit("redis-server did not start")
        time.sleep(0.05)  # wait-ok: polling a condition with a deadline


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--redis-url", help="an existing Redis (default: start a throwaway redis-server)")
    parser.add_argument(
        "--stream-node-max-bytes",
        type=int,
        default=4096,
        help="the throwaway server's stream-node-max-bytes (Redis 7 preallocates that much for a new stream)",
    )
    arguments = parser.parse_args(argv)
    process = None
    url = arguments.redis_url
    with tempfile.TemporaryDirectory(prefix="store-memory-") as workdir:
        if url is None:
            process, url = start_redis(workdir, arguments.stream_node_max_bytes)
        try:
            result = asyncio.run(measure(url, arguments.chats))
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=15)
    per_chat = result["bytes_per_chat"]
    print(f"{result['chats']:,} live Virtual Agent chats: {per_chat:,.0f} bytes of Redis memory per chat "
          f"(used_memory {result['used_memory_before']:,} -> {result['used_memory_after']:,}; "
          f"target under {TARGET_BYTES:,}; stream-node-max-bytes {result['stream_node_max_bytes']}; "
          f"written in {result['write_seconds']:.0f} s)")
    return 0 if per_chat < TARGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
