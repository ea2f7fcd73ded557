"""7 and 8. The shared store (``redis_url``) at deployment scale.

* ``redis_memory`` (7): Redis memory per live Virtual Agent chat, with
  100,000 chats in one Redis (``--quick``: 5,000; fewer chats share less of
  Redis's fixed cost, so a quick run reads high), each written through the
  Redis store as a live chat leaves it (``bench.store_memory``), with the
  ``stream-node-max-bytes 256`` that docs/deployment.md advises; then 10,000
  with Redis's default 4096, to show what the advice saves. Each setting
  gets a throwaway ``redis-server``.
* ``replicas`` (8): two ``rasa run`` replicas of one Connect deployment (the
  same channel options and ``redis_url``, a shared SQLite tracker store, a
  Redis lock store), both on Rasa's core, the chats started half on each.
  While every chat is active: ServiceNow requests per chat and
  ``poll_interval`` for the whole deployment (target 1: one replica polls a
  chat at a time), then each replica's CPU per forwarded message under a
  closed loop that sends every other message to each replica.
"""

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Tuple

from bench.cluster import RasaSetup, Service, start_emulator, start_rasa
from bench.fixtures import EMULATOR_CPU, RASA_CPU, Context, channel_for, emulator_config, sqlite_store, start_chats
from bench.load import Stats, closed_loop, gather_limited, get_json, post_json
from bench.scenarios.handoff_messages import CONCURRENCY
from bench.scenarios.scale import CREATE_CONCURRENCY, _request_rate
from bench.store_memory import TARGET_BYTES, measure, start_redis

#: What docs/deployment.md advises, and Redis's default.
NODE_SIZES = (256, 4096)
#: Chats written with Redis's default ``stream-node-max-bytes`` (reported, not judged).
DEFAULT_NODE_CHATS = 10_000
POLL_INTERVAL_S = 1.0
#: Every chat stays active (polled each interval) for the whole measurement.
POLLING = {"poll_interval": POLL_INTERVAL_S, "idle_poll_interval": 10.0, "idle_after": 600.0, "session_check_interval": 30.0}


def _no_redis() -> Dict[str, Any]:
    return {"skipped": "redis-server is not installed (Debian: apt-get install redis-server)"}


async def run_memory(ctx: Context) -> Dict[str, Any]:
    if shutil.which("redis-server") is None:
        return _no_redis()
    chats = 5_000 if ctx.sizes.quick else 100_000
    rows = []
    for node_bytes in NODE_SIZES:
        # Redis's default only shows what the advice saves: fewer chats do.
        count = chats if node_bytes == NODE_SIZES[0] else min(chats, DEFAULT_NODE_CHATS)
        with tempfile.TemporaryDirectory(prefix="redis-memory-", dir=ctx.workdir) as redis_dir:
            redis, url = start_redis(redis_dir, node_bytes, cpu=EMULATOR_CPU)
            try:
                result = await measure(url, count)
            finally:
                redis.terminate()
                redis.wait(timeout=15)
        result["bytes_per_chat"] = round(result["bytes_per_chat"], 1)
        result["write_seconds"] = round(result["write_seconds"], 1)
        rows.append(result)
        print(f"   {count:,} live chats, stream-node-max-bytes {node_bytes}: {result['bytes_per_chat']:,.0f} bytes per chat", flush=True)
    return {"target_bytes": TARGET_BYTES, "rows": rows}


@contextlib.asynccontextmanager
async def _deployment(ctx: Context, url: str) -> AsyncIterator[Tuple[Service, List[Service]]]:
    workdir = Path(tempfile.mkdtemp(prefix="replicas-", dir=ctx.workdir))
    servicenow = start_emulator(workdir, EMULATOR_CPU, **emulator_config(log_requests=True))
    replicas: List[Service] = []
    try:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        setup = RasaSetup(
            channel=channel_for("connect", servicenow, ctx.receiver, redis_url=url, **POLLING),
            tracker_store=sqlite_store(ctx.workdir, "replicas"),
            lock_store={"type": "redis", "url": "127.0.0.1", "port": port, "db": 1},
        )
        for name in ("replica-a", "replica-b"):
            model = ctx.model if ctx.build is None else None  # a build brings its own
            replicas.append(await start_rasa(workdir, model, setup, RASA_CPU, name=name, build=ctx.build))
        yield servicenow, replicas
    finally:
        for replica in replicas:
            replica.stop()
        servicenow.stop()


