"""3. Agent message to user: from the moment the benchmark asks the emulator
to post an agent message (so ServiceNow's own time is included, a bias
against us) to the moment the user's callback receives it.

Messages go to the live chats in turn, a few milliseconds apart at random, so
for Connect they land at random points of the poll cycle. A polled chat's
latency is the wait for the next poll, uniform over one poll period, plus
the processing after it; the observed median of that mixture is noisy
(±1000/(2*sqrt(n)) ms), so the Connect result also splits each latency, from
the emulator's request log, into wait and processing, and reports the median
it implies: half the measured poll period plus the median processing."""

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from bench.fixtures import Context, chat_ids, servicenow_and_rasa, start_chats
from bench.load import Stats, get_json, jitter, post_json

LIVE_CHATS = {"virtual_agent": 20, "connect": 100}
# Connect needs many samples: its latency is spread over a whole poll period.
SAMPLES_FACTOR = {"virtual_agent": 1, "connect": 5}


@dataclass
class Delivery:
    chat: str
    produced: float  # when the benchmark asked for the message (s, wall clock)
    created_ms: float  # the emulator's timestamp of the message
    arrived: float  # when the user's callback got it (s, wall clock)

    @property
    def latency_ms(self) -> float:
        return (self.arrived - self.produced) * 1000


#: The runs: (result name, backend, channel options). Virtual Agent runs twice:
#: as configured by default, where a push with a new message waits for one
#: read of the chat's records to be shown in ServiceNow's order (issue 19), and
#: with ``order_wait: 0``, each push shown as it came, which is all the first
#: build did: the like-for-like comparison with a build before that read.
RUNS = (
    ("virtual_agent", "virtual_agent", {}),
    ("virtual_agent_as_pushed", "virtual_agent", {"order_wait": 0}),
    ("connect", "connect", {}),
)


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for result_name, backend, options in RUNS:
        async with servicenow_and_rasa(ctx, backend, channel=options, name=f"latency-{result_name}") as (servicenow, rasa):
            senders = await start_chats(ctx, rasa.url, LIVE_CHATS[backend], f"lat-{result_name}")
            chats = list((await chat_ids(ctx, rasa.url, senders)).values())
            for chat in chats:
                await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
            deliveries = await measure(
                ctx, servicenow.url, chats, ctx.sizes.agent_messages * SAMPLES_FACTOR[backend], f"lat-{result_name}"
            )
            results[result_name] = {"latency_ms": Stats.of([d.latency_ms for d in deliveries]).as_dict()}
            if backend == "connect":
                results[result_name]["poll_model"] = await poll_model(ctx, servicenow.url, deliveries)
    return results


async def measure(
    ctx: Context, servicenow: str, chats: List[str], count: int, label: str, spacing: Tuple[float, float] = (0.005, 0.02)
) -> List[Delivery]:
    """Post ``count`` agent messages round-robin over ``chats`` and wait for each at the user."""
    pending: List[Tuple[str, str, float, float]] = []
    for index in range(count):
        text, chat = f"{label}-{index}", chats[index % len(chats)]
        produced = time.time()
        answer = await post_json(ctx.http, f"{servicenow}/__emu/agent/message", {"session": chat, "text": text})
        created = (answer.get("messages") or [{}])[0].get("timestamp") or produced * 1000
        pending.append((text, chat, produced, float(created)))
        await asyncio.sleep(jitter(*spacing))
    deliveries = []
    for text, chat, produced, created in pending:
        arrived = await ctx.receiver.wait_for(text, timeout=60)
        deliveries.append(Delivery(chat, produced, created, arrived))
    return deliveries


async def poll_model(ctx: Context, servicenow: str, deliveries: List[Delivery]) -> Dict[str, Any]:
    """Split Connect latencies into the wait for the poll that found each
    message and what followed it. The period is the gap between that poll and
    the chat's poll before it, so an idle chat's long period shows."""
    log = (await get_json(ctx.http, f"{servicenow}/__emu/requests"))["requests"]
    polls: Dict[str, List[Tuple[float, float]]] = {}
    for entry in log:
        if entry["method"] == "GET" and entry["path"].endswith("/messages"):
            start = entry["at_ms"] - entry["duration_ms"]
            polls.setdefault(entry["path"].split("/")[5], []).append((start, entry["duration_ms"]))
    periods: List[float] = []
    processing: List[float] = []
    servicenow_time: List[float] = []
    waits: List[float] = []
    for delivery in deliveries:
        found = _poll_around(sorted(polls.get(delivery.chat, [])), delivery.created_ms)
        if found is not None:
            previous, (poll, duration) = found
            periods.append(poll - previous[0])
            waits.append(poll - delivery.produced * 1000)
            processing.append(delivery.arrived * 1000 - poll)
            servicenow_time.append(duration)
    period = statistics.median(periods) if periods else float("nan")
    implied = period / 2 + (statistics.median(processing) if processing else float("nan"))
    connector = [total - emulator for total, emulator in zip(processing, servicenow_time)]
    return {
        "poll_period_ms": round(period, 1),
        "wait_ms": Stats.of(waits).as_dict(),
        "processing_ms": Stats.of(processing).as_dict(),
        # The poll's own time at the emulator, part of processing; a real
        # instance answers in tens of milliseconds, the emulator in a few.
        "servicenow_ms": Stats.of(servicenow_time).as_dict(),
        "connector_ms": Stats.of(connector).as_dict(),
        "implied_median_ms": round(implied, 1),
    }


def _poll_around(polls: List[Tuple[float, float]], moment: float) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """The last poll (start, duration) before ``moment`` and the first one from it on."""
    for previous, poll in zip(polls, polls[1:]):
        if previous[0] < moment <= poll[0]:
            return previous, poll
    return None
