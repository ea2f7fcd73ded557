"""``python -m bench`` (``make bench``): measure the connector against the
local ServiceNow emulator, print a table, write ``bench/results/`` and a plot.

Options: ``--quick`` for a smoke-sized run, ``--only NAME`` (repeatable) to run
some scenarios, ``--output DIR`` for another results folder, ``--profile DIR``
for py-spy flame graphs of the Rasa processes."""

import argparse
import asyncio
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict

from bench import report
from bench.cluster import ROOT, demo_model, pin_this_process
from bench.fixtures import EMULATOR_CPU, Context, Sizes
from bench.load import Receiver, client
from bench.scenarios import agent_latency, bot_turns, channel_options, handoff_messages, handoff_start, reconcile, replicas, scale

SCENARIOS: Dict[str, Callable[[Context], Awaitable[Dict[str, Any]]]] = {
    "bot_turns": bot_turns.run,
    "handoff_messages": handoff_messages.run,
    "agent_latency": agent_latency.run,
    "scale": scale.run,
    "handoff_start": handoff_start.run,
    "channel_options": channel_options.run,
    "redis_memory": replicas.run_memory,
    "replicas": replicas.run_replicas,
    "reconcile": reconcile.run,
}


async def main(arguments: argparse.Namespace) -> int:
    chosen = arguments.only or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    pin_this_process(EMULATOR_CPU)
    workdir = Path(tempfile.mkdtemp(prefix="servicenow-bench-"))
    receiver = Receiver()
    await receiver.start()
    results: Dict[str, Any] = {"meta": _meta(arguments.quick), "scenarios": {}}
    try:
        async with client() as http:
            ctx = Context(
                workdir=workdir,
                model=demo_model(),
                sizes=Sizes(quick=arguments.quick),
                receiver=receiver,
                http=http,
                profile_dir=Path(arguments.profile) if arguments.profile else None,
            )
            for name in chosen:
                started = time.monotonic()
                print(f"== {name} ...", flush=True)
                results["scenarios"][name] = await SCENARIOS[name](ctx)
                print(f"   done in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        await receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    output = Path(arguments.output)
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if arguments.quick else ""
    for path in (output / f"{stamp}{suffix}.json", output / f"latest{suffix}.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    plot = report.plot(results, output / f"latest{suffix}.png")
    print(f"\nResults: {output / f'latest{suffix}.json'}  Plot: {plot}")
    return 0


def _meta(quick: bool) -> Dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about two minutes")
    parser.add_argument("--only", action="append", help=f"run only this scenario ({', '.join(SCENARIOS)})")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results"), help="where results and the plot go")
    parser.add_argument("--profile", metavar="DIR", help="record each Rasa process with py-spy into DIR (pip install py-spy)")
    sys.exit(asyncio.run(main(parser.parse_args())))
