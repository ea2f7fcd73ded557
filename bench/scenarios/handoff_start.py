"""5. Handoff start: from the user's request leaving the client to the
ServiceNow call that creates the chat arriving at the emulator (both clocks
are this machine's), so ServiceNow's own time is excluded. This includes
Rasa's turn (NLU and policy) that produces the handoff payload."""

import time
from typing import Any, Dict, Iterable, List

from bench.fixtures import Context, calls_carrying, servicenow_and_rasa
from bench.load import Stats, post_json

CREATE_PATHS = {"connect": "/sessions", "virtual_agent": "/bot/integration"}


async def start_times(ctx: Context, backend: str, servicenow: str, rasa: str, numbers: Iterable[int]) -> List[float]:
    """Start (and end) one handoff per number, one at a time; returns the ms
    from each request leaving the client to its create call arriving."""
    webhook = f"{rasa}/webhooks/servicenow/webhook"
    sent: Dict[str, float] = {}
    for index in numbers:
        sender, text = f"start-{backend}-{index}", f"talk to live agent {index}"
        sent[text] = time.time() * 1000
        await post_json(ctx.http, webhook, {"sender": sender, "message": text})
        await post_json(ctx.http, webhook, {"sender": sender, "message": "/end_chat"})
    calls = await calls_carrying(ctx, servicenow, CREATE_PATHS[backend], set(sent))
    return [calls[text]["arrived_ms"] - sent[text] for text in sent if text in calls]


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for backend in ("virtual_agent", "connect"):
        async with servicenow_and_rasa(ctx, backend, name=f"start-{backend}") as (servicenow, rasa):
            # A first handoff warms up connections and lazy imports.
            await post_json(ctx.http, f"{rasa.url}/webhooks/servicenow/webhook", {"sender": f"warm-{backend}", "message": "talk to live agent"})
            starts = await start_times(ctx, backend, servicenow.url, rasa.url, range(ctx.sizes.handoff_starts))
            results[backend] = {"start_ms": Stats.of(starts).as_dict()}
    return results

