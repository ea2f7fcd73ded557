"""``python -m soak`` (``make soak``, ``SOAK_ARGS`` for the options below).

    python -m soak [--duration 600] [--seed 1] [--users 200] [--faults all|none|kill9,redis,...]
                   [--apis virtual_agent,connect] [--replicas 3] [--no-callback] [--keep] [--quick]

Prints progress, then the report; writes ``soak/results/<date>[-quick].json``,
``latest[-quick].json`` and ``latest[-quick].md`` (``--output`` for another
folder). Exit status 0 when nothing was lost, doubled or reordered beyond
what the docs allow, 1 otherwise. The run's folder (replica, proxy,
emulator and Redis logs, the full history) is kept when the run fails or
with ``--keep``, and its path printed. ``--quick`` is the short run of
``make test``: 150 s, 40 users, the faults of ``QUICK_FAULTS`` and seed 32,
whose schedule puts a kill -9 and a Redis stop early and ends with a
graceful restart (each can still be given).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from bench.cluster import ROOT, demo_model
from soak import report
from soak.checker import check
from soak.cluster import Options
from soak.history import load
from soak.plan import APIS, parse_kinds
from soak.run import Arguments, soak, write_results

QUICK_FAULTS = "kill9,sigterm,redis,sn_5xx,push_repeat,push_reorder"
QUICK_SEED = 32


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m soak", description="Faults under load, checked from outside.")
    parser.add_argument("--duration", type=float, help="seconds of load (default 600; --quick 150)")
    parser.add_argument("--seed", type=int, help=f"seeds the fault schedule and every script (default 1; --quick {QUICK_SEED})")
    parser.add_argument("--users", type=int, help="concurrent users, split over the APIs (default 200; --quick 40)")
    parser.add_argument("--faults", help=f"all (the default), none, or a comma-separated list of fault kinds (--quick: {QUICK_FAULTS})")
    parser.add_argument("--apis", default=",".join(APIS), help="virtual_agent, connect or both (default both)")
    parser.add_argument("--replicas", type=int, default=3, help="rasa run replicas per API (default 3)")
    parser.add_argument("--push-retries", type=int, default=3,
                        help="extra attempts the emulator makes per Virtual Agent push (default 3)")
    parser.add_argument("--no-callback", action="store_true", help="no callback_url (the users read SSE only)")
    parser.add_argument("--quick", action="store_true", help="the short run of make test (see above)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, history) even when it passes")
    parser.add_argument("--output", default=str(ROOT / "soak" / "results"), help="where the results go")
    parser.add_argument("--check", metavar="HISTORY", help="only run the checker on a history.json of an earlier run")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    options = parse(argv)
    if options.check:
        result = check(load(Path(options.check)))
        print(json.dumps(result, indent=2))
        print(report.summary(result))
        return 0 if result["ok"] else 1
    apis = [api.strip() for api in options.apis.split(",") if api.strip()]
    unknown = [api for api in apis if api not in APIS]
    if unknown or not apis:
        print(f"--apis: choose from {', '.join(APIS)}", file=sys.stderr)
        return 2
    try:
        faults = parse_kinds(options.faults or (QUICK_FAULTS if options.quick else "all"))
    except ValueError as error:
        print(f"--faults: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    args = Arguments(
        duration=options.duration or (150.0 if options.quick else 600.0),
        seed=options.seed if options.seed is not None else (QUICK_SEED if options.quick else 1),
        users=options.users or (40 if options.quick else 200),
        replicas=options.replicas,
        apis=apis,
        faults=faults,
        callback=not options.no_callback,
        workdir=workdir,
        model=demo_model(),
        options=Options(push_retries=options.push_retries),
    )
    result, meta = asyncio.run(soak(args))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = write_results(result, meta, Path(options.output), stamp, "-quick" if options.quick else "")
    print()
    print(report.markdown(result, meta))
    print()
    print(report.summary(result))
    print(f"\nResults: {path}")
    if result["ok"] and not options.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"Logs and history: {workdir}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
