"""6. What channel options cost: the same measurements with an option off and
on, side by side in one run.

* ``metrics``: off against ``metrics: true`` (Prometheus metrics): bot-turn
  latency outside a handoff and server-side forwarding time.
* ``store``: the in-process store against ``redis_url`` (the shared store),
  with a ``redis-server`` this scenario starts (AOF with ``appendfsync
  everysec``, ``stream-node-max-bytes 256``, as docs/deployment.md advises;
  pinned to the emulator's core so Rasa's core stays Rasa's): forwarding
  time, Virtual Agent agent-to-user latency, handoff start, and the Rasa
  process's CPU per forwarded message under load.

Both variants of a comparison run at the same time (an emulator and a
``rasa run`` each, Virtual Agent backend, both Rasa processes on Rasa's
core), and their requests are interleaved in blocks of ``BLOCK``, the
variant going first alternating block by block, so a change in the
machine's load falls on both. The measurements are those of scenarios 1, 2,
3 and 5, called per block."""

import contextlib
import shutil
import tempfile
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

from bench.cluster import Service
from bench.fixtures import EMULATOR_CPU, Context, chat_ids, servicenow_and_rasa, start_chats
from bench.load import Stats, closed_loop, post_json, timed_post
from bench.scenarios import agent_latency, handoff_messages, handoff_start
from bench.scenarios.bot_turns import TURNS_PER_SENDER
from bench.store_memory import start_redis

BACKEND = "virtual_agent"
#: Requests one variant serves before the other takes its turn.
BLOCK = 10
REDIS_STREAM_NODE_MAX_BYTES = 256
#: Concurrent senders of the CPU-per-message runs (as in scenario 2).
CONCURRENCY = handoff_messages.CONCURRENCY

Variant = Tuple[str, Dict[str, Any]]
Cluster = Tuple[Service, Service]
Block = Callable[[str, Cluster, int, int], Awaitable[List[float]]]


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {
        "metrics": await _compare(ctx, "metrics", [("off", {}), ("on", {"metrics": True})], store=False),
    }
    if shutil.which("redis-server") is None:
        results["store"] = {"skipped": "redis-server is not installed (Debian: apt-get install redis-server)"}
        return results
    with tempfile.TemporaryDirectory(prefix="redis-", dir=ctx.workdir) as redis_dir:
        redis, url = start_redis(redis_dir, REDIS_STREAM_NODE_MAX_BYTES, appendonly=True, cpu=EMULATOR_CPU)
        try:
            results["store"] = await _compare(ctx, "store", [("memory", {}), ("redis", {"redis_url": url})], store=True)
            results["store"]["redis"] = {
                "appendonly": "yes",
                "appendfsync": "everysec",
                "stream_node_max_bytes": REDIS_STREAM_NODE_MAX_BYTES,
                # Evidence the Redis variant used it.
                "commands_processed": await _commands_processed(url),
            }
        finally:
            redis.terminate()
            redis.wait(timeout=15)
    return results


async def _commands_processed(url: str) -> int:
    import redis.asyncio

    client = redis.asyncio.from_url(url)
    try:
        return int((await client.info("stats"))["total_commands_processed"])
    finally:
        await client.close()


async def _compare(ctx: Context, name: str, variants: List[Variant], *, store: bool) -> Dict[str, Any]:
    labels = [label for label, _ in variants]
    async with contextlib.AsyncExitStack() as stack:
        clusters: Dict[str, Cluster] = {}
        for label, options in variants:
            clusters[label] = await stack.enter_async_context(
                servicenow_and_rasa(ctx, BACKEND, channel=options, name=f"options-{name}-{label}")
            )
        requests = ctx.sizes.latency_requests
        result: Dict[str, Any] = {"variants": labels}
        result["bot_turn_ms"] = await _interleaved(labels, clusters, requests * 2, _bot_turns(ctx))
        senders = {
            label: await start_chats(ctx, cluster[1].url, ctx.sizes.chats_small, f"opt-{name}-{label}")
            for label, cluster in clusters.items()
        }
        result["forward_ms"] = await _interleaved(labels, clusters, requests * 3, _forwards(ctx, senders))
        if store:
            chats = {label: await _accepted_chats(ctx, cluster, senders[label]) for label, cluster in clusters.items()}
            result["agent_to_user_ms"] = await _interleaved(labels, clusters, requests * 3, _agent_messages(ctx, chats))
            result["handoff_start_ms"] = await _interleaved(labels, clusters, ctx.sizes.handoff_starts * 2, _starts(ctx))
            result["forward_cpu"] = await _cpu_per_message(ctx, labels, clusters, senders)
    return result


