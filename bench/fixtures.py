"""What every scenario needs: sizes, the emulator and Rasa for a backend, and
live chats to measure with."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Optional, Set

import aiohttp

from bench.cluster import CHANNEL_HOST, RasaSetup, Service, start_channel_host, start_emulator, start_rasa
from bench.load import Receiver, gather_limited, get_json, post_json

if TYPE_CHECKING:
    from bench.builds import Build

# Rasa gets core 0 to itself; the emulator and the load generator (this process) share core 1.
RASA_CPU = 0
EMULATOR_CPU = 1
WEBHOOK_SECRET = "bench-secret"
#: py-spy output: "flamegraph" (SVG) for people, "raw" (folded stacks) for tools.
PROFILE_FORMAT = os.environ.get("BENCH_PROFILE_FORMAT", "flamegraph")


@dataclass
class Sizes:
    """How much each scenario does; ``quick`` shrinks everything for a smoke run."""

    quick: bool
    repeats: int = field(init=False)
    latency_requests: int = field(init=False)
    throughput_seconds: float = field(init=False)
    history_events: int = 500
    chats_small: int = field(init=False)
    chats_large: int = field(init=False)
    scale_chats: List[int] = field(init=False)
    agent_messages: int = field(init=False)
    handoff_starts: int = field(init=False)

    def __post_init__(self) -> None:
        self.repeats = 2 if self.quick else 5
        self.latency_requests = 40 if self.quick else 300
        self.throughput_seconds = 2.0 if self.quick else 8.0
        self.chats_small = 20 if self.quick else 100
        self.chats_large = 50 if self.quick else 1000
        self.scale_chats = [50, 200] if self.quick else [1000, 10000]
        self.agent_messages = 30 if self.quick else 200
        self.handoff_starts = 20 if self.quick else 100


@dataclass
class Context:
    workdir: Path
    model: Path
    sizes: Sizes
    receiver: Receiver
    http: aiohttp.ClientSession
    #: Record every Rasa process with py-spy into this folder (``--profile``).
    profile_dir: Optional[Path] = None
    #: The build whose channel is measured (None: this checkout, as ``model``
    #: says); the emulator and the load generator are always this checkout's.
    build: Optional["Build"] = None


def channel_for(backend: str, emulator: Service, receiver: Receiver, **overrides: Any) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "instance_url": emulator.url,
        "api": backend,
        "username": "rasa.integration",
        "password": "secret",
        "callback_url": receiver.url,
        # A benchmark measures the connector, not a slow ServiceNow: no
        # retries stretch the numbers, and failures are counted instead.
        "retry_attempts": 2,
        "retry_backoff": 0.1,
        # A load of thousands of chats started at once is the point here, not
        # something to refuse (the defaults are 100 live, 60 starts a minute).
        "max_live_chats": 0,
        "deployment_handoff_starts_per_minute": 0,
    }
    if backend == "connect":
        from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID

        options["queue_id"] = DEFAULT_QUEUE_SYS_ID
    else:
        options["webhook_secret"] = WEBHOOK_SECRET
    options.update(overrides)
    return options


def emulator_config(**overrides: Any) -> Dict[str, Any]:
    config: Dict[str, Any] = {
        "greeting_text": None,
        "request_log_limit": 200_000,
        "va_callback_auth": {"X-Webhook-Secret": WEBHOOK_SECRET},
        "idle_timeout_s": 0,
    }
    config.update(overrides)
    return config


@contextlib.asynccontextmanager
async def servicenow_and_rasa(
    ctx: Context,
    backend: str,
    *,
    channel: Optional[Dict[str, Any]] = None,
    tracker_store: Optional[Dict[str, Any]] = None,
    emulator: Optional[Dict[str, Any]] = None,
    name: str = "rasa",
) -> AsyncIterator["tuple[Service, Service]"]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir))
    servicenow = start_emulator(workdir, EMULATOR_CPU, **emulator_config(**(emulator or {})))
    rasa: Optional[Service] = None
    try:
        setup = RasaSetup(channel=channel_for(backend, servicenow, ctx.receiver, **(channel or {})), tracker_store=tracker_store)
        model = ctx.model if ctx.build is None else None  # a build brings its own
        rasa = await start_rasa(workdir, model, setup, RASA_CPU, name=name, build=ctx.build)
        if backend == "virtual_agent":
            await post_json(ctx.http, f"{servicenow.url}/__emu/config", {"va_callback_url": f"{rasa.url}/webhooks/servicenow/callback"})
        suffix = f"-{ctx.build.name}" if ctx.build is not None and ctx.build.name != "this" else ""
        profiler = _profile(rasa, ctx.profile_dir / f"{name}{suffix}.svg") if ctx.profile_dir else None
        try:
            yield servicenow, rasa
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
    finally:
        if rasa is not None:
            rasa.stop()
        servicenow.stop()


@contextlib.asynccontextmanager
async def servicenow_and_channel(
    ctx: Context,
    backend: str,
    *,
    channel: Optional[Dict[str, Any]] = None,
    name: str = "channel",
    script: Path = CHANNEL_HOST,
    env: Optional[Dict[str, str]] = None,
) -> AsyncIterator["tuple[Service, Service]"]:
    """The emulator and the channel of ``ctx.build`` hosted without a model
    (``bench/channel_host.py``, or ``script`` that runs it), on Rasa's core."""
    from bench.builds import Unsupported

    if ctx.build is None:
        raise Unsupported("channel-level scenarios need a build")
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.workdir))
    servicenow = start_emulator(workdir, EMULATOR_CPU, **emulator_config())
    host: Optional[Service] = None
    try:
        options = channel_for(backend, servicenow, ctx.receiver, **(channel or {}))
        host = await start_channel_host(workdir, ctx.build, options, RASA_CPU, name=name, script=script, env=env)
        if backend == "virtual_agent":
            await post_json(ctx.http, f"{servicenow.url}/__emu/config", {"va_callback_url": f"{host.url}/webhooks/servicenow/callback"})
        profiler = _profile(host, ctx.profile_dir / f"{name}-{ctx.build.name}.svg") if ctx.profile_dir else None
        try:
            yield servicenow, host
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
    finally:
        if host is not None:
            host.stop()
        servicenow.stop()


