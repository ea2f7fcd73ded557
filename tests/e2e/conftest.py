"""One ``rasa run`` per ServiceNow backend, one emulator, one callback
receiver; the shared behaviour tests run once per backend."""

import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from connectors.servicenow.texts import UserTexts
from tests.e2e.harness import CallbackReceiver, Emulator, RasaServer, wait_for

BACKENDS = ("connect", "virtual_agent")
WEBHOOK_SECRET = "e2e-callback-secret"
#: Signs the channel's POSTs to the callback receiver, which verifies each (docs/http-api.md#signed-callbacks).
CALLBACK_SECRET = "whsec_ZTJlLWNhbGxiYWNrLXNpZ25pbmcta2V5LTAxMjM0NTY3"
TEXTS = UserTexts()

# Fast enough for tests, slow enough to be realistic: polls every 0.2 s, a
# failing call is retried twice with short backoff.
FAST_CHANNEL = {
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
    "chat_page": True,
    # The tests' file server and the emulator's files are on loopback: allowed by name, as `make run` does.
    "attachment_hosts": ["127.0.0.1"],
    "callback_secret": CALLBACK_SECRET,
    # The shared servers start hundreds of chats over a session, and many
    # tests leave theirs open: room for all of them. The defaults (100 live,
    # 60 starts a minute) are proven in test_guard.py.
    "max_live_chats": 2000,
    "deployment_handoff_starts_per_minute": 6000,
    "deployment_handoff_start_burst": 1000,
}


def channel_options(emulator: Emulator, callback: CallbackReceiver, backend: str, **overrides: Any) -> Dict[str, Any]:
    options = {**FAST_CHANNEL, "api": backend, "instance_url": emulator.url, "callback_url": callback.url}
    if backend == "connect":
        options["queue_id"] = emulator.queue_id
    else:
        options["webhook_secret"] = WEBHOOK_SECRET
        options["report_delivery"] = True
    options.update(overrides)
    return options


def point_emulator_at(emulator: Emulator, server: RasaServer, **va_options: Any) -> None:
    """Where the emulator sends Virtual Agent callbacks, and how."""
    options = {"va_callback_retries": 2, "va_callback_retry_delay_ms": 300, **va_options}
    emulator.configure(
        va_callback_url=f"{server.url}/webhooks/servicenow/callback",
        va_callback_auth={"X-Webhook-Secret": WEBHOOK_SECRET},
        **options,
    )


class Handoff:
    """Backend-agnostic steps and checks of a handoff, for the shared tests."""

    def __init__(self, backend: str, rasa: RasaServer, emulator: Emulator, callback: CallbackReceiver) -> None:
        self.backend = backend
        self.rasa = rasa
        self.emulator = emulator
        self.callback = callback

    def start(self, sender: str, request: str = "talk to live agent") -> str:
        replies = self.rasa.say(sender, request)
        assert [reply["text"] for reply in replies] == [TEXTS.connecting]
        slots = self.rasa.slots(sender)
        assert slots["handoff_active"] is True
        return slots["live_chat_id"]

    def start_live(self, sender: str) -> str:
        """Start a handoff and have the agent accept it; returns the chat id."""
        chat = self.start(sender)
        self.emulator.accept(chat)
        self.callback.wait_for_text(sender, lambda text: text.startswith("Thank you for contacting support"))
        return chat

    def user_messages(self, sender: str, chat: str) -> List[str]:
        """What the agent received from the user, in order."""
        requester = self.requester(sender)
        return [m["message"] for m in self.emulator.transcript(chat) if m["created_by"] == requester]

    def requester(self, sender: str) -> str:
        return "rasa.integration" if self.backend == "connect" else sender

    def left_by_user(self, chat: str) -> bool:
        if self.backend == "connect":
            return bool(self.emulator.requests_for(chat, "POST", "/leave"))
        return any(event.get("action") == "END_CONVERSATION" for event in self.emulator.get(f"transcript/{chat}")["events"])

    def sending(self, text: str) -> Dict[str, Any]:
        """A fault match for the connector's send of the user's ``text`` and nothing else.

        Matching on the method alone would also catch a delivery report
        (``report_delivery``) of an earlier agent message, which may still be
        on its way when a test sets its faults."""
        if self.backend == "connect":
            return {"method": "POST", "path_regex": "/messages$", "body_regex": re.escape(text)}
        return {"method": "POST", "body_regex": re.escape(text)}

    def fail_inbound(self, chat: str, status: int = 503, times: int = 100, **match: Any) -> None:
        """Make the connector's calls for this chat fail (Connect: ``path_regex`` picks which)."""
        api = "connect" if self.backend == "connect" else "va"
        rule_match = {"api": api, "session": chat, **match}
        self.emulator.fault(match=rule_match, respond={"status": status}, times=times)

    def wait_until_over(self, sender: str) -> None:
        wait_for(lambda: self.rasa.slots(sender)["handoff_active"] is False, what="the handoff to end")

    def assert_slots_cleared(self, sender: str) -> None:
        slots = self.rasa.slots(sender)
        assert slots["handoff_active"] is False
        assert slots["live_chat_id"] is None

    def assert_back_with_the_bot(self, sender: str) -> None:
        replies = self.rasa.say(sender, "hi")
        assert replies and replies[0]["text"].startswith("Hello! I'm the virtual assistant")


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def emulator(e2e_dir) -> Iterator[Emulator]:
    running = Emulator(e2e_dir / "emulator.log")
    running.configure(request_log_limit=100_000)  # tests look back through the whole run
    yield running
    running.stop()


@pytest.fixture(scope="session")
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver(secret=CALLBACK_SECRET)
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def rasa(e2e_dir, demo_model, emulator, callback, backend) -> Iterator[RasaServer]:
    server = RasaServer(e2e_dir, demo_model, channel_options(emulator, callback, backend), name=f"rasa-{backend}")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def handoff(backend, rasa, emulator, callback) -> Handoff:
    if backend == "virtual_agent":
        point_emulator_at(emulator, rasa)
    return Handoff(backend, rasa, emulator, callback)


# Far below the 60 s late-commit window of Connect, far above the time a
# control request takes on a loaded machine.
CLOCK_SLACK_MS = 10_000


@pytest.fixture(autouse=True)
def _emulator_clock_left_in_real_time(request):
    """The emulator is shared by every test and Connect's cursor is a
    timestamp, so a clock left frozen or shifted by one test breaks the chats
    of another (a clock that jumps back hides its messages as old). Put it
    back and fail the test that left it."""
    yield
    if "emulator" not in request.fixturenames:
        return
    emulator = request.getfixturevalue("emulator")
    clock = emulator.get("clock")
    if clock["frozen"] or abs(clock["now_ms"] - time.time() * 1000) > CLOCK_SLACK_MS:
        emulator.control("clock", {"now_ms": None})
        pytest.fail("the test left the shared emulator's clock frozen or shifted; put it back to real time")


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