async def run_replicas(ctx: Context) -> Dict[str, Any]:
    if shutil.which("redis-server") is None:
        return _no_redis()
    chats = 50 if ctx.sizes.quick else 500
    with tempfile.TemporaryDirectory(prefix="redis-replicas-", dir=ctx.workdir) as redis_dir:
        redis, url = start_redis(redis_dir, NODE_SIZES[0], appendonly=True, cpu=EMULATOR_CPU)
        try:
            async with _deployment(ctx, url) as (servicenow, replicas):
                half = chats // 2
                senders = await start_chats(ctx, replicas[0].url, half, "replica-a", CREATE_CONCURRENCY)
                senders += await start_chats(ctx, replicas[1].url, chats - half, "replica-b", CREATE_CONCURRENCY)
                # Every user writes once, on the other replica than the one that started the chat.
                calls = [
                    lambda sender=sender, index=index: post_json(
                        ctx.http, f"{replicas[(index < half)].url}/webhooks/servicenow/webhook",
                        {"sender": sender, "message": "Are you there?"},
                    )
                    for index, sender in enumerate(senders)
                ]
                await gather_limited(calls, CREATE_CONCURRENCY)
                cpu_before = [replica.cpu_seconds() for replica in replicas]
                window = 10.0 if ctx.sizes.quick else 20.0
                window_start_ms = time.time() * 1000
                rate = await _request_rate(ctx, servicenow, replicas[0], chats, window=window)
                rate["by_endpoint"] = await _by_endpoint(ctx, servicenow, window_start_ms, window_start_ms + window * 1000)
                idle_cpu = [(replica.cpu_seconds() - before) / window * 100 for replica, before in zip(replicas, cpu_before)]
                forward = await _cpu_per_message(ctx, replicas, senders)
        finally:
            redis.terminate()
            redis.wait(timeout=15)
    per_interval = rate["requests_per_chat_per_s"] * POLL_INTERVAL_S
    return {
        "chats": chats,
        "poll_interval_s": POLL_INTERVAL_S,
        "requests_per_chat_per_poll_interval": round(per_interval, 3),
        "busiest_chat_per_poll_interval": round(rate["busiest_chat_per_s"] * POLL_INTERVAL_S, 3),
        "request_rate": {key: value for key, value in rate.items() if key != "cpu_percent_of_a_core"},
        "polling_cpu_percent_of_a_core": [round(value, 1) for value in idle_cpu],
        "forward": forward,
    }


async def _by_endpoint(ctx: Context, servicenow: Service, start_ms: float, end_ms: float) -> Dict[str, int]:
    """The window's Connect requests by method and endpoint, chat ids left out."""
    log = (await get_json(ctx.http, f"{servicenow.url}/__emu/requests"))["requests"]
    counts: Dict[str, int] = {}
    for entry in log:
        if entry["path"].startswith("/api/now/connect") and start_ms <= entry["at_ms"] - entry["duration_ms"] < end_ms:
            parts = entry["path"].split("/")
            if "/conversations/" in entry["path"] and len(parts) > 5:
                parts[5] = "{id}"
            key = f"{entry['method']} {'/'.join(parts)}"
            counts[key] = counts.get(key, 0) + 1
    return counts


async def _cpu_per_message(ctx: Context, replicas: List[Service], senders: List[str]) -> Dict[str, Any]:
    """Each replica's CPU per message it forwarded, from closed loops of
    ``CONCURRENCY`` senders, even workers on A and odd ones on B."""
    runs: List[Dict[str, Any]] = []
    for repeat in range(ctx.sizes.repeats):
        handled = [0, 0]

        async def message(worker: int, number: int) -> bool:
            replica = worker % 2
            sender = senders[(worker + CONCURRENCY * number) % len(senders)]
            ok = await post_json(
                ctx.http, f"{replicas[replica].url}/webhooks/servicenow/webhook", {"sender": sender, "message": f"load {number}"}
            ) == []
            handled[replica] += ok
            return ok

        cpu_before, started = [replica.cpu_seconds() for replica in replicas], time.monotonic()
        loop = await closed_loop(message, CONCURRENCY, ctx.sizes.throughput_seconds)
        elapsed = time.monotonic() - started
        cpu = [replica.cpu_seconds() - before for replica, before in zip(replicas, cpu_before)]
        runs.append({
            "messages_per_s": loop.per_second,
            "errors": loop.errors,
            "cpu_ms_per_message": [c * 1000 / n if n else float("nan") for c, n in zip(cpu, handled)],
            "cpu_percent": [c / elapsed * 100 for c in cpu],
        })
    return {
        "messages_per_s": round(Stats.of([r["messages_per_s"] for r in runs]).median, 1),
        "errors": int(sum(r["errors"] for r in runs)),
        "cpu_ms_per_message": [round(Stats.of([r["cpu_ms_per_message"][i] for r in runs]).median, 3) for i in (0, 1)],
        "cpu_percent": [round(Stats.of([r["cpu_percent"][i] for r in runs]).median, 1) for i in (0, 1)],
    }
