"""``python -m bench`` (``make bench``): measure the connector against the
local ServiceNow emulator, print a table, write ``bench/results/`` and a plot.

Options: ``--quick`` for a smoke-sized run, ``--only NAME`` (repeatable) to run
some scenarios, ``--output DIR`` for another results folder, ``--profile DIR``
for py-spy flame graphs of the Rasa processes. Side by side:
``--baseline COMMIT`` runs the scenarios for that commit too (checked out
under ``build/baseline/`` with its own environment), ``--build NAME=PYTHON``
for another environment (e.g. Rasa Pro; channel-level scenarios only),
``--runs N`` runs per build, in alternating order; docs/benchmarks.md."""

import argparse
import asyncio
import dataclasses
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

from bench import builds as build_setup
from bench import compare, report
from bench.builds import Build, BuildError, Unsupported
from bench.cluster import PYTHON, ROOT, demo_model, pin_this_process
from bench.fixtures import EMULATOR_CPU, Context, Sizes
from bench.load import Receiver, client
from bench.scenarios import (
    agent_latency, agent_work, bot_turns, channel_level, channel_options, forward_work, handoff_messages, handoff_start,
    reconcile, replicas, scale,
)


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Context], Awaitable[Dict[str, Any]]]
    #: False: measured in this process with this checkout's code, so it runs
    #: for this checkout only.
    any_build: bool = True


SCENARIOS: Dict[str, Scenario] = {
    "bot_turns": Scenario(bot_turns.run),
    "handoff_messages": Scenario(handoff_messages.run),
    "agent_latency": Scenario(agent_latency.run),
    "scale": Scenario(scale.run),
    "handoff_start": Scenario(handoff_start.run),
    "channel_options": Scenario(channel_options.run),
    "redis_memory": Scenario(replicas.run_memory, any_build=False),
    "replicas": Scenario(replicas.run_replicas),
    "channel_level": Scenario(channel_level.run),
    "reconcile": Scenario(reconcile.run),
    "forward_work": Scenario(forward_work.run),
    "agent_work": Scenario(agent_work.run),
}
#: What a side-by-side run measures unless --only says otherwise: issue 18's
#: targets (forward, agent to user, bot turns), the channel alone, and the
#: Python work of both paths counted.
SIDE_BY_SIDE = ["handoff_messages", "agent_latency", "bot_turns", "channel_level", "forward_work", "agent_work"]
#: A one-minute load average above this many runnable tasks per CPU means
#: other work shared the machine: the numbers are noisy.
BUSY_LOAD_PER_CPU = 0.5


