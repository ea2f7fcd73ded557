"""5. Handoff start: from the user's request leaving the client to the
ServiceNow call that creates the chat arriving at the emulator (both clocks
are this machine's), so ServiceNow's own time is excluded. This includes
Rasa's turn (NLU and policy) that produces the handoff payload."""

import time
from typing import Any, Dict, List

from bench.fixtures import Context, calls_carrying, servicenow_and_rasa
from bench.load import Stats, post_json

CREATE_PATHS = {"connect": "/sessions", "virtual_agent": "/bot/integration"}


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for backend in ("virtual_agent", "connect"):
        async with servicenow_and_rasa(ctx, backend, name=f"start-{backend}") as (servicenow, rasa):
            webhook = f"{rasa.url}/webhooks/servicenow/webhook"
            sent: Dict[str, float] = {}
            # A first handoff warms up connections and lazy imports.
            await post_json(ctx.http, webhook, {"sender": f"warm-{backend}", "message": "talk to live agent"})
            for index in range(ctx.sizes.handoff_starts):
                sender, text = f"start-{backend}-{index}", f"talk to live agent {index}"
                sent[text] = time.time() * 1000
                await post_json(ctx.http, webhook, {"sender": sender, "message": text})
                await post_json(ctx.http, webhook, {"sender": sender, "message": "/end_chat"})
            calls = await calls_carrying(ctx, servicenow.url, CREATE_PATHS[backend], set(sent))
            starts: List[float] = [calls[text]["arrived_ms"] - sent[text] for text in sent if text in calls]
            results[backend] = {"start_ms": Stats.of(starts).as_dict()}
    return results

