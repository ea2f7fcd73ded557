"""Slow request bodies against a real ``rasa run`` (issue 22): a client that
sends its body a byte at a time is cut at ``body_read_timeout`` with 408 and
its connection closed, and beyond ``max_body_reads`` bodies at once a new
one is refused with 503 and ``Retry-After``."""

import socket
import threading
import time
from typing import Iterator, Optional, Tuple

import pytest
import requests

from tests.e2e.conftest import channel_options
from tests.e2e.harness import RasaServer, new_sender, wait_for

DEADLINE_S = 2.0
BODY_READS = 3


@pytest.fixture(scope="module")
def slow_guarded(e2e_dir, demo_model, emulator, callback) -> Iterator[RasaServer]:
    options = channel_options(emulator, callback, "virtual_agent", body_read_timeout=DEADLINE_S, max_body_reads=BODY_READS)
    server = RasaServer(e2e_dir, demo_model, options, name="rasa-slow-bodies")
    server.start()
    yield server
    server.stop()


class Dripper:
    """A client that sends a request's headers, then its body one byte every
    ``every`` seconds until the server answers; it reads all along, as a
    real client would."""

    def __init__(self, server: RasaServer, path: str, every: float = 0.5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S + 10)
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n{{".encode()
        )
        self.started = time.monotonic()
        self.received = b""
        self.closed_after: Optional[float] = None
        self._answered = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._drip, args=(every,), daemon=True).start()

    def _drip(self, every: float) -> None:
        while not self._answered.wait(every):  # wait-ok: pacing the slow client's bytes, not waiting for a result
            try:
                self.sock.sendall(b" ")
            except OSError:
                return

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(65536)
                self._answered.set()
                if not chunk:
                    break
                self.received += chunk
        except OSError:
            pass  # reset: closed all the same
        self.closed_after = time.monotonic() - self.started
        self._answered.set()

    def answer_and_close(self) -> Tuple[Optional[int], Optional[float]]:
        """The status line's code (None if the server answered nothing) and
        the seconds until the server closed the connection (None: still open)."""
        self._reader.join(timeout=DEADLINE_S + 10)
        self.sock.close()
        status = int(self.received.split(b" ", 2)[1]) if self.received.startswith(b"HTTP/1.1 ") else None
        return status, self.closed_after


@pytest.mark.parametrize("path", ["/webhooks/servicenow/webhook", "/webhooks/servicenow/callback"])
def test_a_body_that_drips_is_cut_at_the_deadline_and_its_connection_closed(slow_guarded, path):
    status, closed_after = Dripper(slow_guarded, path).answer_and_close()
    # /callback without credentials: 401 once its body is dropped, or 408 while it drips; closed either way.
    assert status == (408 if path.endswith("webhook") else 401)
    assert closed_after is not None and closed_after < DEADLINE_S + 3, closed_after
    # The server answers everyone else meanwhile and afterwards.
    assert requests.get(f"{slow_guarded.url}/webhooks/servicenow/", timeout=10).status_code == 200


def test_beyond_max_body_reads_a_new_body_is_refused_with_503_and_retry_after(slow_guarded):
    drippers = [Dripper(slow_guarded, "/webhooks/servicenow/webhook") for _ in range(BODY_READS)]
    try:
        def refused() -> Optional[Tuple[requests.Response]]:
            answer = requests.post(f"{slow_guarded.url}/webhooks/servicenow/typing",
                                   json={"sender": new_sender(), "typing": True}, timeout=10)
            return (answer,) if answer.status_code == 503 else None  # a 503 Response is falsy

        (busy,) = wait_for(refused, timeout=DEADLINE_S, what="a body refused while the slow ones are read")
        assert busy.json()["reason"] == "ServerBusy" and busy.headers["Retry-After"].isdigit()
    finally:
        outcomes = [dripper.answer_and_close() for dripper in drippers]
    assert [status for status, _ in outcomes] == [408] * BODY_READS
    # Room again once the slow ones are cut.
    answer = requests.post(f"{slow_guarded.url}/webhooks/servicenow/typing",
                           json={"sender": new_sender(), "typing": True}, timeout=10)
    assert answer.status_code == 202
