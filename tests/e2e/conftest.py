from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tests.e2e.harness import CallbackReceiver, Emulator, RasaServer

# Fast enough for tests, slow enough to be realistic: polls every 0.2 s, a
# failing call is retried twice with short backoff.
FAST_CHANNEL = {
    "api": "connect",
    "username": "rasa.integration",
    "password": "secret",
    "poll_interval": 0.2,
    # Far from poll_interval, so a chat wrongly treated as idle shows up as slow delivery.
    "idle_poll_interval": 5.0,
    "session_check_interval": 1.0,
    "request_timeout": 2,
    "retry_attempts": 3,
    "retry_backoff": 0.05,
    "retry_max_backoff": 0.2,
}


def channel_options(emulator: Emulator, callback: CallbackReceiver, **overrides: Any) -> Dict[str, Any]:
    return {
        **FAST_CHANNEL,
        "instance_url": emulator.url,
        "queue_id": emulator.queue_id,
        "callback_url": callback.url,
        **overrides,
    }


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def emulator(e2e_dir) -> Iterator[Emulator]:
    running = Emulator(e2e_dir / "emulator.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def rasa(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    server = RasaServer(e2e_dir, demo_model, channel_options(emulator, callback)).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _show_rasa_log_on_failure(request):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "rasa" in request.fixturenames:
        print("---- rasa log (tail) ----")
        print(request.getfixturevalue("rasa").log_tail())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