async def main(arguments: argparse.Namespace) -> int:
    try:
        measured = _builds(arguments)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    side_by_side = len(measured) > 1
    chosen = arguments.only or (SIDE_BY_SIDE if side_by_side else list(SCENARIOS))
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    runs = arguments.runs or ((2 if arguments.quick else 3) if side_by_side else 1)
    pin_this_process(EMULATOR_CPU)
    workdir = Path(tempfile.mkdtemp(prefix="servicenow-bench-"))
    receiver = Receiver()
    await receiver.start()
    load_before = build_setup.machine_load()
    started = datetime.datetime.now(datetime.timezone.utc)
    _warn_if_busy(load_before, "before the run")
    try:
        async with client() as http:
            base = Context(
                workdir=workdir,
                model=demo_model(),
                sizes=Sizes(quick=arguments.quick),
                receiver=receiver,
                http=http,
                profile_dir=Path(arguments.profile) if arguments.profile else None,
            )
            per_build, skipped = await _measure(base, chosen, measured, runs)
    finally:
        await receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    load_after = build_setup.machine_load()
    results = _results(arguments.quick, measured, per_build, skipped, runs, load_before, load_after)
    results["meta"]["started"] = started.isoformat(timespec="seconds")
    output = Path(arguments.output)
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = ("-quick" if arguments.quick else "") + ("-side-by-side" if side_by_side else "")
    for path in (output / f"{stamp}{suffix}.json", output / f"latest{suffix}.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    if "comparison" in results:
        print()
        print(report.side_by_side(results))
    _warn_if_busy(load_after, "at the end of the run")
    plot = report.plot(results, output / f"latest{suffix}.png")
    print(f"\nResults: {output / f'latest{suffix}.json'}  Plot: {plot}")
    return 0


def _builds(arguments: argparse.Namespace) -> List[Build]:
    this = build_setup.this_build(Path(PYTHON), demo_model())
    measured = [this]
    if arguments.baseline:
        measured.append(build_setup.baseline_build(arguments.baseline, this))
    for spec in arguments.build or []:
        measured.append(build_setup.other_build(spec))
    build_setup.unique_names(measured)
    for build in measured:
        print(f"   build {build.label}: {build.python}", flush=True)
    return measured


Runs = Dict[str, Dict[str, List[Dict[str, Any]]]]


async def _measure(base: Context, chosen: List[str], measured: List[Build], runs: int) -> "tuple[Runs, Dict[str, Dict[str, str]]]":
    """Every chosen scenario ``runs`` times per build: per scenario and build
    the records of its runs, and what was skipped for which build, and why."""
    per_build: Runs = {name: {} for name in chosen}
    skipped: Dict[str, Dict[str, str]] = {}
    for name in chosen:
        for round_number in range(runs):
            # The order flips every round (AB, BA, AB, ...), so drift in the
            # machine's load falls on every build alike.
            for build in measured if round_number % 2 == 0 else measured[::-1]:
                if build.name in skipped.get(name, {}):
                    continue
                reason = _cannot_run(name, build)
                if reason:
                    skipped.setdefault(name, {})[build.name] = reason
                    print(f"== {name} [{build.name}]: skipped: {reason}", flush=True)
                    continue
                ctx = dataclasses.replace(base, build=build, model=build.model or base.model)
                record = await _run_once(name, ctx, build, round_number, runs, len(measured) > 1)
                if "skipped" in record:
                    skipped.setdefault(name, {})[build.name] = record["skipped"]
                else:
                    per_build[name].setdefault(build.name, []).append(record)
    return per_build, skipped


def _cannot_run(name: str, build: Build) -> Optional[str]:
    if build.name != "this" and not SCENARIOS[name].any_build:
        return "measured in this process with this checkout's code"
    if "import_error" in build.info:
        return f"the build cannot import the channel: {build.info['import_error']}"
    return None


async def _run_once(name: str, ctx: Context, build: Build, round_number: int, runs: int, side_by_side: bool) -> Dict[str, Any]:
    ctx.receiver.reset()
    where = f" [{build.name}, run {round_number + 1}/{runs}]" if side_by_side or runs > 1 else ""
    print(f"== {name}{where} ...", flush=True)
    load = build_setup.machine_load()["load_average"][0]
    started, wall = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
    try:
        result = await SCENARIOS[name].run(ctx)
    except Unsupported as reason:
        print(f"   skipped: {reason}", flush=True)
        return {"skipped": str(reason)}
    seconds = time.monotonic() - started
    load_after = build_setup.machine_load()["load_average"][0]
    print(f"   done in {seconds:.0f} s (load average {load:.1f} -> {load_after:.1f})", flush=True)
    return {
        "result": result,
        "round": round_number,
        "started": wall.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "load_average_1min": [load, load_after],
    }


def _results(
    quick: bool,
    measured: List[Build],
    per_build: Runs,
    skipped: Dict[str, Dict[str, str]],
    runs: int,
    load_before: Dict[str, Any],
    load_after: Dict[str, Any],
) -> Dict[str, Any]:
    meta = _meta(quick)
    meta["load"] = {"before": load_before, "after": load_after}
    meta["builds"] = {build.name: build.as_dict() for build in measured}
    this_runs = {name: [record["result"] for record in by_build.get("this", [])] for name, by_build in per_build.items()}
    results: Dict[str, Any] = {
        "meta": meta,
        # This checkout's numbers, the median over its runs: what the target table reads.
        "scenarios": {name: compare.median_tree(values) for name, values in this_runs.items() if values},
    }
    if len(measured) > 1 or runs > 1:
        names = [build.name for build in measured]
        raw = {name: {build: [record["result"] for record in records] for build, records in by_build.items()} for name, by_build in per_build.items()}
        found = compare.measures(raw)
        baseline = next((build for build in measured if build.name == compare.BASELINE), None)
        results["comparison"] = {
            "builds": names,
            "runs_per_build": runs,
            "order": "alternating: the builds in this order in odd rounds, reversed in even ones",
            "ratio": "this / other",
            "skipped": skipped,
            "measures": [measure.as_dict(names) for measure in found],
            "checks": [
                {"measure": row[0], "result": row[1], "target": row[2], "met": row[3]}
                for row in compare.checks(found, names, baseline_label=(baseline.commit or "")[:7] if baseline else "")
            ],
            "medians": {
                build: {name: compare.median_tree(values) for name, values in by_build.items() if values}
                for build, by_build in _by_build(raw).items() if build != "this"
            },
            "runs": per_build,
        }
    return results


def _by_build(raw: Dict[str, Dict[str, List[Any]]]) -> Dict[str, Dict[str, List[Any]]]:
    flipped: Dict[str, Dict[str, List[Any]]] = {}
    for name, by_build in raw.items():
        for build, values in by_build.items():
            flipped.setdefault(build, {})[name] = values
    return flipped


def _warn_if_busy(load: Dict[str, Any], when: str) -> None:
    one_minute, cpus = load["load_average"][0], load["cpus"] or 1
    if one_minute > BUSY_LOAD_PER_CPU * cpus:
        print(
            f"   note: load average {one_minute:.1f} on {cpus} CPUs {when}: other work shares the machine, "
            "the numbers are noisy (take them again on a quiet machine)",
            flush=True,
        )


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
    parser.add_argument(
        "--baseline", metavar="COMMIT",
        help="run the scenarios for COMMIT too, side by side (a worktree under build/baseline/ with its own environment)",
    )
    parser.add_argument(
        "--build", action="append", metavar="NAME=PYTHON",
        help="another environment to measure side by side, e.g. pro=.venv-pro/bin/python (channel-level scenarios)",
    )
    parser.add_argument("--runs", type=int, help="runs per build and scenario (side by side: 3, --quick 2; else 1)")
    sys.exit(asyncio.run(main(parser.parse_args())))
