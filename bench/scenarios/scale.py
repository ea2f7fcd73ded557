"""4. Scale: memory and CPU of the Rasa process with many live chats.

Memory per chat is the growth of the process's resident set from a warmed-up
baseline to N live chats, divided by N. The tracker store is SQLite (on tmpfs)
so the numbers are the connector's and Rasa's per-conversation cost, not
trackers held in memory.

Virtual Agent: 1,000 then 10,000 live chats; CPU while they sit idle; agent
message latency at that scale. Connect: 1,000 live chats (each polled, so
10,000 would mean 10,000 ServiceNow requests a second); ServiceNow requests
per chat and second while chats are active and once they are idle, and agent
message latency while active."""

import asyncio
import random
import time
from typing import Any, Dict, List

from bench.cluster import Service
from bench.fixtures import Context, chat_ids, servicenow_and_rasa, settled, sqlite_store, start_chats
from bench.load import Stats, gather_limited, get_json, post_json
from bench.scenarios.agent_latency import measure, poll_model

CONNECT_POLLING = {"poll_interval": 1.0, "idle_poll_interval": 10.0, "idle_after": 20.0, "session_check_interval": 30.0}
LATENCY_SAMPLE = 50
CREATE_CONCURRENCY = 16


async def run(ctx: Context) -> Dict[str, Any]:
    return {"virtual_agent": await _virtual_agent(ctx), "connect": await _connect(ctx)}


async def _virtual_agent(ctx: Context) -> Dict[str, Any]:
    rows: List[Dict[str, Any]] = []
    store = sqlite_store(ctx.workdir, "scale-va")
    async with servicenow_and_rasa(ctx, "virtual_agent", tracker_store=store, emulator={"log_requests": False}, name="scale-va") as (servicenow, rasa):
        baseline = await _warmed_up_rss(ctx, rasa)
        senders: List[str] = []
        for target in ctx.sizes.scale_chats:
            started, cpu_before = time.monotonic(), rasa.cpu_seconds()
            opened = await start_chats(ctx, rasa.url, target - len(senders), f"scale-va-{len(senders)}", CREATE_CONCURRENCY)
            senders += opened
            await settled(ctx, servicenow.url)
            creation_s = time.monotonic() - started
            creation_cpu = rasa.cpu_seconds() - cpu_before
            row = await _footprint(ctx, rasa, baseline, target)
            # Chats still waiting for an agent, taken from this round.
            sample = random.sample(opened, min(LATENCY_SAMPLE, len(opened)))
            chats = list((await chat_ids(ctx, rasa.url, sample)).values())
            for chat in chats:
                await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
            latencies = [d.latency_ms for d in await measure(ctx, servicenow.url, chats, len(chats) * 2, f"scale-va-{target}")]
            row.update(
                handoffs_per_s=round(len(opened) / creation_s, 1),
                cpu_ms_per_handoff=round(creation_cpu * 1000 / len(opened), 2),
                agent_latency_ms=Stats.of(latencies).as_dict(),
            )
            rows.append(row)
    return {"rows": rows}


async def _connect(ctx: Context) -> Dict[str, Any]:
    chats_wanted = ctx.sizes.scale_chats[0]
    store = sqlite_store(ctx.workdir, "scale-connect")
    polling = dict(CONNECT_POLLING, idle_after=5.0) if ctx.sizes.quick else CONNECT_POLLING
    async with servicenow_and_rasa(ctx, "connect", channel=polling, tracker_store=store, name="scale-connect") as (servicenow, rasa):
        baseline = await _warmed_up_rss(ctx, rasa)
        senders = await start_chats(ctx, rasa.url, chats_wanted, "scale-connect", CREATE_CONCURRENCY)
        # While every chat is active: the request rate, and agent messages to a sample.
        sample = random.sample(senders, min(LATENCY_SAMPLE, len(senders)))
        chats = list((await chat_ids(ctx, rasa.url, sample)).values())
        for chat in chats:
            await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
        # Every user writes once, so every chat is active (polled fast) for the whole window.
        await _every_user_writes(ctx, rasa, senders)
        active, deliveries = await asyncio.gather(
            _request_rate(ctx, servicenow, rasa, chats_wanted, window=5.0 if ctx.sizes.quick else 10.0),
            measure(ctx, servicenow.url, chats, len(chats) * 4, "scale-connect"),
        )
        latencies = [d.latency_ms for d in deliveries]
        row = await _footprint(ctx, rasa, baseline, chats_wanted)
        # Quiet for idle_after: every chat drops to the idle rate.
        await asyncio.sleep(polling["idle_after"] + polling["idle_poll_interval"])
        idle = await _request_rate(ctx, servicenow, rasa, chats_wanted, window=2 * polling["idle_poll_interval"])
        row.update(
            active=active,
            idle=idle,
            agent_latency_ms=Stats.of(latencies).as_dict(),
            poll_model=await poll_model(ctx, servicenow.url, deliveries),
            polling=polling,
        )
    return {"rows": [row]}


