"""12. The Python work of one agent message on its way to the user, counted
as scenario 11 counts a forward: the channel of a build under the opcode
counter (``bench/work_host.py``), ``AGENT_MESSAGES`` agent messages posted
one at a time to live chats and each waited for at the user's
``callback_url`` (``--quick``: fewer).

* **connect**: found by a poll, in one chat. A live chat is polled once a
  second whether or not the agent wrote, so the background window's counts
  are scaled by how many polls each window saw (from the emulator's request
  log): what is left is the work a found message adds to a poll, its
  delivery and the cursor's save. One chat, so that the empty polls taken
  off are few beside what is measured.
* **virtual_agent_as_pushed**: pushed by ServiceNow, shown as it comes
  (``order_wait: 0``), the same job in every build;
* **virtual_agent**: as configured by default, where a push with a new
  message first reads the chat's record for ServiceNow's order (issue 19;
  a build without that read does as the line above).

Chats stay at the fast poll rate throughout (``idle_after``), and
reconciliation's periodic pass is pushed out of the windows
(``reconcile_interval``); its cost is scenario 10's. The busy window ends
``SETTLE_S`` after the last arrival, so that the tracker writes the
connector defers (by up to two seconds) are counted with their messages.
Scenario 3 times this path; this counts it, the same in every run.
"""

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from bench.fixtures import Context, chat_ids, servicenow_and_channel, settled, start_chats
from bench.load import get_json, post_json
from bench.scenarios.forward_work import WORK_CHATS, WORK_HOST, counted, per_message

AGENT_MESSAGES = 100
QUICK_AGENT_MESSAGES = 25
#: (result name, backend, channel options). Quiet hosts: no idle slow-down,
#: no state check in place of a poll, no reconciliation pass in a window.
QUIET = {"idle_after": 3600, "session_check_interval": 3600, "reconcile_interval": 3600}
RUNS: Tuple[Tuple[str, str, Mapping[str, Any]], ...] = (
    ("connect", "connect", QUIET),
    ("virtual_agent_as_pushed", "virtual_agent", {**QUIET, "order_wait": 0}),
    ("virtual_agent", "virtual_agent", QUIET),
)
ARRIVAL_WAIT_S = 120.0
#: Longer than the connector delays a tracker write to coalesce it (rasa_glue/pending.py).
SETTLE_S = 3.0
#: Live chats the messages go to, round-robin.
CHATS = {"connect": 1, "virtual_agent": WORK_CHATS}


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    messages = QUICK_AGENT_MESSAGES if ctx.sizes.quick else AGENT_MESSAGES
    for result_name, backend, options in RUNS:
        out = Path(ctx.workdir) / f"agent-work-{result_name}-{time.monotonic_ns()}.json"
        async with servicenow_and_channel(
            ctx, backend, channel=dict(options), name=f"agent-work-{result_name}", script=WORK_HOST,
            env={"BENCH_WORK_OUT": str(out)},
        ) as (servicenow, host):
            senders = await start_chats(ctx, host.url, CHATS[backend], f"aw-{result_name}")
            chats = await chat_ids(ctx, host.url, senders)
            for chat in chats.values():
                await post_json(ctx.http, f"{servicenow.url}/__emu/agent/accept", {"session": chat})
            await settled(ctx, servicenow.url)
            pairs = [(sender, chats[sender]) for sender in senders]
            await _deliver(ctx, servicenow.url, pairs, messages // 4, f"aw-{result_name}-warm")
            started, since_ms = time.monotonic(), time.time() * 1000
            busy = await counted(
                host.process, out, _deliver(ctx, servicenow.url, pairs, messages, f"aw-{result_name}", settle=SETTLE_S)
            )
            busy_polls, since_ms = await _polls(ctx, servicenow.url, since_ms), time.time() * 1000
            background = await counted(host.process, out, asyncio.sleep(time.monotonic() - started))
            background_polls = await _polls(ctx, servicenow.url, since_ms)
            scale = busy_polls / background_polls if backend == "connect" and background_polls else 1.0
            result = per_message(busy, background, messages, background_scale=scale)
            if backend == "connect":
                result["polls"] = {"busy": busy_polls, "background": background_polls}
            results[result_name] = result
    return results


async def _deliver(
    ctx: Context, servicenow: str, chats: List[Tuple[str, str]], count: int, label: str, settle: float = 0.0
) -> None:
    """One agent message at a time, round-robin over the chats, each waited
    for at the user before the next; then ``settle`` seconds more."""
    for index in range(count):
        _, chat = chats[index % len(chats)]
        text = f"{label}-{index}"
        await post_json(ctx.http, f"{servicenow}/__emu/agent/message", {"session": chat, "text": text})
        await ctx.receiver.wait_for(text, timeout=ARRIVAL_WAIT_S)
    await asyncio.sleep(settle)


async def _polls(ctx: Context, servicenow: str, since_ms: float) -> int:
    """Connect polls (``GET .../messages``) the emulator answered since ``since_ms``."""
    log = (await get_json(ctx.http, f"{servicenow}/__emu/requests"))["requests"]
    return sum(
        1 for entry in log
        if entry["method"] == "GET" and entry["path"].endswith("/messages") and entry["at_ms"] >= since_ms
    )
