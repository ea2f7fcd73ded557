"""11. The Python work of one forwarded message, counted: the channel of a
build hosted as in scenario 9, under an opcode counter
(``bench/work_host.py``), forwards ``WORK_MESSAGES`` user messages of live
chats (``--quick``: fewer), one at a time; the counts are divided by the
messages.

Timings on a shared 2-core machine move by more than the few percent that
separate two builds (two runs of the same build differ by up to 7%), so
scenarios 2 and 9 cannot tell such builds apart in one run. A count can: it
is the same in every run, to within the background work that happens to
fall in the window. It counts Python only; the work done in C (HTTP
parsing, JSON, the event loop's own turns) is not in it.

What runs without any message (Connect's polls, reconciliation, the
store's sweeps) is counted in a second window as long as the first, with no
message, and taken off. Reported per build and backend: opcodes and calls
per message, in all and by where the code lives (the connector, Sanic,
aiohttp, asyncio, the rest: Rasa, the standard library, the host), and the
background taken off.
"""

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Dict, List, Mapping

from bench.fixtures import Context, servicenow_and_channel, settled, start_chats
from bench.load import post_json

WORK_HOST = Path(__file__).resolve().parents[1] / "work_host.py"
BACKENDS = ("virtual_agent", "connect")
WORK_CHATS = 5
WORK_MESSAGES = 200
QUICK_WORK_MESSAGES = 50
#: Where a source file's code belongs, by a part of its path (first match).
PLACES = (
    ("connector", "connectors/servicenow/"),
    ("sanic", "/sanic/"),
    ("aiohttp", "/aiohttp/"),
    ("asyncio", "/asyncio/"),
)
SIGNAL_WAIT_S = 30.0
#: With ``BENCH_WORK_FUNCTIONS=1``: the functions reported, the busiest
#: first, and every one of the connector's (the share a change here moves).
FUNCTIONS_SHOWN = 40

#: ``{"opcodes": {file: n}, "calls": {file: n}}``, as ``work_host.py`` writes them.
Counts = Mapping[str, Mapping[str, int]]


async def run(ctx: Context) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    messages = QUICK_WORK_MESSAGES if ctx.sizes.quick else WORK_MESSAGES
    for backend in BACKENDS:
        out = Path(ctx.workdir) / f"work-{backend}-{time.monotonic_ns()}.json"
        async with servicenow_and_channel(
            ctx, backend, name=f"work-{backend}", script=WORK_HOST, env={"BENCH_WORK_OUT": str(out)}
        ) as (servicenow, host):
            senders = await start_chats(ctx, host.url, WORK_CHATS, f"work-{backend}")
            await settled(ctx, servicenow.url)
            # Warm-up: connections opened, caches filled, before the count.
            await _forward(ctx, host.url, senders, messages // 4, "warm")
            started = time.monotonic()
            busy = await counted(host.process, out, _forward(ctx, host.url, senders, messages, "work"))
            # What runs anyway (polls, reconciliation, sweeps) in a window as
            # long, with no message, is taken off.
            background = await counted(host.process, out, asyncio.sleep(time.monotonic() - started))
            results[backend] = per_message(busy, background, messages)
    return results


async def counted(process: Any, out: Path, work: Awaitable[Any]) -> Counts:
    """The host's counts while ``work`` runs."""
    on = Path(f"{out}.on")
    on.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    process.send_signal(signal.SIGUSR1)
    await _appears(on)
    await work
    process.send_signal(signal.SIGUSR2)
    await _appears(out)
    return json.loads(out.read_text())


async def _forward(ctx: Context, host: str, senders: List[str], count: int, label: str) -> None:
    webhook = f"{host}/webhooks/servicenow/webhook"
    for index in range(count):
        replies = await post_json(ctx.http, webhook, {"sender": senders[index % len(senders)], "message": f"{label} {index}"})
        assert replies == [], replies


async def _appears(path: Path) -> None:
    deadline = time.monotonic() + SIGNAL_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the counting host did not answer its signal: {path} never appeared")
        await asyncio.sleep(0.05)


def place_of(filename: str) -> str:
    for place, marker in PLACES:
        if marker in filename:
            return place
    return "other"


def per_message(busy: Counts, background: Counts, messages: int, background_scale: float = 1.0) -> Dict[str, Any]:
    """``{"opcodes": {"total", "connector", ...}, "calls": {...}}`` per
    message: what the window with the messages counted, less what the window
    without them did (times ``background_scale``: how much more background
    work the busy window held, e.g. its share of polls)."""
    result: Dict[str, Any] = {}
    for kind in ("opcodes", "calls"):
        by_place: Dict[str, float] = {"total": 0.0}
        for counts, sign in ((busy[kind], 1.0), (background[kind], -background_scale)):
            for filename, count in counts.items():
                place = place_of(filename)
                by_place[place] = by_place.get(place, 0.0) + sign * count / messages
                by_place["total"] += sign * count / messages
        result[kind] = {place: round(value, 1) for place, value in by_place.items()}
    result["background_opcodes_per_message"] = round(background_scale * sum(background["opcodes"].values()) / messages, 1)
    if "functions" in busy:  # BENCH_WORK_FUNCTIONS=1 (work_host.py): where the work goes
        by_function: Dict[str, float] = {}
        for counts, sign in ((busy["functions"], 1.0), (background.get("functions", {}), -background_scale)):
            for function, count in counts.items():
                by_function[function] = by_function.get(function, 0.0) + sign * count / messages
        ranked = sorted(by_function.items(), key=lambda pair: -abs(pair[1]))
        top = ranked[:FUNCTIONS_SHOWN] + [
            pair for pair in ranked[FUNCTIONS_SHOWN:] if place_of(pair[0].rpartition(":")[0]) == "connector"
        ]
        result["functions"] = {_short(function): round(n, 1) for function, n in top}
    return result


def _short(function: str) -> str:
    """``file:function`` from where its package starts: ``connectors/...``,
    ``sanic/...``, ``json/...``."""
    for pattern in (r".*/site-packages/", r".*/(?=connectors/servicenow/)", r".*/lib/python3\.\d+/"):
        shortened = re.sub(f"^{pattern}", "", function)
        if shortened != function:
            return shortened
    return function