async def _every_user_writes(ctx: Context, rasa: Service, senders: List[str]) -> None:
    webhook = f"{rasa.url}/webhooks/servicenow/webhook"
    calls = [lambda sender=sender: post_json(ctx.http, webhook, {"sender": sender, "message": "Are you there?"}) for sender in senders]
    await gather_limited(calls, CREATE_CONCURRENCY)


async def _warmed_up_rss(ctx: Context, rasa: Service) -> int:
    """Resident set after a few handoffs started and ended (imports, pools, caches)."""
    webhook = f"{rasa.url}/webhooks/servicenow/webhook"
    for sender in await start_chats(ctx, rasa.url, 20, "warm-up"):
        await post_json(ctx.http, webhook, {"sender": sender, "message": "/end_chat"})
    return rasa.rss_bytes()


async def _footprint(ctx: Context, rasa: Service, baseline: int, chats: int) -> Dict[str, Any]:
    health = await get_json(ctx.http, f"{rasa.url}/webhooks/servicenow/")
    rss = rasa.rss_bytes()
    cpu_before = rasa.cpu_seconds()
    window = 3.0 if ctx.sizes.quick else 10.0
    await asyncio.sleep(window)
    return {
        "chats": chats,
        "live_chats_reported": health["live_chats"],
        "rss_mb": round(rss / 2**20, 1),
        "bytes_per_chat": round((rss - baseline) / chats),
        "cpu_percent_of_a_core": round((rasa.cpu_seconds() - cpu_before) / window * 100, 1),
    }


async def _request_rate(ctx: Context, servicenow: Service, rasa: Service, chats: int, window: float) -> Dict[str, Any]:
    """ServiceNow requests the connector makes per chat and second, and its CPU."""
    start_ms, cpu_before = time.time() * 1000, rasa.cpu_seconds()
    await asyncio.sleep(window)
    end_ms, cpu = time.time() * 1000, rasa.cpu_seconds() - cpu_before
    log = (await get_json(ctx.http, f"{servicenow.url}/__emu/requests"))["requests"]
    # By arrival: the log stamps completion, and a slow answer would shift a request into the window.
    in_window = [
        e for e in log if e["path"].startswith("/api/now/connect") and start_ms <= e["at_ms"] - e["duration_ms"] < end_ms
    ]
    arrivals: Dict[str, List[float]] = {}
    for entry in in_window:
        chat = entry["path"].split("/")[5] if "/conversations/" in entry["path"] else entry["query"].get("group_id", "?")
        arrivals.setdefault(chat, []).append(entry["at_ms"] - entry["duration_ms"])
    # A chat's rate over the span of its own requests, (n - 1) / span:
    # counting requests in a fixed window would add up to one whole request
    # at the window's edges, and one short gap after a late poll is made up
    # by the next, longer one.
    ordered = {chat: sorted(times) for chat, times in arrivals.items()}
    rates = [1000 * (len(times) - 1) / (times[-1] - times[0]) for times in ordered.values() if len(times) > 1 and times[-1] > times[0]]
    all_gaps = sorted(b - a for times in ordered.values() for a, b in zip(times, times[1:]))
    return {
        "window_s": window,
        "requests_per_chat_per_s": round(len(in_window) / chats / window, 3),
        "busiest_chat_per_s": round(max(rates, default=0.0), 3),
        "shortest_gaps_ms": [round(gap, 1) for gap in all_gaps[:5]],
        "cpu_percent_of_a_core": round(cpu / window * 100, 1),
    }
