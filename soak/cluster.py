"""The processes of a soak run, each started as a user would start it: one
``redis-server`` with AOF, the ServiceNow emulator, and per API a deployment
of ``rasa run`` replicas behind the soak's load balancer (``proxy.py``).
Replicas keep their port across restarts, so the balancer's list stays
valid; every process's CPU time is added up across its restarts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp
import yaml

from bench.cluster import CLOCK_TICKS, PYTHON, QUIET_ENV, RASA, ROOT, free_port
from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID
from soak.plan import SHORT_API

WEBHOOK_SECRET = "soak-callback-secret"
LOCK_STORE = "connectors.servicenow.rasa_glue.lock_store.AtomicRedisLockStore"
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Process:
    """A child process that can be stopped, killed and started again, with its log and its CPU time."""

    def __init__(self, name: str, command: List[str], log_path: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self.cpu_before = 0.0
        self.starts = 0

    def start(self, stdout: Any = None) -> None:
        log = open(self.log_path, "a")
        log.write(f"\n==== soak: start {self.name} at {time.time():.3f} ====\n")
        log.flush()
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=stdout if stdout is not None else log, stderr=log,
            env={**os.environ, **(self.env or {})}, text=True,
        )
        log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def cpu(self) -> float:
        return self.cpu_before + (cpu_seconds(self.process.pid) if self.running and self.process else 0.0)

    def signal(self, signum: int, wait: float = 60.0) -> float:
        """Send ``signum`` and wait for the exit (SIGKILL afterwards if it does not come); returns when the signal
        was sent."""
        sent = time.time()
        if not self.running or self.process is None:
            return sent
        self.cpu_before += cpu_seconds(self.process.pid)
        sent = time.time()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return sent

    def note(self, text: str) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"\n==== soak: {text} at {time.time():.3f} ====\n")


class RedisServer(Process):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        super().__init__("redis-server", [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
            "--stream-node-max-bytes", "256", "--logfile", str(self.dir / "redis.log"),
        ], workdir / "redis-stdout.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    async def start_and_wait(self, timeout: float = 60.0) -> None:
        self.start()
        await wait_until(self.answers, timeout, "redis-server to answer PING", self)


class Emulator(Process):
    def __init__(self, workdir: Path, config: Dict[str, Any]) -> None:
        self.config_path = workdir / "emulator.json"
        self.config_path.write_text(json.dumps(config))
        self.url = ""
        super().__init__("emulator", [PYTHON, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet",
                                      "--config", str(self.config_path)], workdir / "emulator.log")

    def start_and_read_url(self) -> None:
        self.start(stdout=subprocess.PIPE)
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the emulator did not start: {line!r} (see {self.log_path})")
        self.url = line.strip().rsplit(" ", 1)[-1]


class Replica(Process):
    def __init__(self, workdir: Path, model: Path, api: str, index: int, endpoints: Dict[str, Any]) -> None:
        self.api = api
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = f"{SHORT_API[api]}-{index}"
        credentials = self.credentials = workdir / f"{name}-credentials.yml"
        endpoints_path = workdir / f"{SHORT_API[api]}-endpoints.yml"
        endpoints_path.write_text(yaml.safe_dump(endpoints))
        super().__init__(name, [
            RASA, "run", "--model", str(model), "--enable-api", "--credentials", str(credentials),
            "--endpoints", str(endpoints_path), "--interface", "127.0.0.1", "--port", str(self.port),
        ], workdir / f"rasa-{name}.log", env={**QUIET_ENV})

    def configure(self, channel: Dict[str, Any]) -> None:
        self.credentials.write_text(yaml.safe_dump({"connectors.servicenow.ServiceNowInput": channel}))

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        if not self.running:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode if self.process else None}; see {self.log_path}")
        try:
            async with http.get(f"{self.url}/webhooks/servicenow/", timeout=aiohttp.ClientTimeout(total=2)) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def start_and_wait(self, http: aiohttp.ClientSession, timeout: float = 240.0) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while not await self.ready(http):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not serve within {timeout:.0f} s; see {self.log_path}")
            await asyncio.sleep(0.2)  # wait-ok: polling readiness with a deadline


class Proxy(Process):
    def __init__(self, workdir: Path, api: str, upstreams: List[str]) -> None:
        self.url = ""
        command = [PYTHON, "-m", "soak.proxy", "--port", "0"]
        for upstream in upstreams:
            command += ["--upstream", upstream]
        super().__init__(f"proxy-{SHORT_API[api]}", command, workdir / f"proxy-{SHORT_API[api]}.log")

    def start_and_read_url(self) -> None:
        self.start(stdout=subprocess.PIPE)
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the proxy did not start: {line!r} (see {self.log_path})")
        self.url = line.strip().rsplit(" ", 1)[-1]


@dataclass
class Deployment:
    api: str
    replicas: List[Replica]
    proxy: Proxy
    redis_prefix: str
    tracker_db: Path

    @property
    def url(self) -> str:
        return self.proxy.url


@dataclass
class Options:
    """How the soak configures the channel and the emulator."""

    poll_interval: float = 1.0
    idle_poll_interval: float = 5.0
    session_check_interval: float = 10.0
    request_timeout: float = 5.0
    #: Extra attempts of a Virtual Agent push (ServiceNow documents none; a retry policy can be set on the alias).
    push_retries: int = 3
    push_retry_delay_ms: int = 1000
    #: Virtual Agent: lost pushes are read back from the emulator's records (the channel's default), this often: shorter
    #: than the default 60 s so that a pass comes within the run's quiet tail (20 s) and within most chats.
    reconcile_interval: float = 10.0
    extra_channel: Dict[str, Any] = field(default_factory=dict)


def channel_options(api: str, emulator_url: str, redis_url: str, prefix: str, callback_url: Optional[str],
                    options: Options) -> Dict[str, Any]:
    channel: Dict[str, Any] = {
        "instance_url": emulator_url,
        "api": api,
        "username": "rasa.integration",
        "password": "secret",
        "poll_interval": options.poll_interval,
        "idle_poll_interval": options.idle_poll_interval,
        "idle_after": 30,
        "session_check_interval": options.session_check_interval,
        "request_timeout": options.request_timeout,
        "redis_url": redis_url,
        "redis_prefix": prefix,
        # The deployment is sized for the soak's load. Every user comes from one address (the balancer's) and starts
        # a handoff every 15-60 s: the per-address stream cap and the start limits, made for anonymous traffic on the
        # internet, are lifted (their own tests are tests/unit/core/test_opening.py and the e2e stream cap tests).
        "max_streams_per_client": 100_000,
        "max_live_chats": 0,
        "handoff_starts_per_minute": 0,
        "deployment_handoff_starts_per_minute": 0,
        **options.extra_channel,
    }
    if callback_url:
        channel["callback_url"] = callback_url
    if api == "connect":
        channel["queue_id"] = DEFAULT_QUEUE_SYS_ID
    else:
        channel["webhook_secret"] = WEBHOOK_SECRET
        channel["report_delivery"] = True
        channel["reconcile"] = True
        channel["reconcile_interval"] = options.reconcile_interval
    return channel


class Cluster:
    def __init__(self, workdir: Path, model: Path, apis: List[str], replicas: int, seed: int,
                 callback_url: Optional[str], options: Options) -> None:
        self.workdir = workdir
        self.model = model
        self.apis = apis
        self.replica_count = replicas
        self.seed = seed
        self.callback_url = callback_url
        self.options = options
        self.redis = RedisServer(workdir)
        self.emulator: Optional[Emulator] = None
        self.deployments: Dict[str, Deployment] = {}

    def processes(self) -> List[Process]:
        found: List[Process] = [self.redis]
        if self.emulator:
            found.append(self.emulator)
        for deployment in self.deployments.values():
            found += [*deployment.replicas, deployment.proxy]
        return found

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.redis.start_and_wait()
        # Ports first: the emulator must know the Virtual Agent balancer before it starts, and the balancer its
        # replicas.
        plans: Dict[str, List[Replica]] = {}
        for number, api in enumerate(self.apis):
            prefix = f"soak{SHORT_API[api]}:"
            tracker_db = self.workdir / f"{SHORT_API[api]}-trackers.db"
            endpoints = {
                "tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(tracker_db)},
                # The connector's race-free lock store (docs/deployment.md); Rasa's loses tickets across replicas.
                "lock_store": {"type": LOCK_STORE, "url": "127.0.0.1", "port": self.redis.port, "db": 1 + number,
                               "key_prefix": SHORT_API[api]},
            }
            plans[api] = [
                Replica(self.workdir, self.model, api, index, endpoints) for index in range(self.replica_count)
            ]
            proxy = Proxy(self.workdir, api, [r.url for r in plans[api]])
            proxy.start_and_read_url()
            self.deployments[api] = Deployment(api, plans[api], proxy, prefix, tracker_db)
        config: Dict[str, Any] = {
            "request_log_limit": 2_000_000,
            "log_requests": False,
            "random_seed": self.seed,
            "va_callback_retries": self.options.push_retries,
            "va_callback_retry_delay_ms": self.options.push_retry_delay_ms,
        }
        if "virtual_agent" in self.deployments:
            config["va_callback_url"] = f"{self.deployments['virtual_agent'].url}/webhooks/servicenow/callback"
            config["va_callback_auth"] = {"X-Webhook-Secret": WEBHOOK_SECRET}
        self.emulator = Emulator(self.workdir, config)
        self.emulator.start_and_read_url()
        for api, deployment in self.deployments.items():
            channel = channel_options(api, self.emulator.url, self.redis.url, deployment.redis_prefix,
                                      self.callback_url, self.options)
            for replica in deployment.replicas:
                replica.configure(channel)
        # One at a time: on two busy cores, parallel starts only make each slower.
        for deployment in self.deployments.values():
            for replica in deployment.replicas:
                await replica.start_and_wait(http)

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.signal(signal.SIGTERM, wait=30)

    def cpu(self) -> Dict[str, float]:
        return {process.name: round(process.cpu(), 1) for process in self.processes()}


async def wait_until(condition: Any, timeout: float, what: str, process: Optional[Process] = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and not process.running:
            raise RuntimeError(f"{process.name} exited while waiting for {what}; see {process.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)  # wait-ok: polling a condition with a deadline
