"""The processes a benchmark measures: the ServiceNow emulator and ``rasa run``
with the channel, each started as a user would start it, optionally pinned to
a CPU so the two cores of a CI machine are shared predictably (Rasa on one,
the emulator and the load generator on the other)."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

import aiohttp
import yaml

if TYPE_CHECKING:
    from bench.builds import Build

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RASA = str(Path(PYTHON).with_name("rasa"))
QUIET_ENV = {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    "PYTHONWARNINGS": "ignore",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(command: List[str], cpu: Optional[int]) -> List[str]:
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(cpu), *command]


def pin_this_process(cpu: int) -> None:
    """Keep the load generator off Rasa's core: unpinned, the scheduler puts it
    there whenever its own core is busy, and Rasa's numbers then measure the
    rig."""
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


#: Tries at starting a server whose free port another process took first.
PORT_ATTEMPTS = 3


class PortTaken(RuntimeError):
    """The server exited because another process bound its port between
    ``free_port`` and its own bind (tests run benches side by side)."""


async def wait_until_up(url: str, service: "Service", timeout: float = 120.0) -> None:
    """Until ``url`` answers 200. Only 200: another process that took the
    port first (an emulator of a test beside this run) answers its own 4xx,
    and the scenario would then talk to it."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if service.process.poll() is not None:
                tail = service.log_tail()
                taken = "address already in use" in tail.lower() or "errno 98" in tail.lower()
                raise (PortTaken if taken else RuntimeError)(f"{service.name} exited:\n{tail}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} did not come up:\n{service.log_tail()}")
            await asyncio.sleep(0.2)  # wait-ok: polls a server's readiness with a deadline


async def on_a_free_port(start: Callable[[int], Awaitable[Service]]) -> Service:
    """``start`` on a free port, again on another when a process took that one first."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return await start(free_port())
        except PortTaken:
            continue
    return await start(free_port())


def start_emulator(workdir: Path, cpu: Optional[int], **config: Any) -> Service:
    port = free_port()
    config_path = workdir / "emulator.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "emulator.log"
    command = [PYTHON, "-m", "connectors.servicenow.emulator", "--port", str(port), "--quiet", "--config", str(config_path)]
    process = subprocess.Popen(
        pinned(command, cpu), cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True
    )
    line = process.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return Service("emulator", line.strip().rsplit(" ", 1)[-1], process, log_path)


@dataclass
class RasaSetup:
    """How ``rasa run`` is started for one measurement."""

    channel: Dict[str, Any]
    tracker_store: Optional[Dict[str, Any]] = None
    #: Rasa's lock store (replicas of one deployment share a Redis one).
    lock_store: Optional[Dict[str, Any]] = None
    extra_channels: Dict[str, Any] = field(default_factory=lambda: {"rest": None})


#: Channel options a build may refuse without its numbers changing meaning:
#: the retries only keep a failing call from stretching a measurement, the
#: limits and the wait for a push's order are turned off (0), which is all a
#: build without them does, and reconciliation's pass is only moved out of a
#: window (a build without it has none).
OPTIONAL_CHANNEL_OPTIONS = frozenset(
    {
        "retry_attempts", "retry_backoff", "max_live_chats", "deployment_handoff_starts_per_minute", "order_wait",
        "reconcile_interval",
    }
)


async def start_rasa(
    workdir: Path, model: Optional[Path], setup: RasaSetup, cpu: Optional[int], name: str = "rasa",
    build: Optional["Build"] = None,
) -> Service:
    """``rasa run`` of ``build`` (this checkout when None), with its own model
    unless ``model`` is given, in the build's checkout."""
    rasa, cwd = (RASA, ROOT) if build is None else (str(build.rasa), build.cwd)
    channel = setup.channel
    if build is not None:
        from bench.builds import Unsupported

        if not build.runs_rasa:
            raise Unsupported(f"build {build.name} has no `rasa run` with a demo model (channel-level scenarios only)")
        model = build.model if model is None else model
        channel = build.channel_options(channel, optional=OPTIONAL_CHANNEL_OPTIONS)
    assert model is not None
    return await on_a_free_port(
        lambda port: _start_rasa_on(port, workdir, model, setup, cpu, name, rasa, cwd, channel, build)
    )


async def _start_rasa_on(
    port: int, workdir: Path, model: Path, setup: "RasaSetup", cpu: Optional[int], name: str,
    rasa: str, cwd: Path, channel: Dict[str, Any], build: Optional["Build"],
) -> Service:
    credentials = workdir / f"{name}-credentials.yml"
    credentials.write_text(
        yaml.safe_dump({**setup.extra_channels, "connectors.servicenow.ServiceNowInput": channel})
    )
    command = [
        rasa, "run", "--model", str(model), "--enable-api", "--credentials", str(credentials),
        "--interface", "127.0.0.1", "--port", str(port),
    ]
    stores = {key: value for key, value in (("tracker_store", setup.tracker_store), ("lock_store", setup.lock_store)) if value}
    if stores:
        endpoints = workdir / f"{name}-endpoints.yml"
        endpoints.write_text(yaml.safe_dump(stores))
        command += ["--endpoints", str(endpoints)]
    log_path = workdir / f"{name}.log"
    env = {**os.environ, **QUIET_ENV} if build is None else build.env(QUIET_ENV)
    process = subprocess.Popen(
        pinned(command, cpu), cwd=cwd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
    )
    service = Service(name, f"http://127.0.0.1:{port}", process, log_path)
    await wait_until_up(f"{service.url}/status", service)
    return service


CHANNEL_HOST = Path(__file__).with_name("channel_host.py")


async def start_channel_host(
    workdir: Path,
    build: "Build",
    channel: Dict[str, Any],
    cpu: Optional[int],
    name: str = "channel",
    script: Path = CHANNEL_HOST,
    env: Optional[Dict[str, str]] = None,
) -> Service:
    """The channel alone in a Sanic app as Rasa builds it (``channel_host.py``,
    or ``script`` that runs it), run with the build's Python in its checkout:
    the channel-level scenarios' server, on any Rasa."""
    channel = build.channel_options(channel, optional=OPTIONAL_CHANNEL_OPTIONS)
    options_path = workdir / f"{name}-channel.json"
    options_path.write_text(json.dumps(channel))
    domain = build.source / "domain.yml" if build.source is not None and (build.source / "domain.yml").exists() else ROOT / "domain.yml"
    log_path = workdir / f"{name}.log"

    async def start_on(port: int) -> Service:
        command = [
            str(build.python), str(script), "--port", str(port), "--channel", str(options_path),
            "--domain", str(domain),
        ]
        process = subprocess.Popen(
            pinned(command, cpu), cwd=build.cwd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
            env=build.env({**QUIET_ENV, **(env or {})}),
        )
        service = Service(name, f"http://127.0.0.1:{port}", process, log_path)
        # The channel's health check answers once the server is up.
        await wait_until_up(f"{service.url}/webhooks/servicenow/", service)
        return service

    return await on_a_free_port(start_on)


def demo_model() -> Path:
    model = ROOT / "models" / "demo.tar.gz"
    if not model.exists():
        raise SystemExit("models/demo.tar.gz is missing: run `make model` (or `make bench`) first.")
    return model
