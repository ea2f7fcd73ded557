"""Real processes on loopback for the end-to-end tests: the ServiceNow
emulator, ``rasa run`` with the channel, and a callback receiver standing in
for the user's frontend. Waiting is always on a condition with a deadline."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import requests
import yaml

from tests import children
from tests.ports import free_port  # noqa: F401 (the tests import it from here)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RASA = str(Path(PYTHON).with_name("rasa"))
QUIET_ENV = {
    "RASA_TELEMETRY_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
}


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # wait-ok: polling interval of a condition with a deadline


def close_stream(response: requests.Response) -> None:
    """Close a streamed response at once, as a browser closes an EventSource.

    Shut the socket first: a plain close waits for a thread reading the
    stream, which sits in recv() until the server's next heartbeat (15 s)."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
    response.close()


class Emulator:
    """The bundled ServiceNow emulator as its own process, driven over HTTP."""

    def __init__(self, log_path: Path) -> None:
        self._log = open(log_path, "w")
        # The control plane's token (docs/emulator.md): the harness sends it, as a browser page must.
        self.token = uuid.uuid4().hex
        self.process = children.register(subprocess.Popen(
            [PYTHON, "-m", "connectors.servicenow.emulator", "--port", "0", "--quiet"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, "EMULATOR_CONTROL_TOKEN": self.token},
        ))
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the emulator did not start: {line!r} (see {log_path})")
        self.url = line.strip().rsplit(" ", 1)[-1]
        self.console_url = f"{self.url}/__emu/console#token={self.token}"
        self._headers = {"X-Emulator-Token": self.token}
        from connectors.servicenow.emulator import DEFAULT_QUEUE_SYS_ID

        self.queue_id = DEFAULT_QUEUE_SYS_ID

    def control(self, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        response = requests.post(f"{self.url}/__emu/{path}", json=body or {}, headers=self._headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}/__emu/{path}", headers=self._headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def accept(self, group: str) -> Any:
        return self.control("agent/accept", {"session": group})

    def say(self, group: str, text: str, **options: Any) -> Any:
        return self.control("agent/message", {"session": group, "text": text, **options})

    def close(self, group: str, **options: Any) -> Any:
        return self.control("agent/close", {"session": group, **options})

    def fault(self, **rule: Any) -> None:
        self.control("faults", rule)

    def transcript(self, group: str) -> List[Dict[str, Any]]:
        return self.get(f"transcript/{group}")["messages"]

    def session(self, group: str) -> Dict[str, Any]:
        return self.get(f"transcript/{group}")["session"]

    def configure(self, **options: Any) -> Dict[str, Any]:
        return self.control("config", options)

    def requests_for(self, group: str, method: str, suffix: str) -> List[Dict[str, Any]]:
        return [
            entry for entry in self.get("requests")["requests"]
            if entry["method"] == method and group in entry["path"] and entry["path"].endswith(suffix)
        ]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


def docs_snippet(marker: str, page: str = "docs/http-api.md") -> str:
    """The code block that follows ``<!-- marker -->`` in a docs page: the
    tests run what the docs show."""
    text = (ROOT / page).read_text()
    after = text[text.index(f"<!-- {marker} -->"):]
    start = after.index("\n", after.index("```")) + 1
    return after[start:after.index("```", start)]


def _verify_callback() -> Callable[[str, Any, bytes], bool]:
    namespace: Dict[str, Any] = {}
    exec(docs_snippet("verify-callback-python"), namespace)  # noqa: S102 - the docs' own example
    return namespace["verify_callback"]


#: docs/http-api.md's example receiver check, as a frontend would copy it.
verify_callback = _verify_callback()


class CallbackReceiver:
    """Stands in for a frontend's callback URL and records every POST. With
    ``secret`` it verifies each POST as docs/http-api.md shows: a POST that
    does not verify is refused with 401 and kept in ``refused``. Bodies are
    recorded as they come (repeats included: the tests judge the channel, a
    frontend would drop a ``webhook-id`` it took before)."""

    def __init__(self, secret: Optional[str] = None) -> None:
        self.secret = secret
        #: The delivery id of every verified POST, in order.
        self.deliveries: List[str] = []
        #: Headers of the POSTs refused for a missing or wrong signature.
        self.refused: List[Dict[str, str]] = []
        #: Headers and exact body of every verified POST.
        self.verified: List[Any] = []
        self.received: List[Dict[str, Any]] = []
        #: Recipients whose items the "frontend" refuses with a 500.
        self.refuse: set = set()
        #: While cleared, the "frontend" keeps every request waiting before it answers (a slow frontend).
        self.answering = threading.Event()
        self.answering.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if receiver.secret is not None and not receiver.taken(self.headers, raw):
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.loads(raw or b"null")
                receiver.answering.wait(timeout=30)
                refused = isinstance(body, dict) and body.get("recipient_id") in receiver.refuse
                if not refused:
                    with receiver._lock:
                        receiver.received.append(body)
                self.send_response(500 if refused else 200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/callback"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def taken(self, headers: Any, raw: bytes) -> bool:
        """Verify a POST; False (refuse it) when it does not verify."""
        assert self.secret is not None
        if not verify_callback(self.secret, headers, raw):
            with self._lock:
                self.refused.append(dict(headers))
            return False
        with self._lock:
            self.deliveries.append(headers["webhook-id"])
            self.verified.append((dict(headers), raw))
        return True

    def for_user(self, sender: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [item for item in self.received if item.get("recipient_id") == sender]

    def texts(self, sender: str) -> List[str]:
        return [item["text"] for item in self.for_user(sender) if "text" in item]

    def agent_texts(self, sender: str) -> List[str]:
        """What the agent typed, without notices from ServiceNow or the channel."""
        return [
            item["text"] for item in self.for_user(sender)
            if "text" in item and (item.get("metadata") or {}).get("source") == "agent"
        ]

    def events(self, sender: str) -> List[Dict[str, Any]]:
        """Items that are not messages, e.g. typing."""
        return [item for item in self.for_user(sender) if "text" not in item]

    def wait_for_text(self, sender: str, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        def found() -> Optional[str]:
            return next((text for text in self.texts(sender) if predicate(text)), None)

        return wait_for(found, timeout, what=f"a callback message for {sender}")

    def stop(self) -> None:
        self._server.shutdown()


class RasaServer:
    """``rasa run --enable-api`` with the channel, as a user would start it."""

    #: More ``rasa run`` arguments, e.g. ``["--cors", origin]`` for a page on another origin.
    extra_args: Sequence[str] = ()

    def __init__(
        self,
        workdir: Path,
        model: Path,
        channel_options: Dict[str, Any],
        endpoints: Optional[Dict[str, Any]] = None,
        name: str = "rasa",
        channel: str = "connectors.servicenow.ServiceNowInput",
    ) -> None:
        self.workdir = workdir
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.credentials = workdir / f"{name}-credentials.yml"
        self.credentials.write_text(yaml.safe_dump({channel: channel_options}))
        self.endpoints: Optional[Path] = None
        if endpoints:
            self.endpoints = workdir / f"{name}-endpoints.yml"
            self.endpoints.write_text(yaml.safe_dump(endpoints))
        self.log_path = workdir / f"{name}.log"
        self.process: Optional[subprocess.Popen] = None
        #: More environment for ``rasa run`` (e.g. ``LOG_LEVEL_LIBRARIES`` for Sanic's access log).
        self.extra_env: Dict[str, str] = {}

    def start(self, timeout: float = 120.0) -> "RasaServer":
        command = [
            RASA, "run", "--model", str(self.model), "--enable-api", "--credentials", str(self.credentials),
            "--interface", "127.0.0.1", "--port", str(self.port),
        ]
        if self.endpoints:
            command += ["--endpoints", str(self.endpoints)]
        command += list(self.extra_args)
        log = open(self.log_path, "a")
        self.process = children.register(subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV, **self.extra_env}))
        log.close()

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"rasa run exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return requests.get(f"{self.url}/status", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                # Loading the model can hold the loop for over a second on a busy machine.
                return False

        try:
            wait_for(ready, timeout, interval=0.2, what="rasa run to serve")
        except BaseException:
            # The fixture never yields, so nothing else would stop it.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """``kill -9``: a crash, no shutdown hooks."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- talking to it -----------------------------------------------------

    def say(self, sender: str, message: str) -> List[Dict[str, Any]]:
        response = requests.post(
            f"{self.url}/webhooks/servicenow/webhook", json={"sender": sender, "message": message}, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()

    def post_raw(self, data: bytes, content_type: str = "application/json") -> requests.Response:
        return requests.post(
            f"{self.url}/webhooks/servicenow/webhook", data=data, headers={"Content-Type": content_type}, timeout=30
        )

    def tracker(self, sender: str) -> Dict[str, Any]:
        response = requests.get(f"{self.url}/conversations/{sender}/tracker", timeout=30)
        response.raise_for_status()
        return response.json()

    def slots(self, sender: str) -> Dict[str, Any]:
        return self.tracker(sender)["slots"]


def new_sender() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


class FileServer:
    """Where the user's files live (a frontend's upload storage), with HEAD for the size."""

    def __init__(self, files: Dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: List[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                server.requests.append(f"{self.command} {self.path}")
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
