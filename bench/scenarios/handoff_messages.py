"""2. User messages during a handoff, per backend.

Server-side time to forward one message: the webhook's latency seen by the
client, minus the time the emulator spent on the ServiceNow call it caused
(from its request log). Throughput: closed loops of 64 concurrent senders
spread over 100 and 1,000 live chats; for Connect the chats are being polled
at the same time, as they would be."""

import time
from typing import Any, Dict, Iterable, List, Tuple

from bench.cluster import Service
from bench.fixtures import Context, calls_carrying, servicenow_and_rasa, settled, start_chats
from bench.load import Stats, closed_loop, post_json, timed_post

CONCURRENCY = 64
SEND_PATHS = {"connect": "/messages", "virtual_agent": "/bot/integration"}


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for backend in ("virtual_agent", "connect"):
        async with servicenow_and_rasa(ctx, backend, name=f"messages-{backend}") as (servicenow, rasa):
            results[backend] = await _measure(ctx, backend, servicenow, rasa)
    return results


async def forward_times(
    ctx: Context, backend: str, servicenow: str, rasa: str, senders: List[str], numbers: Iterable[int]
) -> Tuple[List[float], List[float]]:
    """Forward one message at a time (one per number, round-robin over the
    live chats of ``senders``); returns the server-side times (the client's
    latency minus the emulator's time for the call it caused) and the
    client's latencies, in ms."""
    webhook = f"{rasa}/webhooks/servicenow/webhook"
    client_ms: Dict[str, float] = {}
    for index in numbers:
        text = f"forward-{backend}-{index}"
        elapsed, replies = await timed_post(ctx.http, webhook, {"sender": senders[index % len(senders)], "message": text})
        assert replies == [], replies
        client_ms[text] = elapsed
    calls = await calls_carrying(ctx, servicenow, SEND_PATHS[backend], set(client_ms))
    server_side = [client_ms[text] - calls[text]["duration_ms"] for text in client_ms if text in calls]
    return server_side, list(client_ms.values())


async def _measure(ctx: Context, backend: str, servicenow_service: Service, rasa_service: Service) -> Dict[str, Any]:
    servicenow, rasa = servicenow_service.url, rasa_service.url
    webhook = f"{rasa}/webhooks/servicenow/webhook"
    senders = await start_chats(ctx, rasa, ctx.sizes.chats_small, f"msg-{backend}")
    # The starts' own aftermath (ServiceNow's first messages pushed to each
    # new chat, the tracker writes) is not part of forwarding: let it pass.
    await settled(ctx, servicenow)

    server_side, client = await forward_times(ctx, backend, servicenow, rasa, senders, range(ctx.sizes.latency_requests))
    result: Dict[str, Any] = {
        "forward_ms": Stats.of(server_side).as_dict(),
        "client_latency_ms": Stats.of(client).as_dict(),
        "throughput": {},
    }
    # The request log costs the emulator time the throughput runs need.
    await post_json(ctx.http, f"{servicenow}/__emu/config", {"log_requests": False})
    for chats in (ctx.sizes.chats_small, ctx.sizes.chats_large):
        if len(senders) < chats:
            senders += await start_chats(ctx, rasa, chats - len(senders), f"msg-{backend}-more-{len(senders)}")
        live = senders[:chats]
        rates: List[float] = []
        errors = 0
        latencies: List[float] = []
        # Who is busy says who limits the rate: the connector, or the rig.
        cpu_before = (rasa_service.cpu_seconds(), servicenow_service.cpu_seconds(), time.monotonic())
        for _ in range(ctx.sizes.repeats):
            async def message(worker: int, number: int) -> bool:
                # Each worker keeps to its own share of the chats.
                sender = live[(worker + CONCURRENCY * number) % len(live)]
                replies = await post_json(ctx.http, webhook, {"sender": sender, "message": f"load {number}"})
                return replies == []

            run_result = await closed_loop(message, CONCURRENCY, ctx.sizes.throughput_seconds)
            rates.append(run_result.per_second)
            errors += run_result.errors
            latencies += run_result.latencies_ms
        elapsed = time.monotonic() - cpu_before[2]
        result["throughput"][str(chats)] = {
            "messages_per_s": round(Stats.of(rates).median, 1),
            "runs": [round(rate, 1) for rate in rates],
            "errors": errors,
            "latency_ms": Stats.of(latencies).as_dict(),
            "rasa_cpu_percent": round((rasa_service.cpu_seconds() - cpu_before[0]) / elapsed * 100, 1),
            "emulator_cpu_percent": round((servicenow_service.cpu_seconds() - cpu_before[1]) / elapsed * 100, 1),
        }
    await post_json(ctx.http, f"{servicenow}/__emu/config", {"log_requests": True})
    return result