def _profile(rasa: Service, output: Path) -> subprocess.Popen:
    """A py-spy flame graph of the Rasa process while the scenario runs."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(rasa.pid), "--rate", "250", "--format", PROFILE_FORMAT, "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def sqlite_store(workdir: Path, name: str) -> Dict[str, Any]:
    # On tmpfs when there is one: the benchmark measures the connector, not fsync.
    directory = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else workdir
    return {"type": "SQL", "dialect": "sqlite", "db": str(directory / f"bench-{name}-{uuid.uuid4().hex[:8]}.db")}


async def start_chats(ctx: Context, rasa: str, count: int, prefix: str, concurrency: int = 8) -> List[str]:
    """Open ``count`` handoffs through the webhook of the Rasa at ``rasa``; returns the senders."""
    senders = [f"{prefix}-{index}" for index in range(count)]
    url = f"{rasa}/webhooks/servicenow/webhook"

    def opener(sender: str):
        return lambda: post_json(ctx.http, url, {"sender": sender, "message": "talk to live agent"})

    replies = await gather_limited([opener(sender) for sender in senders], concurrency)
    failed = [sender for sender, reply in zip(senders, replies) if not reply or "connecting" not in reply[-1]["text"]]
    if failed:
        raise RuntimeError(f"{len(failed)} handoffs did not start, e.g. {failed[0]}: {replies[senders.index(failed[0])]}")
    return senders


async def settled(ctx: Context, servicenow: str) -> None:
    """Wait until the emulator has pushed everything (a Virtual Agent start
    is followed by ServiceNow's first messages) and the connector's deferred
    tracker writes are done, so that what is measured next is measured alone."""
    while (await get_json(ctx.http, f"{servicenow}/__emu/callbacks?session=none"))["pending"]:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def chat_ids(ctx: Context, rasa: str, senders: List[str]) -> Dict[str, str]:
    """The live chat id (``live_chat_id``) of each sender."""

    async def chat_of(sender: str):
        tracker = await get_json(ctx.http, f"{rasa}/conversations/{sender}/tracker")
        return sender, tracker["slots"]["live_chat_id"]

    pairs = await gather_limited([lambda sender=sender: chat_of(sender) for sender in senders], 16)
    return dict(pairs)



async def calls_carrying(ctx: Context, servicenow: str, path_suffix: str, texts: Set[str]) -> Dict[str, Dict[str, Any]]:
    """The emulator's log entry of the POST that carried each text, with
    ``arrived_ms`` (wall clock) added; the log records when a call finished."""
    log = (await get_json(ctx.http, f"{servicenow}/__emu/requests"))["requests"]
    calls: Dict[str, Dict[str, Any]] = {}
    for entry in log:
        if entry["method"] != "POST" or not entry["path"].endswith(path_suffix):
            continue
        message = (entry.get("body") or {}).get("message")
        text = message.get("text") if isinstance(message, dict) else message
        if text in texts:
            calls[text] = {**entry, "arrived_ms": entry["at_ms"] - entry["duration_ms"]}
    return calls
