"""The README's main command, ``make run`` (``scripts/run.sh``), as a newcomer
runs it: the emulator and Rasa started by the script on the ports it is
given, a conversation through what the script printed, and one Ctrl-C.

* ``make run`` in a terminal (a pseudo-terminal that is the command's
  controlling terminal; Ctrl-C is the byte the terminal turns into SIGINT for
  its foreground process group), webhook flavour on the Virtual Agent API and
  socket.io flavour on Connect: a handoff with the user's stream or socket
  open, then one Ctrl-C. ``make`` must exit 0 without an error line, and
  leave no process and no listening port behind.
* ``scripts/run.sh`` without a terminal (a process manager, CI) on Connect,
  stopped by SIGINT to its process group: the same clean stop.
* Rasa's HTTP API answers only with the printed token, and its CORS answer
  names only the pages the script serves.

The socket.io flavour needs the rasa-webchat widget from the npm registry (or
``build/``), and skips with a reason without it, unless
``REQUIRE_BROWSER_TEST=1`` (``.ci/run``).
"""

import asyncio
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
import requests

from scripts.rasa_webchat import FetchError, fetch
from tests import children
from tests.e2e.conftest import TEXTS
from tests.e2e.harness import CallbackReceiver, free_port, wait_for
from tests.e2e.socketio_client import SocketUser

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parents[1]
BOT_GREETING = "Hello! I'm the virtual assistant"
AGENT_GREETING = "Thank you for contacting support"
#: Loading the model with a cold disk cache on a busy 2-core CI machine.
START_TIMEOUT_S = 180.0
#: Rasa's graceful shutdown, then the page and the emulator (about 1 s here).
STOP_TIMEOUT_S = 60.0
#: What a clean stop never prints.
UNCLEAN = re.compile(r"Traceback|Task was destroyed|make: \*\*\*|Error \d|Terminated|Killed|did not stop")
TOKEN = "run-script-test-token-" + uuid.uuid4().hex


