"""A real emulator and a real redis-server on loopback, and helpers to write
the files the doctor reads."""

import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
import redis
import yaml

from tests import children
from tests.e2e.harness import Emulator, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = "connectors.servicenow.ServiceNowInput"
PASSWORD = "secret"
OAUTH_SECRET = "rasa-connector-secret"
VA_WEBHOOK_SECRET = "a-long-webhook-secret-0123456789"
CALLBACK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Iterator[Emulator]:
    running = Emulator(tmp_path_factory.mktemp("doctor") / "emulator.log")
    yield running
    running.stop()


@pytest.fixture
def instance(emulator) -> Iterator[Emulator]:
    """The emulator, as it started, for one test."""
    emulator.control("reset")
    yield emulator
    emulator.control("reset")


class RedisServer:
    def __init__(self, workdir: Path, password: Optional[str] = None) -> None:
        self.port = free_port()
        self.password = password
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(workdir)]
        if password:
            command += ["--requirepass", password]
        self.process = children.register(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis(port=self.port, password=password, socket_timeout=1)
        wait_for(lambda: self._answers(client), timeout=10, what="redis-server to answer")

    def _answers(self, client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def url(self, password: Optional[str] = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"), password="redis-pass-123")
    yield server
    server.stop()


def connect_options(emulator: Emulator, **overrides: Any) -> Dict[str, Any]:
    options = {
        "instance_url": emulator.url,
        "api": "connect",
        "username": "rasa.integration",
        "password": PASSWORD,
        "queue_id": emulator.queue_id,
        "callback_url": "http://127.0.0.1:9/callback",
        "callback_secret": CALLBACK_SECRET,
    }
    options.update(overrides)
    return {key: value for key, value in options.items() if value is not None}


def va_options(emulator: Emulator, **overrides: Any) -> Dict[str, Any]:
    options = {
        "instance_url": emulator.url,
        "api": "virtual_agent",
        "client_id": "rasa-connector",
        "client_secret": OAUTH_SECRET,
        "webhook_secret": VA_WEBHOOK_SECRET,
    }
    options.update(overrides)
    return {key: value for key, value in options.items() if value is not None}


def write_credentials(directory: Path, options: Dict[str, Any], name: str = "credentials.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"rest": None, CHANNEL: options}))
    return path


def demo_domain() -> Dict[str, Any]:
    """The demo's domain; on Rasa Pro without its `language` slot, which Rasa
    Pro declares itself and refuses in a domain."""
    from connectors.servicenow.rasa_glue.versions import BUILTIN_LANGUAGE_SLOT

    domain = yaml.safe_load((ROOT / "domain.yml").read_text())
    if BUILTIN_LANGUAGE_SLOT:
        domain["slots"].pop(BUILTIN_LANGUAGE_SLOT)
    return domain


def write_domain(directory: Path, domain: Dict[str, Any]) -> Path:
    path = directory / "domain.yml"
    path.write_text(yaml.safe_dump(domain))
    return path


@pytest.fixture(autouse=True)
def _licence_present_as_in_a_rasa_pro_deployment(monkeypatch, request):
    """The doctor only looks whether RASA_LICENSE is set (never at the key):
    a Rasa Pro deployment has one, so the good setups here do too."""
    if "no_licence" not in request.keywords:
        monkeypatch.setenv("RASA_LICENSE", "present-in-the-deployment")
