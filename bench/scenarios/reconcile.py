"""10. What reconciliation costs (issue 19), Virtual Agent backend:

* ``order``: agent message to user with pushes put in ServiceNow's order
  (``order_wait: 1``, the default: a push with a new message waits for one
  Table API read) against pushes shown as they arrive (``order_wait: 0``),
  both variants at once and interleaved block by block as in scenario 6. The
  difference of the p99 is the latency the ordering adds. The emulator
  answers a Table API read on loopback; a real instance takes tens to
  hundreds of milliseconds more, which this number does not include.
* ``steady``: ServiceNow requests per live chat per ``reconcile_interval``
  for a deployment of one replica with quiet chats, counted from the
  emulator's request log over whole intervals (the interval is short here;
  the count per interval does not depend on it)."""

import asyncio
import contextlib
from typing import Any, Dict, List

from bench.fixtures import Context, chat_ids, servicenow_and_rasa, start_chats
from bench.load import Stats, get_json, post_json
from bench.scenarios import agent_latency
from bench.scenarios.channel_options import Cluster, _agent_messages, _interleaved

BACKEND = "virtual_agent"
TABLE_PREFIX = "/api/now/table/"
STEADY_INTERVAL_S = 2.0
STEADY_INTERVALS = 5


async def run(ctx: Context) -> Dict[str, Any]:
    return {"order": await _order(ctx), "steady": await _steady(ctx)}


async def _order(ctx: Context) -> Dict[str, Any]:
    variants = [("as_they_come", {"order_wait": 0}), ("ordered", {"order_wait": 1})]
    labels = [label for label, _ in variants]
    async with contextlib.AsyncExitStack() as stack:
        clusters: Dict[str, Cluster] = {}
        for label, options in variants:
            clusters[label] = await stack.enter_async_context(
                servicenow_and_rasa(ctx, BACKEND, channel=options, name=f"reconcile-{label}")
            )
        chats: Dict[str, List[str]] = {}
        for label, (servicenow, rasa) in clusters.items():
            senders = await start_chats(ctx, rasa.url, agent_latency.LIVE_CHATS[BACKEND], f"rec-{label}")
            chats[label] = list((await chat_ids(ctx, rasa.url, senders)).values())
            for chat in chats[label]:
                await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
        latency = await _interleaved(labels, clusters, ctx.sizes.agent_messages * 3, _agent_messages(ctx, chats))
        base, ordered = latency[labels[0]], latency[labels[1]]
        latency["p99_difference_ms"] = round(ordered["p99"] - base["p99"], 3)
        reads = await _table_reads(ctx, clusters[labels[1]][0].url)
        # The emulator's own time per read (its log): part of what the ordering adds, and what a real instance replaces.
        log = (await get_json(ctx.http, f"{clusters[labels[1]][0].url}/__emu/requests"))["requests"]
        read_ms = [entry["duration_ms"] for entry in log if entry["path"] == TABLE_PREFIX + "sys_cs_message"]
        return {
            "variants": labels,
            "agent_to_user_ms": latency,
            "ordered_table_reads": reads,
            "servicenow_read_ms": Stats.of(read_ms).as_dict(),
        }


async def _steady(ctx: Context) -> Dict[str, Any]:
    options = {"reconcile_interval": STEADY_INTERVAL_S}
    async with servicenow_and_rasa(ctx, BACKEND, channel=options, name="reconcile-steady") as (servicenow, rasa):
        count = ctx.sizes.chats_small
        senders = await start_chats(ctx, rasa.url, count, "rec-steady")
        for chat in (await chat_ids(ctx, rasa.url, senders)).values():
            await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
        # Let the opening's pushes (and the reads that order them) settle, then count whole intervals of quiet.
        while (await get_json(ctx.http, f"{servicenow.url}/__emu/callbacks"))["pending"]:
            await asyncio.sleep(0.1)  # wait-ok: a benchmark waits for the emulator's pushes to go out
        await asyncio.sleep(2 * STEADY_INTERVAL_S)  # wait-ok: a benchmark measures a rate over time
        started = (await get_json(ctx.http, f"{servicenow.url}/__emu/clock"))["now_ms"]
        await asyncio.sleep(STEADY_INTERVALS * STEADY_INTERVAL_S)  # wait-ok: the measured window
        ended = (await get_json(ctx.http, f"{servicenow.url}/__emu/clock"))["now_ms"]
        log = (await get_json(ctx.http, f"{servicenow.url}/__emu/requests"))["requests"]
    window = [e for e in log if e["path"].startswith(TABLE_PREFIX) and started <= e["at_ms"] - e["duration_ms"] < ended]
    intervals = (ended - started) / 1000 / STEADY_INTERVAL_S
    return {
        "live_chats": count,
        "reconcile_interval_s": STEADY_INTERVAL_S,
        "intervals": round(intervals, 2),
        "table_requests": len(window),
        "of_which_interaction": sum(1 for e in window if e["path"].endswith("/interaction")),
        "requests_per_chat_per_interval": round(len(window) / (count * intervals), 3),
    }


async def _table_reads(ctx: Context, servicenow: str) -> Dict[str, int]:
    log = (await get_json(ctx.http, f"{servicenow}/__emu/requests"))["requests"]
    reads = [entry["path"][len(TABLE_PREFIX):] for entry in log if entry["path"].startswith(TABLE_PREFIX)]
    return {"total": len(reads), **{table: reads.count(table) for table in sorted(set(reads))}}
