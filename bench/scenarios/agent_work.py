"""12. The Python work of one agent message on its way to the user, counted
as scenario 11 counts a forward: the channel of a build under the opcode
counter (``bench/work_host.py``), ``AGENT_MESSAGES`` agent messages posted
one at a time to live chats and each waited for at the user's
``callback_url`` (``--quick``: fewer).

* **connect**: found by a poll, in one chat. A live chat is polled once a
  second whether or not the agent wrote, so the background's counts are
  scaled by how many polls each window saw (from the emulator's request
  log): what is left is the work a found message adds to a poll, its
  delivery and the cursor's save. One chat, so that the empty polls taken
  off are few beside what is measured.
* **virtual_agent_as_pushed**: pushed by ServiceNow, shown as it comes
  (``order_wait: 0``), the same job in every build;
* **virtual_agent**: as configured by default, where a push with a new
  message first reads the chat's record for ServiceNow's order (issue 19;
  a build without that read does as the line above).

The background is counted in two windows, before and after the busy one,
each about half as long: an empty poll reads the newest page of the chat's
history (25 messages at the emulator), which can still be filling while the
busy window runs, and the two together saw on average what it saw. Chats
stay at the fast poll rate throughout (``idle_after``), and
reconciliation's periodic pass is pushed out of the windows
(``reconcile_interval``); its cost is scenario 10's. The busy window ends
``SETTLE_S`` after the last arrival, so that the tracker writes the
connector defers (by up to two seconds) are counted with their messages.
Scenario 3 times this path; this counts it, the same in every run.
"""

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Dict, List, Mapping, Tuple

from bench.fixtures import Context, chat_ids, servicenow_and_channel, settled, start_chats
from bench.load import get_json, post_json
from bench.scenarios.forward_work import WORK_CHATS, WORK_HOST, Counts, counted, per_message

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
            warm_started = time.monotonic()
            await _deliver(ctx, servicenow.url, pairs, messages // 4, f"aw-{result_name}-warm")
            # The background before and after, each about half as long as the busy window will be.
            half = ((time.monotonic() - warm_started) * 4 + SETTLE_S) / 2
            before = await _window(ctx, host, out, servicenow.url, asyncio.sleep(half))
            busy = await _window(
                ctx, host, out, servicenow.url,
                _deliver(ctx, servicenow.url, pairs, messages, f"aw-{result_name}", settle=SETTLE_S),
            )
            after = await _window(ctx, host, out, servicenow.url, asyncio.sleep(half))
            background = _Window.sum(before, after)
            # Connect: the background is mostly polls, so it is scaled by them; else by time.
            if backend == "connect":
                scale = busy.polls / background.polls if background.polls else 1.0
            else:
                scale = busy.seconds / background.seconds
            result = per_message(busy.counts, background.counts, messages, background_scale=scale)
            if backend == "connect":
                result["polls"] = {"busy": busy.polls, "background": background.polls}
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


@dataclass
class _Window:
    counts: Counts
    polls: int
    seconds: float

    @staticmethod
    def sum(one: "_Window", other: "_Window") -> "_Window":
        counts = {
            kind: dict(Counter(one.counts.get(kind, {})) + Counter(other.counts.get(kind, {})))
            for kind in set(one.counts) | set(other.counts)
        }
        return _Window(counts, one.polls + other.polls, one.seconds + other.seconds)


async def _window(ctx: Context, host: Any, out: Path, servicenow: str, work: Awaitable[Any]) -> _Window:
    """The host's counts while ``work`` runs, the Connect polls answered meanwhile, and how long it took."""
    started, since_ms = time.monotonic(), time.time() * 1000
    counts = await counted(host.process, out, work)
    seconds, until_ms = time.monotonic() - started, time.time() * 1000
    return _Window(counts, await _polls(ctx, servicenow, since_ms, until_ms), seconds)


async def _polls(ctx: Context, servicenow: str, since_ms: float, until_ms: float) -> int:
    """Connect polls (``GET .../messages``) the emulator answered between the two times."""
    log = (await get_json(ctx.http, f"{servicenow}/__emu/requests"))["requests"]
    return sum(
        1 for entry in log
        if entry["method"] == "GET" and entry["path"].endswith("/messages") and since_ms <= entry["at_ms"] < until_ms
    )
