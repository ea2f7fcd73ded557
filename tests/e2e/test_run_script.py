"""The README's main command, ``make run`` (``scripts/run.sh``), as a newcomer
runs it: the emulator and Rasa started by the script on the ports it is
given, then a conversation through what the script printed.

* the webhook flavour (the default) on both APIs: a bot turn, a handoff, the
  agent's reply at the frontend's callback URL, ``/end_chat``, the bot again;
* ``SERVICENOW_FRONTEND=socketio``: the stock rasa-webchat page on its own
  origin, Rasa's CORS answer letting that page in, and a socket.io session that
  reaches the bot and starts a handoff. It needs the widget from the npm
  registry (or ``build/``), and skips with a reason without it, unless
  ``REQUIRE_BROWSER_TEST=1`` (``.ci/run``).
"""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import requests

from scripts.rasa_webchat import FetchError, fetch
from tests.e2e.conftest import BACKENDS, TEXTS
from tests.e2e.harness import CallbackReceiver, free_port, wait_for
from tests.e2e.socketio_client import SocketUser

ROOT = Path(__file__).resolve().parents[2]
BOT_GREETING = "Hello! I'm the virtual assistant"
AGENT_GREETING = "Thank you for contacting support"
#: Loading the model with a cold disk cache on a busy 2-core CI machine.
START_TIMEOUT_S = 180.0


class RunScript:
    """``scripts/run.sh`` in its own process group, stopped as Ctrl-C would."""

    def __init__(self, workdir: Path, model: Path, env: Dict[str, str]) -> None:
        self.rasa_port, self.emulator_port = free_port(), free_port()
        self.rasa_url = f"http://127.0.0.1:{self.rasa_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.log_path = workdir / f"run-{uuid.uuid4().hex[:6]}.log"
        self.env = {
            **os.environ,
            "VENV": str(Path(sys.executable).parents[1]),
            "MODEL": str(model),
            "RASA_PORT": str(self.rasa_port),
            "EMULATOR_PORT": str(self.emulator_port),
            **env,
        }
        self.process: "subprocess.Popen[bytes]"

    def start(self, health_route: str) -> "RunScript":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "scripts/run.sh"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"scripts/run.sh exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return requests.get(f"{self.rasa_url}{health_route}", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        try:
            wait_for(serving, START_TIMEOUT_S, interval=0.25, what="make run to serve")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def say(self, sender: str, message: str) -> List[str]:
        response = requests.post(
            f"{self.rasa_url}/webhooks/servicenow/webhook", json={"sender": sender, "message": message}, timeout=60
        )
        assert response.status_code == 200, response.text
        return [reply.get("text") or "" for reply in response.json()]

    def slots(self, sender: str) -> Dict[str, object]:
        response = requests.get(f"{self.rasa_url}/conversations/{sender}/tracker", timeout=30)
        response.raise_for_status()
        return response.json()["slots"]

    def agent(self, action: str, **body: object) -> None:
        requests.post(f"{self.emulator_url}/__emu/agent/{action}", json=body, timeout=10).raise_for_status()


@pytest.fixture
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.stop()


@pytest.mark.parametrize("api", BACKENDS)
def test_make_run_serves_the_demo_bot_and_a_handoff_against_the_emulator(api, demo_model, tmp_path, callback):
    run = RunScript(tmp_path, demo_model, {"SERVICENOW_API": api, "SERVICENOW_CALLBACK_URL": callback.url})
    run.start("/webhooks/servicenow/")
    try:
        sender = f"run-{api}-{uuid.uuid4().hex[:8]}"
        assert any(text.startswith(BOT_GREETING) for text in run.say(sender, "hi")), run.log_tail()
        assert TEXTS.connecting in run.say(sender, "talk to live agent")
        chat = wait_for(lambda: run.slots(sender).get("live_chat_id"), 30, what="the live chat id")

        run.agent("accept", session=chat)
        run.agent("message", session=chat, text="Beth here, started by make run.")
        callback.wait_for_text(sender, lambda text: text == "Beth here, started by make run.", timeout=30)

        run.say(sender, "/end_chat")
        wait_for(lambda: run.slots(sender).get("handoff_active") is False, 30, what="the handoff to end")
        assert any(text.startswith(BOT_GREETING) for text in run.say(sender, "hi"))
    finally:
        run.stop()
    assert run.process.returncode is not None
    output = run.log_path.read_text(errors="replace")
    assert "/webhooks/servicenow/chat" in output, "the script prints where the chat page is"
    assert "Traceback" not in output, run.log_tail()


def _widget_or_skip() -> None:
    try:
        fetch()
    except FetchError as error:
        reason = f"SERVICENOW_FRONTEND=socketio needs the rasa-webchat widget from the npm registry: {error}"
        if os.environ.get("REQUIRE_BROWSER_TEST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def test_make_run_socketio_serves_the_widget_page_and_a_socket_that_reaches_the_bot(demo_model, tmp_path):
    _widget_or_skip()
    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    run = RunScript(tmp_path, demo_model, {"SERVICENOW_FRONTEND": "socketio", "WEBCHAT_PORT": str(page_port)})
    run.start("/webhooks/servicenow_socketio/")
    try:
        page = wait_for(lambda: _get_or_none(f"{page_origin}/"), 30, what="the widget page")
        assert page.status_code == 200 and run.rasa_url in page.text, page.text[:500]

        # The page is another origin, and the widget starts with long-polling:
        # a browser reads the handshake only if Rasa's CORS answer allows the page.
        handshake = requests.get(
            f"{run.rasa_url}/socket.io/?EIO=4&transport=polling", headers={"Origin": page_origin}, timeout=10
        )
        assert handshake.status_code == 200
        assert handshake.headers.get("Access-Control-Allow-Origin") in (page_origin, "*")

        asyncio.run(_a_socket_session(run))
    finally:
        run.stop()
    assert "Traceback" not in run.log_path.read_text(errors="replace"), run.log_tail()


async def _a_socket_session(run: RunScript) -> None:
    user = SocketUser(run.rasa_url)
    await user.connect()
    try:
        session = await user.start_session()
        await user.say("hi")
        await user.wait_for_text(lambda text: text.startswith(BOT_GREETING), timeout=30)
        await user.say("talk to live agent")
        await user.wait_for_text(lambda text: text == TEXTS.connecting, timeout=30)
        chat = await asyncio.to_thread(wait_for, lambda: run.slots(session).get("live_chat_id"), 30, 0.1, "the chat")
        run.agent("accept", session=chat)
        await user.wait_for_text(lambda text: text.startswith(AGENT_GREETING), timeout=30)
    finally:
        await user.disconnect()


def _get_or_none(url: str) -> "requests.Response | None":
    try:
        return requests.get(url, timeout=2)
    except (requests.ConnectionError, requests.Timeout):
        return None