async def _interleaved(labels: List[str], clusters: Dict[str, Cluster], count: int, block: Block) -> Dict[str, Any]:
    samples: Dict[str, List[float]] = {label: [] for label in labels}
    for first in range(0, count, BLOCK):
        order = labels if (first // BLOCK) % 2 == 0 else labels[::-1]
        for label in order:
            samples[label] += await block(label, clusters[label], first, min(first + BLOCK, count))
    stats = {label: Stats.of(values) for label, values in samples.items()}
    base, other = labels
    return {
        **{label: value.as_dict() for label, value in stats.items()},
        "median_ratio": round(stats[other].median / stats[base].median, 4),
        "median_difference_ms": round(stats[other].median - stats[base].median, 3),
    }


def _bot_turns(ctx: Context) -> Block:
    """Bot turns through this channel's webhook outside a handoff; each
    conversation serves ``TURNS_PER_SENDER`` timed turns after one untimed one
    (its single tracker read for the handoff flag), as in scenario 1."""

    async def block(label: str, cluster: Cluster, first: int, end: int) -> List[float]:
        webhook = f"{cluster[1].url}/webhooks/servicenow/webhook"
        times = []
        for number in range(first, end):
            sender = f"turn-{label}-{number // TURNS_PER_SENDER}"
            if number % TURNS_PER_SENDER == 0:
                await post_json(ctx.http, webhook, {"sender": sender, "message": "hi"})
            elapsed, replies = await timed_post(ctx.http, webhook, {"sender": sender, "message": "hi"})
            assert replies and replies[0]["text"].startswith("Hello"), replies
            times.append(elapsed)
        return times

    return block


def _forwards(ctx: Context, senders: Dict[str, List[str]]) -> Block:
    async def block(label: str, cluster: Cluster, first: int, end: int) -> List[float]:
        servicenow, rasa = cluster
        server_side, _ = await handoff_messages.forward_times(
            ctx, BACKEND, servicenow.url, rasa.url, senders[label], range(first, end)
        )
        return server_side

    return block


def _agent_messages(ctx: Context, chats: Dict[str, List[str]]) -> Block:
    async def block(label: str, cluster: Cluster, first: int, end: int) -> List[float]:
        deliveries = await agent_latency.measure(ctx, cluster[0].url, chats[label], end - first, f"opt-{label}-agent-{first}")
        return [delivery.latency_ms for delivery in deliveries]

    return block


def _starts(ctx: Context) -> Block:
    async def block(label: str, cluster: Cluster, first: int, end: int) -> List[float]:
        servicenow, rasa = cluster
        return await handoff_start.start_times(ctx, BACKEND, servicenow.url, rasa.url, range(first, end))

    return block


async def _accepted_chats(ctx: Context, cluster: Cluster, senders: List[str]) -> List[str]:
    servicenow, rasa = cluster
    chats = list((await chat_ids(ctx, rasa.url, senders[: agent_latency.LIVE_CHATS[BACKEND]])).values())
    for chat in chats:
        await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
    return chats


async def _cpu_per_message(
    ctx: Context, labels: List[str], clusters: Dict[str, Cluster], senders: Dict[str, List[str]]
) -> Dict[str, Any]:
    """CPU seconds of the Rasa process per forwarded message, from closed
    loops of ``CONCURRENCY`` senders, the variants taking turns."""
    for servicenow, _ in clusters.values():
        # The request log costs the emulator time the throughput runs need.
        await post_json(ctx.http, f"{servicenow.url}/__emu/config", {"log_requests": False})
    runs: Dict[str, List[Dict[str, float]]] = {label: [] for label in labels}
    for repeat in range(ctx.sizes.repeats):
        for label in (labels if repeat % 2 == 0 else labels[::-1]):
            rasa = clusters[label][1]
            live = senders[label]
            webhook = f"{rasa.url}/webhooks/servicenow/webhook"

            async def message(worker: int, number: int, webhook: str = webhook, live: List[str] = live) -> bool:
                sender = live[(worker + CONCURRENCY * number) % len(live)]
                return await post_json(ctx.http, webhook, {"sender": sender, "message": f"load {number}"}) == []

            cpu_before, started = rasa.cpu_seconds(), time.monotonic()
            loop = await closed_loop(message, CONCURRENCY, ctx.sizes.throughput_seconds)
            cpu, elapsed = rasa.cpu_seconds() - cpu_before, time.monotonic() - started
            runs[label].append({
                "messages_per_s": loop.per_second,
                "errors": loop.errors,
                "cpu_ms_per_message": cpu * 1000 / loop.completed if loop.completed else float("nan"),
                "rasa_cpu_percent": cpu / elapsed * 100,
            })
    return {
        label: {
            "cpu_ms_per_message": round(Stats.of([r["cpu_ms_per_message"] for r in values]).median, 3),
            "messages_per_s": round(Stats.of([r["messages_per_s"] for r in values]).median, 1),
            "rasa_cpu_percent": round(Stats.of([r["rasa_cpu_percent"] for r in values]).median, 1),
            "errors": int(sum(r["errors"] for r in values)),
            "runs_cpu_ms_per_message": [round(r["cpu_ms_per_message"], 3) for r in values],
        }
        for label, values in runs.items()
    }

