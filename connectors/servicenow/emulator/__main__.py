"""Command line: ``python -m connectors.servicenow.emulator --host 127.0.0.1 --port 8181 [--config file.json]
[--set key=value ...] [--control-token TOKEN] [--quiet | --verbose]``. See the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import List, Optional

from .app import start_emulator
from .config import EmulatorConfig, parse_overrides


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.servicenow.emulator",
        description=(
            "Local fake ServiceNow (Connect Support API, Virtual Agent API, OAuth, control plane under /__emu/)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8181, help="port to bind; 0 picks a free one (default 8181)")
    parser.add_argument("--config", metavar="FILE", help="JSON file with config keys")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key; VALUE is JSON (plain text is taken as a string); repeatable",
    )
    parser.add_argument(
        "--control-token",
        metavar="TOKEN",
        default=os.environ.get("EMULATOR_CONTROL_TOKEN") or None,
        help="the control-plane token browsers must send (default: $EMULATOR_CONTROL_TOKEN, else a new one per run)",
    )
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("--quiet", action="store_true", help="warnings only")
    volume.add_argument("--verbose", action="store_true", help="also every request (DEBUG), polls included")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    config = EmulatorConfig.from_json_file(args.config) if args.config else EmulatorConfig()
    return config.patched(parse_overrides(args.set))


async def serve(args: argparse.Namespace, config: EmulatorConfig) -> None:
    emulator = await start_emulator(config, host=args.host, port=args.port, control_token=args.control_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Tests and scripts wait for exactly this first line.
    print(f"ServiceNow emulator listening on {emulator.url}", flush=True)
    # The console link carries the control token in its fragment: the page reads it, no server or log sees it.
    print(f"Agent console: {emulator.console_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await emulator.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = build_config(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(args, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
