"""9. The channel alone, on any Rasa: the channel's blueprint served as
``rasa run`` serves it, without a model (``bench/channel_host.py``, run with
the build's own Python), against the emulator. This is how the bench
compares Rasa 3.6 with Rasa Pro, whose ``rasa run`` needs a licence: the same
measurements with each build's Rasa classes (Sanic, tracker and lock stores,
``UserMessage``), side by side.

* **Forward during a handoff**, per backend: the server-side time of a
  user's message on its way to ServiceNow (the webhook's latency minus the
  emulator's time for the call it caused), as in scenario 2.
* **Agent to user**, Virtual Agent: from the benchmark asking the emulator to
  post an agent message (ServiceNow's callback to the channel follows) to the
  user receiving it, both at ``callback_url`` and on the conversation's
  Server-Sent Events stream (``/stream``), each the way a frontend would
  receive it.
"""

import asyncio
import time
from typing import Any, Dict, List, Tuple

from bench.fixtures import Context, chat_ids, servicenow_and_channel, start_chats
from bench.load import Stats, StreamReader, jitter, post_json
from bench.scenarios import agent_latency, handoff_messages

BACKENDS = ("virtual_agent", "connect")
#: Live chats the agent messages go to (each with its stream open).
AGENT_CHATS = agent_latency.LIVE_CHATS["virtual_agent"]


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for backend in BACKENDS:
        async with servicenow_and_channel(ctx, backend, name=f"channel-{backend}") as (servicenow, host):
            senders = await start_chats(ctx, host.url, ctx.sizes.chats_small, f"chl-{backend}")
            # Warm-up: the first forwards open connections and fill caches.
            await handoff_messages.forward_times(ctx, backend, servicenow.url, host.url, senders, range(-10, 0))
            server_side, client = await handoff_messages.forward_times(
                ctx, backend, servicenow.url, host.url, senders, range(ctx.sizes.latency_requests)
            )
            results[backend] = {
                "forward_ms": Stats.of(server_side).as_dict(),
                "client_latency_ms": Stats.of(client).as_dict(),
            }
            if backend == "virtual_agent":
                results[backend]["agent_to_user_ms"] = await _agent_to_user(ctx, servicenow.url, host.url, senders[:AGENT_CHATS])
    return results


async def _agent_to_user(ctx: Context, servicenow: str, host: str, senders: List[str]) -> Dict[str, Any]:
    chats = await chat_ids(ctx, host, senders)
    streams = {sender: StreamReader(ctx.http, f"{host}/webhooks/servicenow/stream?sender={sender}") for sender in senders}
    try:
        for stream in streams.values():
            await stream.start()
        for chat in chats.values():
            await post_json(ctx.http, f"{servicenow}/__emu/agent/accept", {"session": chat})
        sent = await _post_agent_messages(ctx, servicenow, [(sender, chats[sender]) for sender in senders], ctx.sizes.agent_messages)
        callback: List[float] = []
        stream: List[float] = []
        for text, sender, produced in sent:
            callback.append((await ctx.receiver.wait_for(text, timeout=60) - produced) * 1000)
            stream.append((await streams[sender].wait_for(text, timeout=60) - produced) * 1000)
    finally:
        await asyncio.gather(*(reader.stop() for reader in streams.values()))
    return {"callback_url": Stats.of(callback).as_dict(), "stream": Stats.of(stream).as_dict()}


async def _post_agent_messages(
    ctx: Context, servicenow: str, chats: List[Tuple[str, str]], count: int
) -> List[Tuple[str, str, float]]:
    """Agent messages round-robin over the chats, a few ms apart at random
    (as in scenario 3); returns (text, sender, when it was asked for)."""
    sent = []
    for index in range(count):
        sender, chat = chats[index % len(chats)]
        text = f"chl-agent-{index}"
        produced = time.time()
        await post_json(ctx.http, f"{servicenow}/__emu/agent/message", {"session": chat, "text": text})
        sent.append((text, sender, produced))
        await asyncio.sleep(jitter(0.005, 0.02))
    return sent