class RunScript:
    """``make run`` (in a terminal) or ``scripts/run.sh`` (without one), in a
    session of its own, on free ports."""

    def __init__(self, workdir: Path, model: Path, env: Dict[str, str], terminal: bool, target: str = "run") -> None:
        self.terminal = terminal
        self.rasa_port, self.emulator_port = free_port(), free_port()
        self.page_port: Optional[int] = free_port() if env.get("SERVICENOW_FRONTEND") == "socketio" else None
        self.replica_b_port: Optional[int] = free_port() if target == "run-replicas" else None
        self.redis_port: Optional[int] = free_port() if target == "run-replicas" else None
        self.rasa_url = f"http://127.0.0.1:{self.rasa_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.log_path = workdir / f"{target}-{uuid.uuid4().hex[:6]}.log"
        self.log_dir = workdir / "logs"
        self.token_file = workdir / "rasa-token"
        self.env = {
            **os.environ,
            "RASA_PORT": str(self.rasa_port),
            "RASA_PORT_A": str(self.rasa_port),
            "EMULATOR_PORT": str(self.emulator_port),
            "LOG_DIR": str(self.log_dir),
            "RASA_TOKEN_FILE": str(self.token_file),
            "RASA_AUTH_TOKEN": TOKEN,
            **({"WEBCHAT_PORT": str(self.page_port)} if self.page_port else {}),
            **({"RASA_PORT_B": str(self.replica_b_port), "REDIS_PORT": str(self.redis_port)}
               if self.replica_b_port else {}),
            **env,
        }
        if terminal:
            # The Makefile's variables point at this test's environment and model, which exist already.
            stamp = VENV / ".installed"
            self.argv = ["make", "--no-print-directory", "-o", str(stamp), "-o", str(model), target,
                         f"VENV={VENV}", f"MODEL={model}"]
        else:
            self.env.update(VENV=str(VENV), MODEL=str(model))
            self.argv = ["bash", f"scripts/{target}.sh"]
        self.process: "subprocess.Popen[bytes]"
        self._master: Optional[int] = None
        self._output = bytearray()
        self._reader: Optional[threading.Thread] = None

    @property
    def ports(self) -> List[int]:
        return [port for port in (self.rasa_port, self.emulator_port, self.page_port, self.replica_b_port,
                                  self.redis_port) if port]

    def start(self) -> "RunScript":
        if self.terminal:
            master, slave = os.openpty()
            self.process = children.register(subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=_take_controlling_terminal,
            ))
            os.close(slave)
            self._master = master
            self._reader = threading.Thread(target=self._read_terminal, daemon=True)
            self._reader.start()
        else:
            with open(self.log_path, "wb") as log:
                self.process = children.register(subprocess.Popen(
                    self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                ))
        try:
            # The script prints "Ready" once Rasa (and the widget's page) answer.
            wait_for(self._ready, START_TIMEOUT_S, interval=0.25, what="make run to say it is ready")
        except BaseException:
            self.kill()
            raise
        return self

    def _read_terminal(self) -> None:
        assert self._master is not None
        with open(self.log_path, "wb") as log:
            while True:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: every process holding the terminal is gone
                    return
                if not chunk:
                    return
                self._output += chunk
                log.write(chunk)
                log.flush()

    def output(self) -> str:
        if self.terminal:
            return self._output.decode(errors="replace")
        return self.log_path.read_text(errors="replace")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.argv} exited with {self.process.returncode}:\n{self.tail()}")
        return "Ready:" in self.output()

    def ctrl_c(self) -> None:
        """What one Ctrl-C does: in a terminal, the interrupt character; without
        one, SIGINT to the process group, as a shell's job control sends it."""
        if self.terminal:
            assert self._master is not None
            os.write(self._master, b"\x03")
        else:
            os.killpg(self.process.pid, signal.SIGINT)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)

    def session_processes(self) -> List[str]:
        """Every process still in the command's session (its own processes, all in one session)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            state, session = fields[0], int(fields[3])
            if session == self.process.pid and int(entry.name) != self.process.pid:
                found.append(f"{entry.name} [{state}] {cmdline}")
        return found

    def kill(self) -> None:
        """After a failure: nothing of this run may outlive the test."""
        for line in self.session_processes():
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    # -- talking to what it started ---------------------------------------------------------------------------------

    def say(self, sender: str, message: str) -> List[str]:
        response = requests.post(
            f"{self.rasa_url}/webhooks/servicenow/webhook", json={"sender": sender, "message": message}, timeout=60
        )
        assert response.status_code == 200, response.text
        return [reply.get("text") or "" for reply in response.json()]

    def slots(self, sender: str) -> Dict[str, object]:
        response = requests.get(f"{self.rasa_url}/conversations/{sender}/tracker", params={"token": TOKEN}, timeout=30)
        response.raise_for_status()
        return response.json()["slots"]

    def agent(self, action: str, **body: object) -> None:
        requests.post(f"{self.emulator_url}/__emu/agent/{action}", json=body, timeout=10).raise_for_status()


def _take_controlling_terminal() -> None:
    # In the child, after setsid: its stdin (the pty) becomes its controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def assert_stopped_cleanly(run: RunScript, status: int) -> None:
    output = run.output()
    assert status == 0, f"exit status {status} after one Ctrl-C:\n{run.tail()}"
    assert "Stopping..." in output, run.tail()
    assert not UNCLEAN.search(output), f"{UNCLEAN.search(output).group(0)!r} in:\n{run.tail()}"
    assert run.session_processes() == [], "processes left after the stop"
    assert [port for port in run.ports if _listening(port)] == [], "ports still taken after the stop"


def assert_rasa_api_needs_the_token_and_lets_no_other_origin_in(run: RunScript, sender: str) -> None:
    """The review's finding: with ``--cors *`` and no token, any web page in the
    user's browser could read every tracker. Now the token is required and no
    origin is allowed (the chat page is Rasa's own origin)."""
    tracker = f"{run.rasa_url}/conversations/{sender}/tracker"
    assert requests.get(tracker, timeout=10).status_code == 401
    assert requests.get(tracker, params={"token": "wrong"}, timeout=10).status_code == 401
    assert requests.get(tracker, params={"token": TOKEN}, timeout=10).status_code == 200
    other = requests.get(tracker, params={"token": TOKEN}, headers={"Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers
    # The chat page's headers: a policy, and no framing.
    page = requests.get(f"{run.rasa_url}/webhooks/servicenow/chat", timeout=10)
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


@pytest.fixture
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def runs() -> Iterator[List[RunScript]]:
    started: List[RunScript] = []
    yield started
    for run in started:
        run.kill()


# -- the webhook flavour --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api, terminal", [("connect", False), ("virtual_agent", True)],
                         ids=["connect-run.sh-without-terminal", "virtual_agent-make-run-in-terminal"])
def test_make_run_serves_a_handoff_and_stops_on_one_ctrl_c(api, terminal, demo_model, tmp_path, callback, runs):
    run = RunScript(tmp_path, demo_model, {"SERVICENOW_API": api, "SERVICENOW_CALLBACK_URL": callback.url}, terminal)
    runs.append(run.start())
    output = run.output()
    assert f"http://127.0.0.1:{run.rasa_port}/webhooks/servicenow/chat" in output, "the script prints the chat page"
    assert f"export RASA_TOKEN={TOKEN}" in output, "the script prints how to call Rasa's API"
    assert run.token_file.read_text().strip() == TOKEN
    assert (run.token_file.stat().st_mode & 0o777) == 0o600

    sender = f"run-{api}-{uuid.uuid4().hex[:8]}"
    assert any(text.startswith(BOT_GREETING) for text in run.say(sender, "hi")), run.tail()
    assert_rasa_api_needs_the_token_and_lets_no_other_origin_in(run, sender)
    assert TEXTS.connecting in run.say(sender, "talk to live agent")
    chat = wait_for(lambda: run.slots(sender).get("live_chat_id"), 30, what="the live chat id")
    # The user's page keeps its stream open through the stop.
    stream = requests.get(f"{run.rasa_url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True,
                          timeout=(5, STOP_TIMEOUT_S))
    assert stream.status_code == 200
    run.agent("accept", session=chat)
    run.agent("message", session=chat, text="Beth here, started by make run.")
    callback.wait_for_text(sender, lambda text: text == "Beth here, started by make run.", timeout=30)
    handoff_lines = [line for line in run.output().splitlines() if "connectors.servicenow" in line]
    assert any("Handoff started" in line for line in handoff_lines), run.tail()
    assert any("Agent joined" in line for line in handoff_lines), run.tail()

    run.ctrl_c()
    status = run.wait()
    stream.close()
    assert_stopped_cleanly(run, status)
    # What the terminal showed: the script's lines and the channel's; Rasa's start-up chatter is not there.
    assert "Rasa server is up and running" not in run.output()
    assert "Starting Rasa server" not in run.output()
    # The emulator's every request is in its log, kept after the stop.
    assert "/api/" in (run.log_dir / "emulator.log").read_text()


# -- the socket.io flavour -----------------------------------------------------------------------------------------


def _widget_or_skip() -> None:
    try:
        fetch()
    except FetchError as error:
        reason = f"SERVICENOW_FRONTEND=socketio needs the rasa-webchat widget from the npm registry: {error}"
        if os.environ.get("REQUIRE_BROWSER_TEST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def test_make_run_socketio_serves_the_widget_page_and_stops_on_one_ctrl_c(demo_model, tmp_path, runs):
    _widget_or_skip()
    run = RunScript(tmp_path, demo_model, {"SERVICENOW_FRONTEND": "socketio", "SERVICENOW_API": "connect"},
                    terminal=True)
    runs.append(run.start())
    page_origin = f"http://127.0.0.1:{run.page_port}"
    page = requests.get(f"{page_origin}/", timeout=10)
    assert page.status_code == 200 and run.rasa_url in page.text, page.text[:500]
    assert b"fonts.googleapis.com" not in requests.get(f"{page_origin}/rasa-webchat.js", timeout=10).content

    # The page is another origin, and the widget starts with long-polling:
    # a browser reads the handshake only if Rasa's CORS answer allows the page.
    handshake = f"{run.rasa_url}/socket.io/?EIO=4&transport=polling"
    allowed = requests.get(handshake, headers={"Origin": page_origin}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers.get("Access-Control-Allow-Origin") == page_origin
    other = requests.get(handshake, headers={"Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers

    asyncio.run(_a_socket_session_then_ctrl_c(run))
    assert_stopped_cleanly(run, run.wait())


async def _a_socket_session_then_ctrl_c(run: RunScript) -> None:
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
        # Stopped with the user's socket connected and the chat being polled.
        run.ctrl_c()
        await asyncio.to_thread(run.wait)
    finally:
        await user.disconnect()


# -- two replicas ---------------------------------------------------------------------------------------------------


def test_make_run_replicas_says_when_both_are_ready_keeps_its_logs_and_stops_on_one_ctrl_c(demo_model, tmp_path, runs):
    if shutil.which("redis-server") is None:
        reason = "make run-replicas needs redis-server (Debian: apt-get install redis-server)"
        if os.environ.get("REQUIRE_REDIS_TEST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    run = RunScript(tmp_path, demo_model, {}, terminal=True, target="run-replicas")
    runs.append(run.start())
    output = run.output()
    assert "Ready: both replicas" in output and "Virtual Agent API" in output, run.tail()
    # The same conversation on both replicas: one link each, with the same ?sender=.
    links = re.findall(r"(http://127\.0\.0\.1:(\d+)/webhooks/servicenow/chat\?sender=([\w-]+))", output)
    assert {int(port) for _, port, _ in links} == {run.rasa_port, run.replica_b_port}, output
    sender = links[0][2]
    assert {found for _, _, found in links} == {sender}

    replica_b = f"http://127.0.0.1:{run.replica_b_port}"
    seen: List[str] = []
    reader = threading.Thread(target=_read_stream, args=(replica_b, sender, seen), daemon=True)
    reader.start()
    run.say(sender, "hi")
    assert TEXTS.connecting in run.say(sender, "talk to live agent")  # on replica A
    chat = wait_for(lambda: run.slots(sender).get("live_chat_id"), 30, what="the live chat id")
    run.agent("accept", session=chat)
    run.agent("message", session=chat, text="Beth, answering on replica B's stream.")
    wait_for(lambda: any("Beth, answering on replica B" in line for line in seen), 30, what="the agent's message on B")
    wait_for(lambda: "Handoff started" in run.output(), 10, what="the handoff's progress in the terminal")

    run.ctrl_c()
    assert_stopped_cleanly(run, run.wait())
    # The logs are kept after the stop.
    kept = {path.name: path.stat().st_size for path in run.log_dir.iterdir()}
    assert {f"rasa-{run.rasa_port}.log", f"rasa-{run.replica_b_port}.log", "emulator.log", "redis.log"} <= set(kept)
    assert all(kept.values()), kept


def _read_stream(url: str, sender: str, seen: List[str]) -> None:
    try:
        with requests.get(f"{url}/webhooks/servicenow/stream", params={"sender": sender}, stream=True,
                          timeout=(5, 120)) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                seen.append(line)
    except requests.RequestException:
        pass  # the replica stopped


# -- make model ----------------------------------------------------------------------------------------------------


def test_make_model_prints_what_it_does_and_where_the_model_is_and_nothing_else(tmp_path):
    """Training printed about 27 lines: TensorFlow and pkg_resources deprecation
    notices and one progress bar per trained component."""
    model = tmp_path / "models" / "demo.tar.gz"
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", str(VENV / ".installed"), "-B", "model", f"VENV={VENV}", f"MODEL={model}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert model.is_file()
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert lines[0] == f"Training the demo model into {model} (about a minute)"
    assert "Your Rasa model is trained and saved at" in lines[1]
